"""Datasets and loaders of a run: cached preprocessing (``medft.train.cache``), then sampling and augmentation."""
from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from functools import partial

import torch
from monai.data import DataLoader, Dataset
from monai.data.utils import set_rnd
from monai.transforms import CastToTyped, Compose, Transform
from torch.utils.data import DistributedSampler

from medft.config import RunConfig
from medft.data.checks import label_value_problems
from medft.data.footprint import estimate_sizes, label_dtype
from medft.data.manifest import Manifest
from medft.data.preprocessing import Preprocessing
from medft.data.transforms import augmentation, sampling
from medft.errors import DataError, MedftError, find_user_error
from medft.train.cache import CaseStore, default_cache_dir, fingerprint, memory_budget

log = logging.getLogger("medft.train")


def build_loaders(config: RunConfig, manifest: Manifest, preprocessing: Preprocessing, generator: torch.Generator,
                  in_channels: int, rank: int = 0, world_size: int = 1) -> tuple[DataLoader, DataLoader, Compose]:
    """Train and validation loaders, and the train transform (reseeded every epoch by the loop).
    Every case is checked against the run's classes and the network's ``in_channels`` as it loads.

    Training cases are preprocessed with their labels on the preprocessed grid; validation cases
    come one at a time, not batched, their labels on their files' grids (see ``Preprocessing``).

    With ``world_size`` processes (torchrun), process ``rank`` gets its share of every training
    batch (``train.batch_size`` volumes per process, see ``SeededDistributedSampler``) and
    validates every ``world_size``-th validation case from its ``rank``-th on.
    """
    data = config.data
    train_cases, val_cases = _labelled_split(manifest, "train"), _labelled_split(manifest, "val")
    class_names = run_class_names(config, manifest.class_names)
    # checked, then the label kept in the smallest integer type; training samples get it back as float32
    checks = [CheckLabelValues(class_names), CheckImageChannels(in_channels),
              CastToTyped(keys="label", dtype=label_dtype(len(class_names)), allow_missing_keys=True)]
    train_transform = Compose(
        [CastToTyped(keys="label", dtype=torch.float32)]
        + sampling(data.sampling, data.spatial_size, data.samples_per_volume, data.foreground_ratio)
        + augmentation(data.augmentation, data.mirrored_axes, data.elastic)
    )
    segments = manifest.segment_names  # how DICOM SEG and RTSTRUCT labels name the classes
    train_chain = Compose(preprocessing.training(data.label_map, segments) + checks)
    val_chain = Compose(preprocessing.inference(data.label_map, segments) + checks)
    val_cases = val_cases if world_size == 1 else val_cases[rank::world_size]
    if data.cache:
        store = CaseStore(memory_budget(data.cache_memory), data.cache_dir or default_cache_dir(),
                          fingerprint(preprocessing.to_dict(), data.label_map, class_names, in_channels, segments))
        classes = len(class_names)
        cached_train = store.dataset(train_cases, train_chain, estimate_sizes(train_cases, preprocessing, classes, True), "train")
        val_set = store.dataset(val_cases, val_chain, estimate_sizes(val_cases, preprocessing, classes, False), "val")
        log.info("%s", store.describe())
    else:
        cached_train, val_set = Dataset(train_cases, train_chain), Dataset(val_cases, val_chain)
    train_set = UserErrorsFromWorkers(Dataset(cached_train, train_transform))
    val_set = UserErrorsFromWorkers(val_set)
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
    val_loader = DataLoader(val_set, batch_size=None, collate_fn=_one_case, num_workers=data.num_workers)
    return train_loader, val_loader, train_transform


def _labelled_split(manifest: Manifest, split: str) -> list[dict]:
    """The records of ``split``; a MedftError when it has no case or a case without a label."""
    cases = manifest.records(split)
    if not cases:
        raise MedftError(f"{manifest.path}: no cases in the {split} split. Fix: give some cases split={split}, "
                         "or leave split empty for medft to assign train and val")
    unlabelled = [c["case_id"] for c in cases if "label" not in c]
    if unlabelled:
        raise MedftError(f"{manifest.path}: {len(unlabelled)} {split} case(s) have no label ({', '.join(unlabelled[:5])}). "
                         "Fix: give them a label or move them to the test split")
    return cases


