"""The command line as a user meets it: exit codes and one-line errors, no tracebacks."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vislang.cli.main import build_parser, main
from vislang.config import ConfigError, load_config, parse_override
from vislang.devices import DeviceError, pick_device
from vislang.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, env_extra=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    env.pop("VISLANG_DATA", None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "vislang", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=300)


@pytest.mark.slow
def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("vislang ")


@pytest.mark.slow
def test_the_command_line_loads_torch_only_for_a_command_and_faiss_only_for_search():
    probe = ("import sys, vislang, vislang.cli.main; before = 'torch' in sys.modules; "
             "import vislang.train, vislang.eval; vislang.load; print(before, 'torch' in sys.modules, 'faiss' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.stdout.split() == ["False", "True", "False"], result.stderr


@pytest.mark.slow
def test_missing_data_path_is_one_clear_line_and_exit_2(tmp_path):
    result = run_cli("train", "--config", "tiny", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "could not find the IKEA catalog" in lines[0]
    assert "VISLANG_DATA" in lines[0] and "IvonaTau/ikea" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_missing_default_data_without_env(tmp_path):
    # Run from a folder with no ../shared/data/ikea beside it and no VISLANG_DATA.
    result = run_cli("eval", "--checkpoint", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no checkpoint" in result.stderr


@pytest.mark.slow
def test_env_variable_is_used(tmp_path):
    result = run_cli("train", "--config", "tiny", "--output", str(tmp_path / "run"), env_extra={"VISLANG_DATA": str(tmp_path / "x")})
    assert result.returncode == 2 and str(tmp_path / "x") in result.stderr and "(VISLANG_DATA)" in result.stderr


@pytest.mark.slow
def test_bad_config_and_override(tmp_path):
    assert run_cli("train", "--config", "no-such-config").returncode == 2
    result = run_cli("train", "--config", "tiny", "train.nope=1", "--data", str(tmp_path))
    assert result.returncode == 2 and "unknown config key: train.nope" in result.stderr


@pytest.mark.parametrize("text", ["0\n", "false\n", "[1, 2]\n"])
def test_a_config_file_that_is_not_a_mapping_is_refused(tmp_path, text):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path)
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(tmp_path / "empty.yaml") == load_config(None)  # an empty file is the defaults


@pytest.mark.slow
def test_train_eval_cli_round_trip(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out),
                     "model.image.image_size=32", "train.batch_size=12")
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli("eval", "--checkpoint", str(out), "--data", str(tiny_catalog), "--split", "val", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    import vislang
    from vislang.data import read_catalog
    from vislang.eval import evaluate

    # the command reports what the API computes for the same checkpoint and split
    expected = evaluate(vislang.load(out, device="cpu"), read_catalog(tiny_catalog), "val")
    assert metrics["split"] == "val" and {k: metrics[k] for k in expected} == pytest.approx(expected)
    again = run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out))
    assert again.returncode == 2 and "--resume" in again.stderr
    # A split the catalog lacks (a manifest's rows default to train) is an error, not an empty report.
    only_train = tmp_path / "train-only.jsonl"
    only_train.write_text(json.dumps({"image": str(tiny_catalog / "images/products/000.000.00.jpg"), "caption": "a chair"}) + "\n")
    result = run_cli("eval", "--checkpoint", str(out), "--data", str(only_train), "--split", "test")
    assert result.returncode == 2 and "has no test items" in result.stderr and "Traceback" not in result.stderr


def test_override_parsing():
    assert parse_override("train.lr=3e-4") == {"train": {"lr": 3e-4}}
    assert parse_override("data.path=none") == {"data": {"path": None}}
    assert load_config(None, ["model.image.name=resnet18"])["model"]["image"]["name"] == "resnet18"
    with pytest.raises(ConfigError):
        load_config(None, ["lr"])


@pytest.mark.slow
def test_damaged_checkpoint_and_manifest_are_one_line_errors(tiny_catalog, tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(out),
                   "model.matching.enabled=false", "model.decoder.enabled=false").returncode == 0
    weights = next((out / "checkpoints").glob("step-*")) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a truncated copy
    result = run_cli("eval", "--checkpoint", str(weights.parent), "--data", str(tiny_catalog))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model.safetensors is damaged" in result.stderr.strip().splitlines()[-1]
    broken = tmp_path / "broken.jsonl"  # a row naming a missing image, a line that is not JSON: nothing usable
    broken.write_text('{"image": "a.png", "captions": ["x"]}\n{not json\n')
    result = run_cli("train", "--config", "tiny", "--data", str(broken), "--output", str(tmp_path / "r2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "holds no usable images (2 rows skipped" in result.stderr.strip().splitlines()[-1]
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 4)  # not a manifest at all
    result = run_cli("train", "--config", "tiny", "--data", str(tmp_path / "binary.jsonl"), "--output", str(tmp_path / "r3"))
    assert result.returncode == 2 and "not a valid manifest" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr must be a number"),
    ("train.batch_size=0", "train.batch_size must be >= 2"),
    ("train.epochs=-1", "train.epochs must be >= 1"),
    ("model.image.image_size=abc", "model.image.image_size must be a whole number"),
    ("model.embed_dim=0", "model.embed_dim must be >= 1"),
    ("model.head=nosuchhead", "model.head must be one of linear, mlp"),
    ("data.caption_prob=7", "data.caption_prob must be between 0 and 1"),
    ("data.augment.scale=[0.9,0.2]", "data.augment.scale must be [low, high]"),
    ("model.lexical=1", "model.lexical must be true or false"),
    ("train.max_minutes=0", "train.max_minutes must be > 0"),
    ("model.matching.width=30", "model.matching.width (30) must be a multiple of model.matching.heads (4)"),
    ("train.lr=inf", "train.lr must be a number"),
    ("train.batch_size=1", "train.batch_size must be >= 2"),
    ("seed=-1", "seed must be from 0 to 2**32 - 1"),
    ("train.lr=[", "override 'train.lr=[': the value is not valid YAML"),
])
def test_config_values_are_checked_for_type_and_range(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


def test_removed_keys_are_dropped_from_saved_configs_and_refused_in_a_file(tmp_path):
    from vislang.config import resolve

    old = load_config(None)
    old["model"].update(hubness={"weight": 0.25, "k": 10, "bank_size": 5}, room_vote={"weight": 1.0, "temperature": 0.1})
    old["model"]["decoder"].update(neighbours=4, store_size=5, copy=True)
    old["model"]["matching"]["neighbour_overlap"] = True
    assert resolve(old) == load_config(None)  # a checkpoint's saved config still loads
    path = tmp_path / "old.yaml"
    path.write_text("model:\n  hubness: {weight: 0.25}\n")
    with pytest.raises(ConfigError, match="unknown config key: model.hubness"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown config key: model.room_category"):
        load_config(None, ["model.room_category.weight=1.6"])
    with pytest.raises(ConfigError, match="unknown config key: model.hubnes"):
        resolve({"model": {"hubnes": {}}})


def test_every_shipped_config_and_the_nullable_keys_pass_validation():
    for name in ("tiny", "ikea-cpu", "ikea-gpu", "linear-probe"):
        load_config(ROOT / "configs" / f"{name}.yaml")
    config = load_config(None, ["train.max_minutes=2.5", "train.threads=none", "data.path=null", "train.heads_phase.minutes=1"])
    assert config["train"]["max_minutes"] == 2.5 and config["train"]["threads"] is None


def test_an_unknown_image_model_name_or_keyword_is_a_config_error():
    with pytest.raises(ConfigError, match="timm has no model named 'resnet10'.*resnet10t"):
        create_model(load_config(None, ["model.image.name=resnet10", "model.text.pretrained=false"])["model"])
    for tower in ("image", "text"):
        with pytest.raises(ConfigError, match=rf"model.{tower}.kwargs \['foo'\]"):
            create_model(load_config(None, [f"model.{tower}.kwargs={{foo: 1}}", "model.image.image_size=32"])["model"])


def test_a_device_this_machine_lacks_is_a_clear_error(capsys):
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="sees no GPU"):
            pick_device("cuda")
    assert main(["eval", "--checkpoint", "nowhere", "--device", "tpu"]) == 2
    assert capsys.readouterr().err.strip() == "vislang eval: error: unknown device 'tpu': use cpu, cuda or cuda:N"


@pytest.mark.parametrize("argv, message", [
    (["caption", "--checkpoint", "c", "--beams", "0", "x.jpg"], "--beams: must be a whole number >= 1"),
    (["index", "build", "--checkpoint", "c", "--output", "o", "--batch-size", "0"], "--batch-size: must be a whole number >= 1"),
    (["index", "build", "--checkpoint", "c", "--output", "o", "--target-recall", "2"], "--target-recall: must be between 0 and 1"),
    (["index", "build", "--checkpoint", "c", "--output", "o", "--kinds", ","], "--kinds: must name at least one kind"),
    (["index", "add", "--index", "i", "--kind", "", "x.jpg"], "--kind: must not be empty"),
    (["search", "--index", "i", "q", "--k", "abc"], "--k: invalid whole number value: 'abc'"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_a_text_weight_without_both_queries_is_refused_before_the_index_is_read(capsys):
    assert main(["search", "--index", "nowhere", "a sofa", "--text-weight", "0.5"]) == 2
    assert "--text-weight weighs a text query against a photo query" in capsys.readouterr().err


@pytest.mark.slow
def test_unusable_threads_cache_folder_and_text_model_are_one_line(tiny_catalog, tmp_path, capsys):
    def one_line(*overrides):
        code = main(["train", "--config", "tiny", "--data", str(tiny_catalog), "--output", str(tmp_path / "run"), *overrides])
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert code == 2 and len(lines) == 1, lines
        return lines[0]

    assert f"train.threads=9999 is more than this machine's {os.cpu_count()} CPUs" in one_line("train.threads=9999")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert f"cannot use {afile} as the image cache folder" in one_line(f"data.cache_dir={afile}")
    message = one_line("model.text.name=nosuchmodel")  # Hugging Face's part of the message spans two lines
    assert "'nosuchmodel'" in message and "use the bundled model" in message


def test_curves_without_validation_figures_draw_no_empty_legend(tmp_path):
    import warnings

    from vislang.train.logger import plot_curves

    records = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "event": "eval"}]  # no val split: no figures
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "No artists with labels found" on an empty legend
        assert plot_curves(tmp_path).is_file()
