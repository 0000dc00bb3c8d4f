"""Nothing a user hands in is unpickled: weights in safetensors, configs through yaml.safe_load,
metadata in JSON, and the one pickle reader left (a checkpoint of an earlier version's
trainer_state.pt; third-party .pth weights) is torch.load(weights_only=True)."""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from vislang.checkpoint import CheckpointError, load_trainer_state, save_checkpoint
from vislang.models import create_model
from vislang.config import load_config

PACKAGE = Path(__file__).resolve().parents[1] / "vislang"


def _calls(pattern: str) -> list[str]:
    """`file:line: statement` of every match in the package's source (a statement may span lines)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(pattern, text):
            line = text.count("\n", 0, match.start()) + 1
            statement = text[match.start(): text.find(")\n", match.start()) + 1]
            found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {statement}")
    return found


def test_the_package_has_no_unsafe_loader():
    unsafe = _calls(r"\bpickle\.loads?\(|\byaml\.(?:load|unsafe_load|full_load)\(|allow_pickle\s*=\s*True|\bdill\b|\bjoblib\.load")
    assert unsafe == []
    torch_loads = _calls(r"\btorch\.load\(")
    assert torch_loads and all("weights_only=True" in call for call in torch_loads), torch_loads
    # the IKEA source's pickles go through the restricted unpickler only
    unpicklers = _calls(r"\bpickle\.Unpickler\b")
    assert [call.split(":")[0] for call in unpicklers] == ["vislang/data/safe_pickle.py"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_today_holds_no_pickle_and_an_old_pickled_state_that_runs_code_is_refused(untrained_checkpoint,
                                                                                                tmp_path):
    from vislang.train.state import RunState

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                         ["model.matching.enabled=false", "model.decoder.enabled=false"])
    model, tokenizer = create_model(config["model"])
    optimizer = torch.optim.AdamW(model.parameters())
    saved = save_checkpoint(tmp_path / "run", 3, model, tokenizer, config, RunState(step=3).checkpoint_state(optimizer, 1.0))
    files = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file())
    assert {"model.safetensors", "config.yaml", "trainer_state.safetensors", "trainer_state.json"} <= set(files)
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt"))], files
    assert load_trainer_state(saved)[1]["step"] == 3

    # an earlier version's checkpoint, whose trainer_state.pt someone replaced with a pickle that runs code
    old = tmp_path / "old"
    shutil.copytree(untrained_checkpoint, old)
    marker = tmp_path / "pwned"
    (old / "trainer_state.pt").write_bytes(pickle.dumps({"optimizer": _RunsCode(marker), "step": 1, "elapsed": 0.0}, protocol=2))
    with pytest.raises(CheckpointError, match="trainer_state.pt is damaged or not a trainer state"):
        load_trainer_state(old)
    assert not marker.exists()  # nothing ran
