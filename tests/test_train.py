"""End-to-end: a tiny run on a generated catalog, its checkpoint, --resume, and the Python API."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vislang
from vislang.checkpoint import CheckpointError, find_checkpoint, save_checkpoint
from vislang.config import load_config
from vislang.train import train
from vislang.train.logger import read_metrics

pytestmark = pytest.mark.slow  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
TINY_OVERRIDES = ["model.image.image_size=32", "train.batch_size=12", "train.warmup_steps=2", "train.log_every=1"]


def _config(*overrides):
    return load_config(CONFIG, TINY_OVERRIDES + list(overrides))


@pytest.fixture(scope="module")
def trained_run(tiny_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    final = train(_config("train.epochs=25", "train.checkpoint_every=20", "train.lr=3e-3"), data=str(tiny_catalog), output=out)
    return out, final


def test_loss_falls(trained_run):
    out, _ = trained_run
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) >= 40
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < 0.8 * first, (first, last)


def test_run_writes_its_artifacts(trained_run):
    out, final = trained_run
    assert (out / "curves.png").stat().st_size > 0
    assert any((out / "tensorboard").iterdir())
    assert final == find_checkpoint(out)
    for name in ("model.safetensors", "config.yaml", "trainer_state.safetensors", "trainer_state.json", "text/config.json",
                 "text/tokenizer_config.json"):
        assert (final / name).is_file(), name
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "eval"]
    assert evals and "product_text2image_r10" in evals[-1]
    assert not list((out / "checkpoints").glob(".*tmp*"))  # no temporaries of the saves left


def test_checkpoint_round_trip_is_bit_exact(trained_run, tiny_catalog, tmp_path):
    out, final = trained_run
    images = sorted((tiny_catalog / "images" / "products").glob("*.jpg"))[:5]
    texts = ["a red chair", "Lamp, Blue", "ITEM3 Table, Green"]
    first = vislang.load(out, device="cpu")
    assert first.checkpoint == final
    # Save the in-memory model again, reload it, and compare with what it embedded before saving.
    copy = save_checkpoint(tmp_path, 1, first.model, first.tokenizer, first.config)
    second = vislang.load(copy, device="cpu")
    a_img, b_img = first.encode_images(images), second.encode_images(images)
    a_txt, b_txt = first.encode_texts(texts), second.encode_texts(texts)
    assert a_img.dtype == np.float32 and a_img.shape == (5, 32)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_txt, b_txt)
    assert np.allclose(np.linalg.norm(a_img, axis=1), 1.0, atol=1e-5)
    pil = [Image.open(p) for p in images]
    assert np.array_equal(first.encode_images(pil), a_img)
    # Batch size changes padding and BLAS shapes, so across batchings only closeness holds.
    assert np.allclose(first.encode_texts(texts, batch_size=2), a_txt, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size must be a whole number >= 1, got 0"):
        first.encode_images(images, batch_size=0)


def test_a_checkpoint_holds_no_ranking_terms_and_an_older_one_with_them_still_loads(trained_run, tmp_path):
    import shutil

    import yaml
    from safetensors.torch import load_file, save_file

    out, final = trained_run
    weights = load_file(final / "model.safetensors")
    assert not [name for name in weights if name.startswith(("query_bank.", "neighbours.", "decoder.pointer."))]
    saved = yaml.safe_load((final / "config.yaml").read_text())["model"]
    assert not {"hubness", "room_vote", "lookalike_texts", "room_category"} & set(saved)
    # what earlier versions wrote: the removed settings, and the removed parts' weights
    old = tmp_path / "old"
    shutil.copytree(final, old)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["model"].update(hubness={"weight": 0.25, "k": 3, "bank_size": 4}, room_vote={"weight": 1.0, "temperature": 0.1},
                           lookalike_texts={"weight": 2.0, "temperature": 0.05},
                           room_category={"weight": 1.0, "photo_temperature": 0.05, "text_temperature": 0.05})
    config["model"]["decoder"].update(neighbours=2, store_size=4, copy=True)
    config["model"]["matching"]["neighbour_overlap"] = True
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    save_file({**weights, "query_bank.texts": torch.zeros(4, 32), "neighbours.ids": torch.zeros(4, 8, dtype=torch.long),
               "matching.overlap_weights": torch.zeros(2), "decoder.pointer.continue_bonus": torch.tensor(2.0)},
              old / "model.safetensors")
    texts = ["a red chair", "Lamp, Blue"]
    np.testing.assert_array_equal(vislang.load(old, device="cpu").encode_texts(texts),
                                  vislang.load(final, device="cpu").encode_texts(texts))
    # any other stray weight is still a checkpoint that does not fit
    save_file({**weights, "something.else": torch.zeros(1)}, old / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not fit"):
        vislang.load(old, device="cpu")


def test_trained_model_beats_chance_on_its_own_catalog(trained_run, tiny_catalog):
    out, _ = trained_run
    model = vislang.load(out, device="cpu")
    from vislang.data import read_catalog
    from vislang.eval import evaluate

    metrics = evaluate(model, read_catalog(tiny_catalog), "train")
    assert metrics["product_text2image_r5"] > 0.4  # chance is about 0.14 on 36 products


def _poison(monkeypatch, gradients: set[int], losses: set[int] = frozenset()) -> dict[int, dict[str, torch.Tensor]]:
    """Make the gradients, or the loss, of the given steps (1-based) NaN; returns the weights each
    step started from, by step, to check that a skipped step left them as they were."""
    from vislang.train import guard, loop

    real_forward, real_step, weights = loop.forward_backward, guard.optimizer_step, {}

    def forward(model, *args, **kwargs):
        weights[len(weights) + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result = real_forward(model, *args, **kwargs)
        if len(weights) in losses:
            result["loss_contrastive"] = torch.tensor(float("nan"))
        return result

    def step(model, optimizer, grad_clip, ranks):
        if len(weights) in gradients:
            for param in model.parameters():
                if param.grad is not None:
                    param.grad.fill_(float("nan"))
        return real_step(model, optimizer, grad_clip, ranks)

    monkeypatch.setattr(loop, "forward_backward", forward)
    monkeypatch.setattr(guard, "optimizer_step", step)
    return weights


NO_HEADS = ["model.matching.enabled=false", "model.decoder.enabled=false"]


def test_a_non_finite_step_is_skipped_counted_and_the_run_goes_on(tiny_catalog, tmp_path, monkeypatch, capsys):
    from vislang.cli.main import main

    weights = _poison(monkeypatch, gradients={6}, losses={9})
    out = tmp_path / "run"
    code = main(["train", "--config", str(CONFIG), "--data", str(tiny_catalog), "--output", str(out), *TINY_OVERRIDES,
                 "train.epochs=4", "train.checkpoint_every=4", *NO_HEADS])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert err.count("vislang train: warning: step ") == 2
    assert ("vislang train: warning: step 6 skipped: gradients not finite (towers) (1 skipped so far; 5 in a row stop "
            "the run)\n") in err
    assert "vislang train: warning: step 9 skipped: loss not finite (nan) (2 skipped so far; 5 in a row stop the run)\n" in err
    assert "vislang train: warning: 2 of 12 steps were skipped for a non-finite loss or gradients" in err
    records = read_metrics(out / "metrics.jsonl")
    assert [r for r in records if r.get("event") == "skipped"] == [
        {"step": 6, "event": "skipped", "reason": "gradients not finite (towers)", "nonfinite_skipped": 1},
        {"step": 9, "event": "skipped", "reason": "loss not finite (nan)", "nonfinite_skipped": 2}]
    assert [r["nonfinite_skipped"] for r in records if "loss" in r] == [0] * 5 + [1] * 2 + [2] * 3  # 1-5, 7-8, 10-12
    for skipped in (6, 9):  # a skipped step changed nothing, BatchNorm statistics included
        changed = [k for k in weights[skipped] if not torch.equal(weights[skipped + 1][k], weights[skipped][k])]
        assert not changed, (skipped, changed[:5])
    assert not all(torch.equal(weights[6][k], weights[5][k]) for k in weights[6])  # a step taken does
    model = vislang.load(out, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.model.parameters())


def test_a_run_whose_steps_stay_non_finite_stops_with_one_line_and_keeps_its_last_checkpoint(tiny_catalog, tmp_path,
                                                                                             monkeypatch, capsys):
    from vislang.cli.main import main

    _poison(monkeypatch, gradients=set(range(6, 100)))
    out = tmp_path / "run"
    code = main(["train", "--config", str(CONFIG), "--data", str(tiny_catalog), "--output", str(out), *TINY_OVERRIDES,
                 "train.epochs=3", "train.checkpoint_every=4", "train.max_nonfinite_steps=3", *NO_HEADS])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # progress bars aside
    assert code == 2
    assert len(err) == 1 and err[0].startswith("vislang train: error: training diverged: 3 steps in a row skipped, the "
                                               "last for gradients not finite (towers) at step 8 (lr "), err
    assert f"last checkpoint is step 4 in {out}" in err[0]
    assert find_checkpoint(out).name == "step-0000004"
    model = vislang.load(out, device="cpu")  # the saved weights are the good ones
    assert all(torch.isfinite(p).all() for p in model.model.parameters())


def test_existing_run_is_not_overwritten(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    train(_config("train.epochs=1"), data=str(tiny_catalog), output=out)
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config("train.epochs=1"), data=str(tiny_catalog), output=out)


def test_resume_with_another_model_shape_names_the_changed_setting(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    train(_config("train.epochs=1"), data=str(tiny_catalog), output=out)
    with pytest.raises(CheckpointError, match=r"model config changed: model.embed_dim: 32 -> 16"):
        train(_config("train.epochs=2", "model.embed_dim=16"), data=str(tiny_catalog), output=out, resume=True)


def test_trainable_text_tower_path_runs(tiny_catalog, tmp_path):
    from safetensors.torch import load_file

    from vislang.models import create_model

    out = tmp_path / "run"
    config = _config("train.epochs=1", "model.text.freeze=false", "train.batch_size=6")
    final = train(config, data=str(tiny_catalog), output=out)
    trained = load_file(final / "model.safetensors")
    model_cfg = config["model"]
    towers_only = {**model_cfg, "matching": {**model_cfg["matching"], "enabled": False},
                   "decoder": {**model_cfg["decoder"], "enabled": False}}
    pretrained = {f"text_tower.{k}": v for k, v in create_model(towers_only)[0].text_tower.state_dict().items()}
    moved = [k for k, v in pretrained.items() if k in trained and v.is_floating_point() and not torch.equal(v, trained[k])]
    assert len(moved) > len(pretrained) // 2  # the text tower trained, from its pretrained weights


def test_manifest_training(tmp_path):
    rows = []
    for i, (name, rgb) in enumerate({"red": (255, 0, 0), "blue": (0, 0, 255), "green": (0, 200, 0)}.items()):
        for k in range(4):
            Image.new("RGB", (24, 24), rgb).save(tmp_path / f"{name}{k}.jpg")
            rows.append({"image": f"{name}{k}.jpg", "caption": f"a {name} square", "split": "val" if k == 3 else "train"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final = train(_config("train.epochs=1", "train.batch_size=4"), data=str(tmp_path / "m.jsonl"), output=tmp_path / "run")
    assert (final / "model.safetensors").is_file()


@pytest.mark.parametrize("name", ["ikea-cpu", "ikea-gpu"])
def test_shipped_recipes_build_and_take_steps_on_cpu(name, tiny_catalog, tmp_path):
    config = load_config(CONFIG.parent / f"{name}.yaml", ["train.batch_size=8", "train.epochs=1", "train.device=cpu", "train.log_every=1"])
    final = train(config, data=str(tiny_catalog), output=tmp_path / "run")
    losses = [r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert len(losses) >= 3
    # what the recipe locks (its pretrained image body, the text tower) is as the pretrained weights left it
    from safetensors.torch import load_file

    from vislang.models import create_model

    # the towers as the pretrained weights build them (the heads, new, have nothing to compare with)
    model_cfg = config["model"]
    fresh, _ = create_model({**model_cfg, "matching": {**model_cfg["matching"], "enabled": False},
                             "decoder": {**model_cfg["decoder"], "enabled": False}})
    trained = load_file(final / "model.safetensors")
    locked = {name: p for name, p in fresh.named_parameters() if not p.requires_grad}
    assert locked and all(torch.equal(trained[name], p) for name, p in locked.items())
