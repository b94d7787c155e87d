"""The preprocessing of a run: the bundle's own, replayed, or medft's (``data.spacing``, ``data.intensity``)."""
from __future__ import annotations

import logging

from medft.bundle.preprocessing import bundle_preprocessing
from medft.bundle.reader import load_bundle
from medft.config import RunConfig
from medft.data.manifest import load_manifest
from medft.data.preprocessing import Preprocessing, median_spacing

log = logging.getLogger("medft.train")


def resolve_spacing(config: RunConfig) -> None:
    """``data.spacing: auto`` becomes the median spacing of the training cases (written so into config.yaml)."""
    if config.data.spacing == "auto":
        manifest = load_manifest(config.data.manifest)
        config.data.spacing = median_spacing(manifest.records("train"))
        log.info("data.spacing auto: %s mm, the median spacing of the %d training cases",
                 " x ".join(f"{s:g}" for s in config.data.spacing), len(manifest.split("train")))


def run_preprocessing(config: RunConfig) -> Preprocessing:
    """What the run's network is fed (``data.spacing`` must be resolved, see ``resolve_spacing``)."""
    data = config.data
    if data.preprocessing == "bundle":
        return bundle_preprocessing(load_bundle(config.model.bundle, version=config.model.bundle_version))
    return Preprocessing.medft(data.spacing, data.intensity, data.intensity_range)