def _one_case(case: dict) -> dict:
    """Validation cases as they are: each keeps the record of its preprocessing, which brings its
    prediction back onto its label's grid."""
    return case


def run_class_names(config: RunConfig, manifest_names: list[str]) -> list[str]:
    """The run's classes, background first: data.class_names, else the manifest's (unless data.label_map changes them)."""
    names = config.data.class_names or ([] if config.data.label_map else manifest_names)
    if not names:
        reason = "data.label_map changes the classes" if config.data.label_map else "the manifest declares no classes"
        raise MedftError(f"{reason}. Fix: set data.class_names (background first), e.g. [background, tumour]")
    if len(names) < 2:
        raise MedftError(f"data.class_names: need background and at least one class, got {names}")
    return list(names)


class CheckLabelValues(Transform):
    """Refuse a label whose values are not whole numbers or not the run's classes 0..n-1 (a
    ``data.class_names`` shorter than the labels, a ``data.label_map`` that leaves a value out): the
    loss would otherwise fail deep inside torch ("index 2 is out of bounds")."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)

    def __call__(self, data: dict) -> dict:
        label = data.get("label")
        if label is None:
            return data
        values = label.as_tensor() if hasattr(label, "as_tensor") else torch.as_tensor(label)  # no metadata copies
        if values.numel() == 0 or (values.min() >= 0 and values.max() < len(self.class_names)
                                   and bool((values == values.round()).all())):
            return data  # the usual case, without sorting the voxels
        file = getattr(label, "meta", {}).get("filename_or_obj", "")
        case_id = str(data.get("case_id", ""))
        for problem in label_value_problems(values.numpy(), file, []):  # without classes: whole numbers only
            raise DataError(problem.problem, problem.fix, file=file, case_id=case_id)
        names = self.class_names
        outside = [int(v) for v in values.unique().tolist() if not 0 <= v < len(names)]
        raise DataError(
            f"label values {outside} are outside the run's classes 0..{len(names) - 1} ({', '.join(names)})",
            "give every class a name in data.class_names (background first), map the other values with "
            "data.label_map (e.g. {3: 0}), or correct the label file",
            file=file, case_id=case_id,
        )


class CheckImageChannels(Transform):
    """Refuse an image whose channels are not the network's (a 4D file among 3D ones, a missing
    modality): batching or the first layer would otherwise fail deep inside torch."""

    def __init__(self, in_channels: int):
        self.in_channels = in_channels

    def __call__(self, data: dict) -> dict:
        channels = data["image"].shape[0]
        if channels != self.in_channels:
            image = data["image"]
            raise DataError(
                f"the image has {channels} channel(s) but the network takes {self.in_channels}",
                "give every case the same channels (medft check-data names the cases that differ); if all have "
                f"{channels}, set model.in_channels: {channels} (the first layer is then re-initialised)",
                file=getattr(image, "meta", {}).get("filename_or_obj", ""), case_id=str(data.get("case_id", "")),
            )
        return data


class UserErrorsFromWorkers(torch.utils.data.Dataset):
    """A dataset whose MedftErrors (a damaged file, a NaN image, a bad label) reach the training
    process as themselves from DataLoader workers too (``data.num_workers``), rather than as a
    RuntimeError holding the worker's whole traceback."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        try:
            return self.dataset[index]
        except Exception as exc:
            user_error = find_user_error(exc)
            if user_error is None or torch.utils.data.get_worker_info() is None:
                raise
            raise _WorkerUserError(_MARK + str(user_error) + _MARK + user_error.public + _MARK) from None


_MARK = "<<medft-user-error>>"


class _WorkerUserError(MedftError):
    """torch re-raises a worker's error in the main process as ``type(error)(text)``, ``text`` being
    "Caught ... in DataLoader worker process N" and the worker's traceback; the message meant for
    people and its public form travel in it between three marks, and are all this error keeps."""

    def __init__(self, text: str):
        if text.count(_MARK) >= 3 and not text.startswith(_MARK):  # re-raised in the main process
            *_, message, public, _ = text.split(_MARK)
            super().__init__(message, public=public)
        else:
            super().__init__(text)


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
