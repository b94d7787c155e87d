"""Datasets and loaders of a run: cached preprocessing, then sampling and augmentation."""
from __future__ import annotations

import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose

from medft.config import RunConfig
from medft.data.manifest import Manifest
from medft.data.transforms import augmentation, preprocessing, sampling
from medft.errors import MedftError


def build_loaders(config: RunConfig, manifest: Manifest, generator: torch.Generator) -> tuple[DataLoader, DataLoader, Compose]:
    """Train and validation loaders, and the train transform (reseeded every epoch by the loop)."""
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
        + augmentation(data.augmentation)
    )
    val_transform = Compose(prep)

    def dataset(cases, transform):
        if data.cache:
            return CacheDataset(cases, transform, num_workers=None, progress=False)
        return Dataset(cases, transform)

    cached_train = dataset(train_cases, Compose(prep))
    train_set = Dataset(cached_train, train_transform)
    val_set = dataset(val_cases, val_transform)
    train_loader = DataLoader(
        train_set, batch_size=config.train.batch_size, shuffle=True, generator=generator,
        num_workers=data.num_workers, drop_last=len(train_cases) > config.train.batch_size,
    )
    val_loader = DataLoader(val_set, batch_size=1, num_workers=data.num_workers)
    return train_loader, val_loader, train_transform
