"""The network a run trains: a bundle's, adapted to the run's classes, or one from random weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from medft.bundle.adapt import AdaptationReport, adapt_network, head_parameter_names, training_refusal
from medft.bundle.reader import build_network, load_bundle
from medft.config import ModelConfig
from medft.errors import MedftError


@dataclass
class PreparedNetwork:
    network: torch.nn.Module
    head: set[str]  # tensors whose shape depends on the number of classes
    network_def: dict  # the definition that builds this network (saved in checkpoints, exported)
    in_channels: int
    spatial_dims: int
    report: AdaptationReport | None = None  # what the pretrained weights gave (None from scratch)


def prepare_network(config: ModelConfig, num_classes: int) -> PreparedNetwork:
    """Build the network to fine-tune (or train from scratch) with ``num_classes`` outputs."""
    inputs = {"in_channels": config.in_channels} if config.in_channels is not None else {}
    if config.bundle is not None:
        bundle = load_bundle(config.bundle, version=config.bundle_version)
        refused = training_refusal(bundle)
        if refused:
            raise MedftError(f"{bundle.root}: medft cannot fine-tune {bundle.network_class}: {refused}")
        network, report = adapt_network(
            bundle, out_channels=num_classes, in_channels=config.in_channels,
            overrides=config.network_overrides, min_loaded_fraction=config.min_loaded_fraction,
        )
        merged = {**bundle.network_args, **config.network_overrides, bundle.class_count_key: num_classes, **inputs}
        network_def = {k: v for k, v in merged.items() if v is not None}  # None dropped the argument
        in_channels = config.in_channels or bundle.in_channels or 1  # the bundle resolves @references
        return PreparedNetwork(network, set(report.head), network_def, in_channels, bundle.spatial_dims or 3, report)
    network_def = {"in_channels": 1, **config.network_def, "out_channels": num_classes, **inputs}  # one channel unless told
    network = build_network(network_def, source="model.network_def")
    head = head_parameter_names(lambda n: build_network({**network_def, "out_channels": n}), num_classes)
    return PreparedNetwork(network, head, network_def, _int(network_def, "in_channels", 1), _int(network_def, "spatial_dims", 3))


def _int(network_def: dict, key: str, default: int) -> int:
    value = network_def.get(key, default)
    return value if isinstance(value, int) else default


def to_channels_last(network: torch.nn.Module, spatial_dims: int) -> torch.nn.Module:
    """``network`` with its convolution kernels (the tensors of rank ``spatial_dims`` + 2) stored channels-last;
    convolutions then give channels-last activations. Other tensors stay as they are."""
    layout = torch.channels_last_3d if spatial_dims == 3 else torch.channels_last
    for tensor in network.parameters():
        if tensor.dim() == spatial_dims + 2:
            tensor.data = tensor.data.contiguous(memory_format=layout)
    return network
