"""Data-parallel training under `torchrun`: which rows of the global batch this process owns,
gathers with gradients, gradient averaging, and agreement on the clock.

Every rank draws the same global batch from the same seeded sampler and runs the towers on its
own contiguous slice of rows. The embeddings (and the token sequences the heads need) are then
gathered with gradients (as open_clip's `gather_features(gather_with_grad=True)` does), so every rank computes the loss over
the whole global batch with all of its negatives, exactly as one process would. The gather's
backward sums each rank's gradient into the rows' owner, which makes each rank's gradient
`world` times its share; averaging the gradients across ranks then gives the single-process
gradient. Without torchrun (`WORLD_SIZE` unset) everything here is a no-op on one process.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn

from ..config import ConfigError
from ..devices import pick_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's contiguous slice of a global batch (rank order is gather order)."""
        if batch_size % self.world:
            raise ConfigError(f"train.batch_size ({batch_size}) must divide evenly over {self.world} processes")
        share = batch_size // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather(self, *local: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each row-sliced tensor concatenated over the ranks, keeping gradients to every row."""
        if self.world == 1:
            return local
        with warnings.catch_warnings():
            # deprecated for a private replacement; it is still the public autograd-aware gather
            warnings.simplefilter("ignore", FutureWarning)
            return tuple(torch.cat(torch.distributed.nn.all_gather(t), dim=0) for t in local)

    def average_gradients(self, model: torch.nn.Module) -> None:
        """Mean of each gradient over the ranks, in one flat all-reduce."""
        if self.world == 1:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Values averaged over the ranks (for logging losses that differ per rank)."""
        if self.world == 1 or not values:
            return values
        tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world).tolist()))

    def from_main(self, value: float) -> float:
        """Rank 0's value on every rank: one clock decides the schedule and when to stop."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str | None) -> Ranks:
    """Join the process group torchrun describes in the environment, or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    chosen = pick_device(device)
    cuda = chosen.type == "cuda"
    if world == 1:
        return Ranks(device=chosen)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(dist.get_rank(), world, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
