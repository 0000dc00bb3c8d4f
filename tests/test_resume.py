"""Resume that reproduces: a training process killed with SIGKILL after its first checkpoint,
then `--resume`d, ends with the same weights, bit for bit, and the same logged losses as a run
that was never interrupted (CPU, fixed seed, one thread)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vislang.checkpoint import find_checkpoint
from vislang.train.logger import RunLogger, read_metrics
from vislang.train.state import RunState

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"
# The text tower trains (its dropout draws from torch's global generator every step) and so do
# both heads: a resume that restored the data order but not every RNG would not reproduce.
RUN = ["model.image.image_size=32", "train.batch_size=12", "train.warmup_steps=2", "train.log_every=1",
       "train.epochs=8", "train.checkpoint_every=3", "train.threads=1", "model.text.freeze=false"]
# what each step logs that does not depend on the clock
DETERMINISTIC = ("loss", "loss_contrastive", "loss_matching", "loss_caption", "lr", "grad_norm", "temperature", "epoch")


def _train_command(catalog: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vislang", "train", "--config", str(CONFIG), "--data", str(catalog),
            "--output", str(output), *extra, *RUN]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _steps(run: Path) -> dict[int, dict]:
    return {r["step"]: {k: r[k] for k in DETERMINISTIC if k in r} for r in read_metrics(run / "metrics.jsonl")
            if "loss" in r}


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_to_the_same_weights_and_losses(tiny_catalog, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(_train_command(tiny_catalog, whole))

    process = subprocess.Popen(_train_command(tiny_catalog, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "latest").exists():  # the first checkpoint is step 3
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    saved = find_checkpoint(killed)
    resumed_at = int(saved.name.split("-")[1])
    total = max(_steps(whole))
    logged_before = max(_steps(killed), default=0)
    assert 3 <= resumed_at < total and logged_before < total
    assert logged_before - resumed_at < 3  # lost: less than one checkpoint interval

    _run(_train_command(tiny_catalog, killed, "--resume"))

    a, b = load_file(find_checkpoint(whole) / "model.safetensors"), load_file(find_checkpoint(killed) / "model.safetensors")
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    steps_whole, steps_killed = _steps(whole), _steps(killed)
    assert sorted(steps_killed) == list(range(1, total + 1))  # each step logged once: the killed run's tail was cut
    assert steps_killed == steps_whole  # the same losses, learning rates and gradient norms, exactly
    evals = [r for r in read_metrics(killed / "metrics.jsonl") if r.get("event") == "eval"]
    final_whole = [r for r in read_metrics(whole / "metrics.jsonl") if r.get("event") == "eval"][-1]
    assert evals[-1] == final_whole  # the same validation figures


def _conv_and_optimizer():
    """A channels_last convolution under fused AdamW, as the image tower trains (train.channels_last)."""
    model = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    return model, torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.98), fused=True)


def _step(model, optimizer, x):
    model(x).square().sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_the_run_state_restores_the_optimizer_and_every_random_generator(tmp_path):
    from vislang.checkpoint import TRAINER_META, TRAINER_TENSORS
    from safetensors.torch import save_file

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6).to(memory_format=torch.channels_last)
    model, optimizer = _conv_and_optimizer()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(3):
        _step(model, optimizer, x)
    state = RunState(step=7, nonfinite_skipped=2, nonfinite_streak=1, last_saved=6)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    tensors, meta = state.checkpoint_state(optimizer, elapsed=12.5)
    save_file(tensors, str(tmp_path / TRAINER_TENSORS))
    (tmp_path / TRAINER_META).write_text(json.dumps(meta))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, optimizer, x)  # the uninterrupted run's next step

    random.seed(9), np.random.seed(9), torch.manual_seed(9)  # what a restarted process holds
    fresh_model, fresh = _conv_and_optimizer()
    fresh_model.load_state_dict(saved_weights)
    restored = RunState.restore(tmp_path, fresh)
    assert restored == RunState(step=7, elapsed=12.5, nonfinite_skipped=2, nonfinite_streak=1, last_saved=6)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert fresh.param_groups[0]["betas"] == (0.9, 0.98)
    _step(fresh_model, fresh, x)  # the resumed run's next step: the same update, to the bit
    assert not torch.equal(model.weight, start["weight"])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters()))


def test_a_resumed_logger_cuts_the_log_back_to_its_checkpoint_and_drops_a_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4, 5)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 6, "lo')  # killed mid-line
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    logger = RunLogger(tmp_path, tensorboard=False, resumed_at=3)
    logger.log(4, loss=0.5)
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 0.5), (3, 1 / 3),
                                                                                          (4, 0.5)]


@pytest.mark.slow
def test_ctrl_c_in_the_main_loop_saves_a_checkpoint_and_exits_130(tiny_catalog, tmp_path, monkeypatch, capsys):
    from vislang.cli.main import main
    from vislang.train import loop

    real, calls = loop.forward_backward, []

    def interrupted_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "forward_backward", interrupted_at_step_5)
    out = tmp_path / "run"
    argv = ["train", "--config", str(CONFIG), "--data", str(tiny_catalog), "--output", str(out), *RUN[:4],
            "train.epochs=3", "train.checkpoint_every=100", "model.matching.enabled=false", "model.decoder.enabled=false"]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert f"interrupted at step 4; saved {out / 'checkpoints' / 'step-0000004'} (continue with --resume)" in captured.out
    assert captured.err.strip().splitlines()[-1] == "vislang train: interrupted"
    monkeypatch.undo()
    assert main(argv[:1] + ["--resume"] + argv[1:]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == list(range(1, 10))
