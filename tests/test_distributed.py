"""Two processes under torchrun (gloo, CPU) compute the same losses as one process on the same global batch.

The image tower here is LayerNorm-based (convnext_atto): BatchNorm statistics are per process on
a CPU (SyncBatchNorm needs a GPU), so a BatchNorm tower would differ by design, not by a bug.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vislang.train.logger import read_metrics

pytestmark = pytest.mark.slow  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
OVERRIDES = ["model.image.name=convnext_atto", "model.image.image_size=32", "train.batch_size=16", "train.epochs=2",
             "train.warmup_steps=2", "train.log_every=1", "train.lr=1e-3", "train.caption_batch=8", "train.matching_batch=8",
             "train.link_weight=0.5"]
STEPS = 3
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _run(launcher: list[str], catalog: Path, out: Path, *extra: str, steps: int = STEPS) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VISLANG_CACHE": str(out.parent / "cache")}
    flags, overrides = [e for e in extra if e.startswith("--")], [e for e in extra if not e.startswith("--")]
    command = [*launcher, "-m", "vislang", "train", "--config", str(CONFIG), "--data", str(catalog), "--output", str(out),
               *flags, *OVERRIDES, *overrides]  # later overrides win
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r][:steps]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups on Linux/macOS")
@pytest.mark.parametrize("two_extra", [[], ["train.accum_steps=2"]], ids=["whole", "accumulated"])
def test_two_processes_match_one(tiny_catalog, tmp_path, two_extra):
    """Also with each process's rows run as 2 micro-batches: the same losses and gradient."""
    heads = "train.heads_train_towers=false" if two_extra else "train.heads_train_towers=true"
    single = _run([sys.executable], tiny_catalog, tmp_path / "one", heads)
    double = _run(TORCHRUN, tiny_catalog, tmp_path / "two", heads, *two_extra)
    assert len(single) == len(double) == STEPS
    for one, two in zip(single, double):
        # same global batch, same negatives, gradients averaged to the single-process ones (grad_norm
        # is measured after the average, so a wrong gradient scale shows there)
        for key in ("loss_contrastive", "loss_links", "grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (one["step"], key)
        # the heads average per-process means; with equal shares that is the single-process mean
        for key in ("loss_matching", "loss_caption"):
            assert two[key] == pytest.approx(one[key], rel=1e-3), (one["step"], key)
    assert (tmp_path / "two" / "checkpoints" / "latest").exists()
    steps = [r["step"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps)), "only rank 0 logs"


def test_two_processes_resume_a_run_as_one_process_does(tiny_catalog, tmp_path):
    """A 1-epoch run, resumed into 2 epochs by one process and by two: the same steps 3 and 4."""
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable], tiny_catalog, one, "train.epochs=1")
    shutil.copytree(one, two)
    by_one = _run([sys.executable], tiny_catalog, one, "--resume", steps=4)
    by_two = _run(TORCHRUN, tiny_catalog, two, "--resume", steps=4)
    assert [r["step"] for r in by_two] == [1, 2, 3, 4]
    for a, b in zip(by_one[2:], by_two[2:]):
        for key in ("loss_contrastive", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), (a["step"], key)
