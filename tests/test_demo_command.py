"""`vislang demo`, the README's main job, on the tiny catalog: it trains once, reuses the model,
and --retrain trains again without deleting the earlier run; overrides a reused model was not
trained with are refused, and a retrain that fails before it starts puts the earlier run back."""
import json

import pytest

from vislang.cli.main import config_path
from vislang.config import ConfigError
from vislang.demo import run_demo

pytestmark = pytest.mark.slow  # trains a model or spawns processes: `pytest -m 'not slow'` leaves it out

HEADS_OFF = ["model.matching.enabled=false", "model.decoder.enabled=false"]


def test_demo_trains_once_then_reuses_and_retrain_keeps_the_earlier_run(tiny_catalog, tmp_path, capsys):
    out = tmp_path / "demo"
    first = run_demo(config_path("tiny"), str(tiny_catalog), out, overrides=HEADS_OFF)
    saved = json.loads((out / "test_metrics.json").read_text())
    intervals = saved.pop("ci95")
    assert saved == first and set(intervals) == set(first)  # every retrieval metric with its interval
    assert all(low <= first[name] <= high for name, (low, high) in intervals.items())
    assert (out / "results.png").stat().st_size > 0 and (out / "results.html").is_file()
    import vislang
    from vislang.data import read_catalog
    from vislang.eval import evaluate

    # the demo reports what `vislang eval` computes for its model on the test split
    expected = evaluate(vislang.load(out, device="cpu"), read_catalog(tiny_catalog), "test")
    assert {k: first[k] for k in expected} == pytest.approx(expected)
    capsys.readouterr()

    run_demo(config_path("tiny"), str(tiny_catalog), out, overrides=HEADS_OFF)
    assert "using the model already trained" in capsys.readouterr().out

    run_demo(config_path("tiny"), str(tiny_catalog), out, retrain=True, overrides=HEADS_OFF)
    previous = tmp_path / "demo.previous"
    assert f"moved the earlier run to {previous}" in capsys.readouterr().out
    assert {k: v for k, v in json.loads((previous / "test_metrics.json").read_text()).items() if k != "ci95"} == first
    assert any((out / "checkpoints").iterdir()) and (out / "test_metrics.json").is_file()

    # an override the existing model was not trained with would be ignored: refused instead
    with pytest.raises(ConfigError, match=r"trained without train.lr=0.5: pass --retrain"):
        run_demo(config_path("tiny"), str(tiny_catalog), out, overrides=HEADS_OFF + ["train.lr=0.5"])
    # a retrain whose model cannot be built fails before training starts: the run is put back
    capsys.readouterr()
    with pytest.raises(ConfigError, match="foo"):
        run_demo(config_path("tiny"), str(tiny_catalog), out, retrain=True, overrides=HEADS_OFF + ["model.text.kind=foo"])
    assert f"the earlier run is back in {out}" in capsys.readouterr().out
    assert (out / "test_metrics.json").is_file() and not (tmp_path / "demo.previous-2").exists()
