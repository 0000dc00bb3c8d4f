"""Run logging: metrics.jsonl (one JSON object a line), TensorBoard, and a PNG of the curves.

metrics.jsonl is appended to, a line at a time; a run killed mid-line leaves a torn last line,
which `read_metrics` ignores and a resumed run's logger removes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import write_atomic, write_text_atomic


class RunLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, resumed_at: int | None = None) -> None:
        """`resumed_at`: the step a resumed run continues from; what was logged after it (by the
        run that was stopped) is dropped, since those steps are taken again."""
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        if resumed_at is not None and self.path.is_file():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resumed_at]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resumed_at is None else resumed_at + 1  # TensorBoard hides the dropped steps too
                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
            except ImportError:  # tensorboard is optional at run time; metrics.jsonl always exists
                self._tb = None

    def log(self, step: int, **values: Any) -> None:
        record = {"step": step, **values}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


class NullLogger:
    """What ranks other than 0 log to under torchrun: nothing."""

    def log(self, step: int, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not a JSON object (torn by a kill) is left out."""
    if not Path(path).is_file():
        return []
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def plot_curves(run_dir: Path) -> Path | None:
    """Loss (and any eval recall) against step, saved as run_dir/curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    loss_keys = sorted({k for r in records for k in r if k.startswith("loss")})
    if not loss_keys:
        return None
    evals = [r for r in records if r.get("event") == "eval"]
    eval_keys = sorted({k for r in evals for k in r if "_r" in k or k.endswith("_acc")})  # none without a val split
    fig, axes = plt.subplots(1, 2 if eval_keys else 1, figsize=(11 if eval_keys else 6, 4), squeeze=False)
    for key in loss_keys:
        points = [(r["step"], r[key]) for r in records if key in r]
        axes[0][0].plot(*zip(*points), label=key)
    axes[0][0].set(xlabel="step", ylabel="loss", title="training loss")
    axes[0][0].legend()
    if eval_keys:
        for key in eval_keys:
            points = [(r["step"], r[key]) for r in evals if key in r]
            axes[0][1].plot(*zip(*points), marker="o", label=key)
        axes[0][1].set(xlabel="step", ylabel="score", title="validation")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), "figure")
    plt.close(fig)
    return out
