"""Model building: towers from each library, offline random init, clear errors for pretrained weights offline."""
import pytest
import torch

from vislang.config import DEFAULTS, ConfigError, load_config
from vislang.models import create_model
from vislang.models.registry import PretrainedUnavailableError


def _model_cfg(*overrides):
    return load_config(None, ["model.embed_dim=16", "model.image.image_size=32", *overrides])["model"]


@pytest.mark.parametrize(
    "image, text",
    [
        (["model.image.name=resnet10t"], ["model.text.pretrained=true"]),
        (["model.image.kind=open_clip", "model.image.name=ViT-S-32"], ["model.text.kind=open_clip", "model.text.name=ViT-S-32", "model.text.pretrained=false", "model.text.freeze=false"]),
    ],
)
def test_towers_return_tokens_and_unit_embeddings(image, text):
    model, tokenizer = create_model(_model_cfg(*image, *text))
    pixels = torch.randn(2, 3, 32, 32)
    tokens, pooled = model.image_tower(pixels)
    assert tokens.ndim == 3 and tokens.shape[0] == 2 and pooled.shape == (2, model.image_tower.width)
    ids, mask = tokenizer(["a red chair", "an oak table with four legs"])
    text_tokens, text_pooled = model.text_tower(ids, mask)
    assert text_tokens.shape[:2] == ids.shape and text_pooled.shape == (2, model.text_tower.width)
    for emb in (model.encode_image(pixels), model.encode_text(ids, mask)):
        assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_open_clip_text_kwargs_reach_the_tower_and_unknown_ones_are_refused():
    text = ["model.text.kind=open_clip", "model.text.name=ViT-S-32", "model.text.pretrained=false", "model.text.freeze=false"]
    model, _ = create_model(_model_cfg(*text, "model.text.kwargs.layers=2"))
    assert len(model.text_tower.body.transformer.resblocks) == 2  # ViT-S-32 has 12
    with pytest.raises(ConfigError, match="text_cfg"):
        create_model(_model_cfg(*text, "model.text.kwargs.no_such_field=1"))


def test_frozen_text_tower_has_no_trainable_weights():
    model, _ = create_model(_model_cfg())
    assert not any(p.requires_grad for p in model.text_tower.parameters())
    model.train()
    assert not model.text_tower.training  # dropout stays off, so cached text features are exact


def test_lexical_channel_starts_neutral_and_learns_only_the_tokens_it_reads():
    torch.manual_seed(0)
    plain, tokenizer = create_model(_model_cfg())
    lexical, _ = create_model(_model_cfg("model.lexical=true"))
    lexical.load_state_dict(plain.state_dict(), strict=False)
    ids, mask = tokenizer(["HEMNES bed, white", "MALM bed, white"])
    assert torch.equal(lexical.encode_text(ids, mask), plain.encode_text(ids, mask))  # zero at the start

    # One step pulling each text towards a different target separates the two names.
    targets = torch.nn.functional.normalize(torch.randn(2, 16), dim=-1)
    optimizer = torch.optim.SGD([lexical.lexical.weight], lr=10.0)
    (-(lexical.encode_text(ids, mask) * targets).sum()).backward()
    optimizer.step()
    moved = lexical.lexical.weight.abs().sum(-1).nonzero().flatten()
    assert set(moved.tolist()) == set(ids[mask.bool()].tolist())  # only tokens of the texts
    after = lexical.encode_text(ids, mask)
    assert ((after * targets).sum(-1) > (plain.encode_text(ids, mask) * targets).sum(-1)).all()


def test_colour_histogram_joins_the_image_features():
    model, _ = create_model(_model_cfg("model.image.color_bins=3"))
    assert model.image_proj[0].in_features == model.image_tower.width + 27


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.image.pretrained=true"],  # timm weights from the hub
        ["model.text.name=sentence-transformers/all-mpnet-base-v2"],  # a hub id for the text tower
    ],
)
def test_pretrained_weights_offline_fail_clearly(overrides, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="internet"):
        create_model(_model_cfg(*overrides))


def test_unknown_tower_kind():
    with pytest.raises(ConfigError, match="unknown image tower kind"):
        create_model(_model_cfg("model.image.kind=keras"))


def test_defaults_are_offline():
    assert DEFAULTS["model"]["text"]["name"] == "minilm-l6" and DEFAULTS["model"]["image"]["pretrained"] is False


def test_decoded_captions_keep_hyphenated_words_whole():
    # WordPiece decodes "Black-brown" as "black - brown"; captions must read as the catalog writes them
    _, tokenizer = create_model(_model_cfg("model.text.pretrained=true"))
    ids, mask = tokenizer(["HEMNES Chest of 8 drawers, Black-brown", "IKEA 365+ Jar, 1.2 l"])
    texts = [tokenizer.decode(row[: int(m.sum())].tolist()) for row, m in zip(ids, mask)]
    assert texts == ["hemnes chest of 8 drawers, black-brown", "ikea 365 + jar, 1.2 l"]
