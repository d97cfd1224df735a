"""One DataLoader for a whole run: persistent workers, pinned memory, prefetching, and a batch
sampler that walks (epoch, position) from where the run stands, so the order is today's exact
(seed, epoch) permutation and a resumed run continues mid-epoch.

Workers live for the whole run, so the epoch cannot be set on the dataset in the main process
(each worker holds its own copy): the sampler hands every item its epoch, and `EpochIndexed`
tells the worker's copy before asking for the item."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..devices import to_device


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


class RunBatches(Sampler[list[tuple[int, int]]]):
    """This rank's share of every remaining global batch, steps `start` .. `total` - 1, as
    (epoch, index) pairs."""

    def __init__(self, n: int, seed: int, start: int, total: int, steps_per_epoch: int, global_batch: int,
                 local_batch: int, rank: int):
        self.n, self.seed, self.start, self.total = n, seed, start, total
        self.steps_per_epoch, self.global_batch, self.local_batch, self.rank = (
            steps_per_epoch, global_batch, local_batch, rank)

    def __len__(self) -> int:
        return max(self.total - self.start, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order, order_epoch = None, None
        for step in range(self.start, self.total):
            epoch, position = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = epoch_order(self.seed, epoch, self.n), epoch
            first = position * self.global_batch + self.rank * self.local_batch
            yield [(epoch, i) for i in order[first:first + self.local_batch].tolist()]


class EpochIndexed(Dataset):
    """`dataset[(epoch, i)]` = `dataset[i]` drawn with epoch `epoch`'s augmentation."""

    def __init__(self, dataset):
        self.dataset, self.epoch = dataset, None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if epoch != self.epoch:
            self.dataset.set_epoch(epoch)
            self.epoch = epoch
        return self.dataset[index]


def run_loader(dataset, sampler: RunBatches, seed: int, workers: int, device: torch.device) -> DataLoader:
    """The run's loader. Its own generator: a loader otherwise seeds its workers by drawing from the
    global RNG, which the model's random draws (masks, dropout) share."""
    return DataLoader(EpochIndexed(dataset), batch_sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed * 100_003))


def batch_to_device(batch, device: torch.device) -> list[torch.Tensor]:
    """A batch (a tensor or a tuple of them) on the device; the loader pinned it, so the copy is asynchronous."""
    return [to_device(t, device) for t in (batch if isinstance(batch, (list, tuple)) else [batch])]
