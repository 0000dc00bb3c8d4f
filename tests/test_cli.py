"""The command line as a user meets it: exit codes and one-line errors, no tracebacks."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vislang.config import ConfigError, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("VISLANG_DATA", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "vislang", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=300)


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("vislang ")


def test_missing_data_path_is_one_clear_line_and_exit_2(tmp_path):
    result = run_cli("train", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not find the IKEA catalog" in lines[0]
    assert "VISLANG_DATA" in lines[0] and "IvonaTau/ikea" in lines[0]
    assert not (tmp_path / "run").exists()


def test_missing_default_data_without_env(tmp_path):
    # Run from a folder with no ../shared/data/ikea beside it and no VISLANG_DATA.
    result = run_cli("eval", "--checkpoint", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr


def test_env_variable_is_used(tmp_path):
    result = run_cli("train", "--config", "tiny", "--output", str(tmp_path / "run"), env_extra={"VISLANG_DATA": str(tmp_path / "x")})
    assert result.returncode == 2 and str(tmp_path / "x") in result.stderr and "(VISLANG_DATA)" in result.stderr


def test_bad_config_and_override(tmp_path):
    assert run_cli("train", "--config", "no-such-config").returncode == 2
    result = run_cli("train", "--config", "tiny", "train.nope=1", "--data", str(tmp_path))
    assert result.returncode == 2 and "unknown config key: train.nope" in result.stderr


def test_train_eval_cli_round_trip(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out),
                     "model.image.image_size=32", "train.batch_size=12")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("eval", "--checkpoint", str(out), "--data", str(tiny_catalog), "--split", "val", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["split"] == "val" and 0.0 <= metrics["product_text2image_r10"] <= 1.0
    again = run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr


def test_override_parsing():
    assert parse_override("train.lr=3e-4") == {"train": {"lr": 3e-4}}
    assert parse_override("data.path=none") == {"data": {"path": None}}
    assert load_config(None, ["model.image.name=resnet18"])["model"]["image"]["name"] == "resnet18"
    with pytest.raises(ConfigError):
        load_config(None, ["lr"])


def test_damaged_checkpoint_and_manifest_are_one_line_errors(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out),
                   "model.matching.enabled=false", "model.decoder.enabled=false").returncode == 0
    weights = next((out / "checkpoints").glob("step-*")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated copy
    result = run_cli("eval", "--checkpoint", str(weights.parent), "--data", str(tiny_catalog))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.safetensors is damaged" in result.stderr.strip().splitlines()[-1]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"image": "a.png", "captions": ["x"]}\n{not json\n')
    result = run_cli("train", "--config", "tiny", "--data", str(broken), "--output", str(tmp_path / "r2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a valid manifest" in result.stderr.strip().splitlines()[-1]
