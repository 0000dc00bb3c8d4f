"""Training memory: the peak memory of vislang's training step, plain and with each memory switch.

Each variant (gradient accumulation in micro-batches, activation checkpointing, ...) runs in a
fresh process, which takes `--steps` training steps of the recipe on real IKEA batches (the
code of `bench/train_throughput.py`, which is the training loop's) and reports:
- on CUDA, `torch.cuda.max_memory_allocated` during the steps, above what was allocated before;
- on a CPU (Linux, glibc), the peak of the bytes malloc has handed out during the steps (glibc's
  mallinfo2, sampled every millisecond), above what was in use before them. The resident set
  size would not do: glibc keeps freed memory, so it only ever grows.
Step time is reported beside it: the memory switches trade time for memory. With
`train.locked_views` the step is the cached-view step, and the cache is made before the steps:
its memory is not in the figure.

Usage:  python bench/train_memory.py [--device cpu|cuda] [--steps 3] [--variant k=v[,k=v]]... [--json] [key=value ...]
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from openclip_baseline import machine  # noqa: E402
from train_throughput import VisLangSteps, training_batches  # noqa: E402
from vislang.cli.main import config_path  # noqa: E402
from vislang.config import load_config  # noqa: E402

DEFAULT_VARIANTS = ["train.accum_steps=2", "train.accum_steps=4", "train.grad_checkpointing=true",
                    "train.accum_steps=4,train.grad_checkpointing=true"]
MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _in_use() -> int:
    """Bytes malloc has handed out and not had back (heap + mmapped blocks): unlike the resident
    size, it falls when tensors are freed, so its peak is the step's own."""
    info = _LIBC.mallinfo2()
    return info.uordblks + info.hblkhd


_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))
_LIBC.mallinfo2.restype = _MallInfo2


class PeakMemory:
    """The most memory in use while the block runs, sampled every millisecond on a thread."""

    def __enter__(self) -> "PeakMemory":
        self.start = self.peak = _in_use()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.001):
            self.peak = max(self.peak, _in_use())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _in_use())


def measure(config_name: str, data: str | None, device: torch.device, steps: int, overrides: list[str]) -> dict[str, float]:
    """One variant, in this process: peak memory above the start and seconds per step."""
    config = load_config(config_path(config_name), overrides)
    items, bank, batches = training_batches(config, data, steps)
    torch.manual_seed(0)
    contender = VisLangSteps("vislang", config, items, bank, batches, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        contender.run(steps)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        with PeakMemory() as memory:
            start = time.perf_counter()
            contender.run(steps)
            seconds = time.perf_counter() - start
        peak = memory.peak - memory.start
    return {"peak_mib": peak / MIB, "step_s": seconds / steps}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="ikea-cpu")
    parser.add_argument("--data", help="catalog folder or shards (default: $VISLANG_DATA, then ../shared/data/ikea)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=3, help="training steps per variant")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per variant; the median is reported")
    parser.add_argument("--variant", action="append", metavar="key=value[,key=value]",
                        help=f"a memory switch to compare with the plain step (repeatable; default: {DEFAULT_VARIANTS})")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one measurement, run in a fresh process
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides for every variant")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.child is not None:
        extra = args.child.split(",") if args.child else []
        print(json.dumps(measure(args.config, args.data, device, args.steps, args.overrides + extra)))
        return {}

    variants = [""] + (args.variant or DEFAULT_VARIANTS)
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved, so a busy spell of the machine hits every variant
            command = [sys.executable, __file__, "--config", args.config, "--device", args.device, "--steps", str(args.steps),
                       "--child", variant, *(["--data", args.data] if args.data else []), *args.overrides]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"variant {variant or 'plain'} failed:\n{done.stderr[-2000:]}")
            runs[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats} {variant or 'plain'}: {runs[variant][-1]}", file=sys.stderr)
    median = {v: {k: statistics.median(r[k] for r in rs) for k in ("peak_mib", "step_s")} for v, rs in runs.items()}
    plain = median[""]
    result = {
        "machine": machine() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device": device.type, "config": args.config, "overrides": args.overrides, "steps": args.steps,
        "repeats": args.repeats, "plain": plain, "all_runs": {v or "plain": rs for v, rs in runs.items()},
        "variants": {v: {**median[v], "memory_ratio": median[v]["peak_mib"] / plain["peak_mib"],
                         "time_ratio": median[v]["step_s"] / plain["step_s"]} for v in variants[1:]},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"plain: {plain['peak_mib']:.0f} MiB above the start, {plain['step_s']:.2f} s/step")
        for variant, figures in result["variants"].items():
            print(f"{variant}: {figures['peak_mib']:.0f} MiB ({figures['memory_ratio']:.2f}x), "
                  f"{figures['step_s']:.2f} s/step ({figures['time_ratio']:.2f}x)")
    return result


if __name__ == "__main__":
    main()
