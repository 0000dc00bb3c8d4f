"""The matching head and caption decoder inside a training run, the API and the `caption` command."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vislang
from vislang.checkpoint import find_checkpoint
from vislang.config import ConfigError, load_config
from vislang.train import train
from vislang.train.logger import read_metrics

pytestmark = pytest.mark.slow  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["model.matching.enabled=true", "model.decoder.enabled=true", "model.matching.width=32",
         "model.decoder.max_length=24", "model.image.image_size=32",
         "train.batch_size=12", "train.warmup_steps=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def heads_run(tiny_catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads")
    train(load_config(ROOT / "configs" / "tiny.yaml", HEADS + ["train.epochs=15", "train.lr=3e-3"]), data=str(tiny_catalog), output=out)
    return out


def test_three_objectives_are_logged_and_fall(heads_run):
    records = [r for r in read_metrics(heads_run / "metrics.jsonl") if "loss" in r]
    for key in ("loss_contrastive", "loss_matching", "loss_caption"):
        values = [r[key] for r in records]
        assert len(values) == len(records) and np.mean(values[-5:]) < np.mean(values[:5]), key


def test_eval_reports_the_heads_figures_with_paired_intervals(heads_run, tiny_catalog):
    from vislang.data import read_catalog
    from vislang.eval.report import evaluate_model_with_intervals

    model = vislang.load(heads_run, device="cpu")
    metrics, intervals = evaluate_model_with_intervals(model, read_catalog(tiny_catalog), "test")
    for score in ("bleu4", "cider"):
        gain = metrics[f"caption_{score}_gain"]
        assert gain == pytest.approx(metrics[f"caption_{score}"] - metrics[f"retrieval_caption_{score}"])
    rerank = metrics["product_text2image_r1_rerank20"] - metrics["product_text2image_r1_contrastive"]
    assert metrics["product_text2image_r1_rerank20_gain"] == pytest.approx(rerank)
    for name in ("caption_bleu4", "caption_cider", "caption_bleu4_gain", "retrieval_caption_cider", "caption_names_type",
                 "product_text2image_r1_rerank20", "product_text2image_r1_rerank20_gain"):
        low, high = intervals[name]
        assert low <= metrics[name] + 1e-9 and metrics[name] <= high + 1e-9, name


def test_caption_and_match_on_mixed_modes(heads_run, tmp_path):
    grey = Image.new("L", (40, 30), 90)
    rgba = Image.new("RGBA", (30, 40), (200, 10, 10, 128))
    rgba_path = tmp_path / "rgba.png"
    rgba.save(rgba_path)
    model = vislang.load(heads_run, device="cpu")
    captions = model.caption([grey, rgba_path], max_length=8, num_beams=2)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert captions == model.caption([grey, rgba_path], max_length=8, num_beams=2)  # deterministic
    # the matching head picks among each image's beam hypotheses; without it, the decoder's best
    hypotheses = model._hypotheses([grey, rgba_path], 8, 3, 3, 32)
    picked = model.caption([grey, rgba_path], max_length=8, num_beams=3)
    scores = model.match([grey] * 3 + [rgba_path] * 3, [h or " " for h in hypotheses]).reshape(2, 3)
    assert picked == [hypotheses[3 * i + int(np.argmax(scores[i]))] for i in range(2)]
    assert model.caption([grey, rgba_path], max_length=8, num_beams=3, rerank=False) == hypotheses[::3]
    probabilities = model.match([grey, rgba_path], ["a grey chair", "a red lamp"])
    assert probabilities.shape == (2,) and probabilities[0] != pytest.approx(probabilities[1])  # pairs are told apart
    assert model.match([rgba_path], ["a red lamp"]) == pytest.approx(probabilities[1:], abs=1e-6)  # batching aside
    with pytest.raises(ValueError, match="as many images as texts"):
        model.match([grey], ["a", "b"])


def test_heads_on_detached_tokens_leave_the_contrastive_model_unchanged(tiny_catalog, tmp_path):
    # Gradient clipping over one global norm let the heads' gradients shrink the towers' steps.
    def towers(heads: bool) -> dict:
        overrides = [o for o in HEADS if "enabled" not in o] + [f"model.matching.enabled={heads}",
                                                               f"model.decoder.enabled={heads}",
                                                               "train.heads_train_towers=false", "train.epochs=3",
                                                               "train.grad_clip=0.01", "train.eval_every_epochs=0"]
        out = train(load_config(ROOT / "configs" / "tiny.yaml", overrides), data=str(tiny_catalog), output=tmp_path / str(heads))
        weights = load_file(str(out / "model.safetensors"))
        return {k: v for k, v in weights.items() if k.startswith(("image_tower", "image_proj", "text_proj", "logit_scale"))}

    without, with_heads = towers(False), towers(True)
    assert without.keys() == with_heads.keys()
    for name, tensor in without.items():
        assert torch.equal(tensor, with_heads[name]), name


def test_heads_phase_trains_the_heads_after_the_towers_and_leaves_the_towers_alone(tiny_catalog, tmp_path):
    common = [o for o in HEADS if "enabled" not in o] + ["train.epochs=3", "train.eval_every_epochs=0", "train.lr=3e-3"]

    def run(name: str, *overrides: str) -> dict:
        out = train(load_config(ROOT / "configs" / "tiny.yaml", common + list(overrides)), data=str(tiny_catalog),
                    output=tmp_path / name)
        return load_file(str(out / "model.safetensors"))

    without = run("off", "model.matching.enabled=false", "model.decoder.enabled=false")
    phased = run("phase", "model.matching.enabled=true", "model.decoder.enabled=true", "train.heads_phase.steps=40",
                 "train.heads_phase.views=2", "train.heads_phase.warmup_steps=2")
    for name, tensor in without.items():
        assert torch.equal(tensor, phased[name]), name
    records = read_metrics(tmp_path / "phase" / "metrics.jsonl")
    assert not any("loss_matching" in r or "loss_caption" in r for r in records if "loss" in r)  # not in the main loop
    phase = [r for r in records if r.get("event") == "heads_phase"]
    assert len(phase) == 40
    for key in ("loss_matching", "loss_caption"):
        values = [r[key] for r in phase]
        assert np.mean(values[-5:]) < np.mean(values[:5]), key
    too_long = common + ["model.matching.enabled=true", "train.max_minutes=2", "train.heads_phase.steps=5",
                         "train.heads_phase.minutes=2"]
    with pytest.raises(ConfigError, match="heads_phase.minutes"):
        train(load_config(ROOT / "configs" / "tiny.yaml", too_long), data=str(tiny_catalog), output=tmp_path / "long")


def test_a_run_stopped_in_the_heads_phase_resumes_with_the_phase_alone(tiny_catalog, tmp_path, monkeypatch):
    overrides = HEADS + ["train.epochs=1", "train.eval_every_epochs=0", "train.heads_phase.steps=5",
                         "train.heads_phase.views=1", "train.checkpoint_every=1000"]
    config, out = load_config(ROOT / "configs" / "tiny.yaml", overrides), tmp_path / "run"

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("vislang.train.loop.train_heads", stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, data=str(tiny_catalog), output=out)
    saved = find_checkpoint(out)  # the towers' last step, though no periodic checkpoint fell due
    towers = load_file(str(saved / "model.safetensors"))
    assert not any(r.get("event") == "heads_phase" for r in read_metrics(out / "metrics.jsonl"))

    monkeypatch.undo()
    final = train(config, data=str(tiny_catalog), output=out, resume=True)
    assert final.name == saved.name  # no tower step was taken again
    assert len([r for r in read_metrics(out / "metrics.jsonl") if r.get("event") == "heads_phase"]) == 5
    after = load_file(str(final / "model.safetensors"))
    image_side = [name for name in towers if name.startswith(("image_tower.", "image_proj"))]
    assert image_side
    for name in image_side:
        assert torch.equal(after[name], towers[name]), name


def test_model_without_heads_says_how_to_get_them(tiny_catalog, tmp_path):
    no_heads = ["model.matching.enabled=false", "model.decoder.enabled=false"]
    train(load_config(ROOT / "configs" / "tiny.yaml", ["model.image.image_size=32", "train.batch_size=12", *no_heads]),
          data=str(tiny_catalog), output=tmp_path / "run")
    model = vislang.load(tmp_path / "run", device="cpu")
    with pytest.raises(vislang.api.MissingHeadError, match="model.decoder.enabled=true"):
        model.caption([Image.new("RGB", (8, 8))])


def _cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "vislang", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_caption_cli(heads_run, tiny_catalog, tmp_path):
    image = sorted((tiny_catalog / "images" / "products").glob("*.jpg"))[0]
    ok = _cli("caption", "--checkpoint", str(heads_run), str(image), "--json", "--beams", "1")
    assert ok.returncode == 0, ok.stderr[-2000:]
    rows = json.loads(ok.stdout.strip().splitlines()[-1])
    assert rows[0]["image"] == str(image) and isinstance(rows[0]["caption"], str)

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 broken")
    # unreadable images beside a good one are skipped with one counted warning; the good one is captioned
    result = _cli("caption", "--checkpoint", str(heads_run), str(image), str(tmp_path / "missing.jpg"), str(corrupt))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line.split("\t")[0] for line in result.stdout.strip().splitlines()] == [str(image)]
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "skipped 2 unreadable images (1 image not found, 1 not a readable image)" in warning[0]
    assert "missing.jpg" in warning[0]
    # none readable: one line, exit 2
    result = _cli("caption", "--checkpoint", str(heads_run), str(corrupt))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("vislang caption: error: nothing to caption: none of the 1")
    assert "corrupt.jpg" in result.stderr.strip().splitlines()[-1]
