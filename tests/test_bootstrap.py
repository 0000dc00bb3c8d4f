"""Bootstrap intervals of the metrics (eval/bootstrap.py) and how `vislang eval` reports them."""
import json
from pathlib import Path

import numpy as np
import pytest

from vislang.checkpoint import save_checkpoint
from vislang.cli.main import main
from vislang.config import load_config
from vislang.eval.bootstrap import bootstrap_interval, bootstrap_intervals
from vislang.eval.retrieval import recall_hits
from vislang.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def _hits(n: int, rate: float, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < rate).astype(float)


def test_the_interval_holds_the_estimate_and_matches_the_normal_approximation():
    hits = _hits(344, 0.5)
    low, high = bootstrap_interval(hits)
    assert low < hits.mean() < high
    half = 1.96 * np.sqrt(hits.mean() * (1 - hits.mean()) / len(hits))  # about 0.053 for 344 queries
    assert low == pytest.approx(hits.mean() - half, abs=0.012) and high == pytest.approx(hits.mean() + half, abs=0.012)


def test_the_interval_shrinks_with_more_queries():
    few = _hits(33, 0.3)
    many = np.tile(few, 10)  # the same hit rate over ten times the queries
    few_low, few_high = bootstrap_interval(few)
    many_low, many_high = bootstrap_interval(many)
    assert many_high - many_low < (few_high - few_low) / 2  # about sqrt(10) narrower
    assert few_low < many_low < many_high < few_high


def test_the_interval_is_reproducible():
    hits = np.random.default_rng(2).random(100)  # shares (as room -> products scores), so that seeds tell apart
    assert bootstrap_interval(hits) == bootstrap_interval(hits.copy())
    assert bootstrap_intervals({"a": hits, "b": hits}) == {"a": bootstrap_interval(hits), "b": bootstrap_interval(hits)}
    assert bootstrap_interval(hits, seed=1) != bootstrap_interval(hits)  # the seed is what fixes it


def test_a_perfect_ranking_has_the_degenerate_interval():
    scores = np.eye(20) + 0.01 * np.random.default_rng(0).random((20, 20))
    hits = recall_hits(scores, [{q} for q in range(20)], (1,))[1]
    assert bootstrap_interval(hits) == (1.0, 1.0)
    assert bootstrap_interval(np.zeros(5)) == (0.0, 0.0)
    with pytest.raises(ValueError, match="at least one query"):
        bootstrap_interval([])


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    """An untrained tiny model without the heads (as the CPU recipe trains): eval has retrieval metrics only."""
    config = load_config(ROOT / "configs" / "tiny.yaml", ["model.decoder.enabled=false", "model.matching.enabled=false",
                                                          "model.image.image_size=32"])
    model, tokenizer = create_model(config["model"])
    return save_checkpoint(tmp_path_factory.mktemp("model") / "ck", 1, model, tokenizer, config)


def test_eval_json_gives_every_metric_its_interval(untrained, tiny_catalog, capsys, one_thread):
    assert main(["eval", "--checkpoint", str(untrained), "--data", str(tiny_catalog), "--split", "test",
                 "--device", "cpu", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = {k: v for k, v in report.items() if k not in ("checkpoint", "split", "ci95")}
    assert {"product_text2image_r10", "room_title2image_r1", "room2products_r50", "room_category_acc",
            "room_category_zeroshot_acc"} <= set(metrics)
    assert set(report["ci95"]) == set(metrics)
    for name, (low, high) in report["ci95"].items():
        assert low <= metrics[name] <= high, name
    # the table shows each interval beside its figure
    assert main(["eval", "--checkpoint", str(untrained), "--data", str(tiny_catalog), "--device", "cpu"]) == 0
    table = capsys.readouterr().out
    low, high = report["ci95"]["product_text2image_r10"]
    assert f"{metrics['product_text2image_r10']:.3f} [{low:.3f}, {high:.3f}]" in table


def test_corpus_bleu4_from_kept_counts_equals_pycocoevalcap_on_the_whole_set_and_a_resample():
    from pycocoevalcap.bleu.bleu import Bleu

    from vislang.eval.captioning import _words, caption_stats

    predictions = ["malm chest of 3 drawers white", "a sofa", "billy bookcase oak veneer", "", "lack side table black"]
    refs = [["malm chest of 3 drawers, white", "chest of drawers"], ["ektorp three-seat sofa"],
            ["billy bookcase, white"], ["hemnes bed frame"], ["lack side table, black-brown", "side table"]]
    stats = caption_stats(predictions, refs)

    def theirs(rows: list[int]) -> float:
        res = {k: [_words(predictions[i]) or "empty"] for k, i in enumerate(rows)}
        gts = {k: [_words(r) for r in refs[i]] for k, i in enumerate(rows)}
        return Bleu(4).compute_score(gts, res, verbose=0)[0][3]

    assert stats.bleu4() == pytest.approx(theirs([0, 1, 2, 3, 4]), rel=1e-9)
    assert stats.bleu4(np.array([0, 0, 2, 4, 4])) == pytest.approx(theirs([0, 0, 2, 4, 4]), rel=1e-9)
    assert stats.bleu4() > 0.1  # not the all-empty corner where both sides read ~0

