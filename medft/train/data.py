"""Datasets and loaders of a run: cached preprocessing, then sampling and augmentation."""
from __future__ import annotations

import math
import random
from collections.abc import Iterator
from functools import partial

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.data.utils import set_rnd
from monai.transforms import Compose
from torch.utils.data import DistributedSampler

from medft.config import RunConfig
from medft.data.manifest import Manifest
from medft.data.transforms import augmentation, preprocessing, sampling
from medft.errors import MedftError


def build_loaders(config: RunConfig, manifest: Manifest, generator: torch.Generator,
                  rank: int = 0, world_size: int = 1) -> tuple[DataLoader, DataLoader, Compose]:
    """Train and validation loaders, and the train transform (reseeded every epoch by the loop).

    With ``world_size`` processes (torchrun), process ``rank`` gets its share of every training
    batch (``train.batch_size`` volumes per process, see ``SeededDistributedSampler``) and
    validates every ``world_size``-th validation case from its ``rank``-th on.
    """
    data = config.data
    train_cases, val_cases = manifest.records("train"), manifest.records("val")
    for name, cases in (("train", train_cases), ("val", val_cases)):
        if not cases:
            raise MedftError(
                f"{manifest.path}: no cases in the {name} split. Fix: give some cases split={name}, "
                "or leave split empty for medft to assign train and val"
            )
        unlabelled = [c["case_id"] for c in cases if "label" not in c]
        if unlabelled:
            raise MedftError(
                f"{manifest.path}: {len(unlabelled)} {name} case(s) have no label ({', '.join(unlabelled[:5])}). "
                "Fix: give them a label or move them to the test split"
            )
    prep = preprocessing(data.intensity, data.label_map)
    train_transform = Compose(
        sampling(data.sampling, data.spatial_size, data.samples_per_volume, data.foreground_ratio)
        + augmentation(data.augmentation, data.mirrored_axes, data.elastic)
    )
    val_transform = Compose(prep)

    def dataset(cases, transform):
        if data.cache:
            return CacheDataset(cases, transform, num_workers=None, progress=False)
        return Dataset(cases, transform)

    cached_train = dataset(train_cases, Compose(prep))
    train_set = Dataset(cached_train, train_transform)
    val_set = dataset(val_cases if world_size == 1 else val_cases[rank::world_size], val_transform)
    batch = config.train.batch_size
    if world_size == 1:
        train_loader = DataLoader(
            train_set, batch_size=batch, shuffle=True, generator=generator,
            num_workers=data.num_workers, drop_last=len(train_cases) > batch,
        )
    else:
        sampler = SeededDistributedSampler(train_set, generator, world_size, rank,
                                           drop_last=len(train_cases) > batch * world_size)
        train_loader = DataLoader(
            train_set, batch_size=batch, sampler=sampler, generator=generator, num_workers=data.num_workers,
            drop_last=len(sampler) > batch, worker_init_fn=partial(_seed_worker, rank=rank),
        )
    val_loader = DataLoader(val_set, batch_size=1, num_workers=data.num_workers)
    return train_loader, val_loader, train_transform


class SeededDistributedSampler(DistributedSampler):
    """DistributedSampler whose permutation comes from the training loop's generator.

    torch's DistributedSampler permutes with a generator seeded from ``seed + epoch``; this one
    draws ``torch.randperm(n, generator=generator)``, the very call of the ``RandomSampler`` of a
    single-process run, from the same generator at the same point (the DataLoader draws its
    worker base seed from it first, in both cases). The loop reseeds that generator every epoch
    from (seed, epoch), so the global order of an epoch is the same for any number of processes.

    The rest is DistributedSampler's: the permutation is padded with its first indices to a
    multiple of the number of processes (or cut to one, ``drop_last``), and process ``rank`` takes
    positions ``rank, rank + world_size, ...``. With ``batch_size`` B per process, step s
    therefore trains on positions ``s*B*world_size`` to ``(s+1)*B*world_size - 1`` of the
    permutation: the batch of step s of a single process with batch ``B * world_size``.
    ``set_epoch`` is not needed (it has no effect).
    """

    def __init__(self, dataset, generator: torch.Generator, num_replicas: int, rank: int, drop_last: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, drop_last=drop_last)
        self.generator = generator

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.dataset), generator=self.generator).tolist()
        if self.drop_last:
            order = order[:self.total_size]
        else:
            order = (order * math.ceil(self.total_size / len(order)))[:self.total_size]
        yield from order[self.rank:self.total_size:self.num_replicas]


def _seed_worker(worker_id: int, rank: int) -> None:
    """Loader workers of a distributed run: MONAI seeds the transforms of worker w from the base
    seed + w, which is the same on every process; mix in the rank so that processes draw
    different augmentations."""
    info = torch.utils.data.get_worker_info()
    seed = (info.seed * 1_000_003 + rank + 1) % 2**32
    set_rnd(info.dataset, seed=seed)
    torch.manual_seed(seed)
    random.seed(seed)
