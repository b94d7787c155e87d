"""The network a run trains: a bundle's, adapted to the run's classes, or one from random weights."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from medft.bundle.adapt import AdaptationReport, adapt_network, head_parameter_names
from medft.bundle.reader import Bundle, build_network, load_bundle
from medft.config import ModelConfig


@dataclass
class PreparedNetwork:
    network: torch.nn.Module
    head: set[str]  # parameters whose shape depends on the number of classes
    network_def: dict  # the definition that builds this network (for export)
    in_channels: int
    spatial_dims: int
    bundle: Bundle | None = None
    report: AdaptationReport | None = None
    overrides: dict = field(default_factory=dict)


def prepare_network(config: ModelConfig, num_classes: int) -> PreparedNetwork:
    """Build the network to fine-tune (or train from scratch) with ``num_classes`` outputs."""
    if config.bundle is not None:
        bundle = load_bundle(config.bundle, version=config.bundle_version)
        overrides = {**config.network_overrides, "out_channels": num_classes}
        if config.in_channels is not None:
            overrides["in_channels"] = config.in_channels
        network, report = adapt_network(
            bundle, out_channels=num_classes, in_channels=config.in_channels,
            overrides=config.network_overrides, min_loaded_fraction=config.min_loaded_fraction,
        )
        network_def = {**bundle.network_def, **overrides}
        build = lambda n: bundle.build_network({**overrides, "out_channels": n})  # noqa: E731
        head = set(report.head) if report.head else head_parameter_names(build, num_classes)
        return PreparedNetwork(
            network, head, _drop_none(network_def), _in_channels(network_def, bundle.in_channels),
            _spatial_dims(network_def), bundle, report, overrides,
        )
    overrides = {"out_channels": num_classes}
    if config.in_channels is not None:
        overrides["in_channels"] = config.in_channels
    network_def = {**config.network_def, **overrides}
    network = build_network(network_def, source="model.network_def")
    build = lambda n: build_network({**network_def, "out_channels": n}, source="model.network_def")  # noqa: E731
    head = head_parameter_names(build, num_classes)
    return PreparedNetwork(network, head, network_def, _in_channels(network_def, None), _spatial_dims(network_def), overrides=overrides)


def _drop_none(network_def: dict) -> dict:
    return {k: v for k, v in network_def.items() if v is not None}


def _in_channels(network_def: dict, default: int | None) -> int:
    value = network_def.get("in_channels", default)
    return value if isinstance(value, int) else 1


def _spatial_dims(network_def: dict) -> int:
    value = network_def.get("spatial_dims", network_def.get("dimensions", 3))
    return value if isinstance(value, int) else 3
