"""Two processes under torchrun (gloo, CPU) compute the same losses as one process on the same global batch.

The image tower here is LayerNorm-based (convnext_atto): BatchNorm statistics are per process on
a CPU (SyncBatchNorm needs a GPU), so a BatchNorm tower would differ by design, not by a bug.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vislang.train.logger import read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
OVERRIDES = ["model.image.name=convnext_atto", "model.image.image_size=32", "train.batch_size=16", "train.epochs=2",
             "train.warmup_steps=2", "train.log_every=1", "train.lr=1e-3", "train.caption_batch=8", "train.matching_batch=8",
             "train.link_weight=0.5"]
STEPS = 3


def _run(launcher: list[str], catalog: Path, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VISLANG_CACHE": str(out.parent / "cache")}
    command = [*launcher, "-m", "vislang", "train", "--config", str(CONFIG), "--data", str(catalog), "--output", str(out), *OVERRIDES]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r][:STEPS]


@pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups on Linux/macOS")
def test_two_processes_match_one(tiny_catalog, tmp_path):
    single = _run([sys.executable], tiny_catalog, tmp_path / "one")
    double = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
                  tiny_catalog, tmp_path / "two")
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
    assert not list((tmp_path / "two").glob("metrics*.jsonl"))[1:], "only rank 0 writes metrics"
