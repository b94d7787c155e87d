"""Adapt a bundle's pretrained network to new data: other output classes, other input channels.

The network is rebuilt with the new channel counts and every pretrained tensor whose name and
shape still match is copied in; the rest is reported, so that a network that silently loaded
nothing never reaches training.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from medft.bundle.reader import Bundle
from medft.errors import MedftError, one_line

MIN_LOADED_FRACTION = 0.5


def head_parameter_names(build: Callable[[int], nn.Module], out_channels: int) -> set[str]:
    """Names of the tensors whose shape depends on the number of output channels: the head.

    ``build(n)`` makes the network with n output channels; it is built with ``out_channels`` and
    ``out_channels + 1`` and the state dicts compared. State-dict names are used, so a module
    registered twice (DynUNet's deep-supervision heads) is named under each of its names.
    """
    return _shape_dependent(build(out_channels), build(out_channels + 1))


def _shape_dependent(network: nn.Module, other: nn.Module) -> set[str]:
    theirs = other.state_dict()
    return {name for name, t in network.state_dict().items() if name not in theirs or theirs[name].shape != t.shape}


@dataclass
class AdaptationReport:
    """What the pretrained weights gave the adapted network (tensors counted as in a state dict)."""

    total_pretrained: int
    loaded: list[str]
    new: list[str]
    dropped: list[tuple[str, str]]  # (pretrained tensor, why it was not loaded)
    head: list[str]
    new_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def loaded_fraction(self) -> float:
        return len(self.loaded) / self.total_pretrained if self.total_pretrained else 0.0

    def to_dict(self) -> dict:
        return {
            "total_pretrained": self.total_pretrained,
            "loaded": len(self.loaded),
            "new": len(self.new),
            "dropped": len(self.dropped),
            "loaded_fraction": round(self.loaded_fraction, 4),
            "head": list(self.head),
            "new_tensors": [
                {"name": n, "shape": list(self.new_shapes.get(n, ())), "head": n in self.head} for n in self.new
            ],
            "dropped_tensors": [{"name": n, "reason": reason} for n, reason in self.dropped],
        }

    def table(self) -> str:
        return format_adaptation(self.to_dict())


def format_adaptation(report: dict) -> str:
    """The text table of an ``AdaptationReport.to_dict()``: counts, then each new and dropped tensor."""
    lines = [
        f"pretrained tensors  {report['total_pretrained']}",
        f"loaded              {report['loaded']} ({report['loaded_fraction']:.1%})",
        f"new                 {report['new']} (initialised at random)",
        f"dropped             {report['dropped']} (pretrained, not loaded)",
        f"head                {len(report['head'])} (tensors sized by the number of output channels)",
    ]
    new, dropped = report["new_tensors"], report["dropped_tensors"]
    width = max((len(t["name"]) for t in new + dropped), default=0)
    if new:
        lines += ["", "new tensors:"]
        lines += [
            f"  {t['name']:<{width}}  {tuple(t['shape'])}{'  head' if t['head'] else ''}" for t in new
        ]
    if dropped:
        lines += ["", "dropped pretrained tensors:"]
        lines += [f"  {t['name']:<{width}}  {t['reason']}" for t in dropped]
    return "\n".join(lines)


def adapt_network(
    bundle: Bundle,
    out_channels: int | None = None,
    in_channels: int | None = None,
    overrides: dict | None = None,
    min_loaded_fraction: float = MIN_LOADED_FRACTION,
) -> tuple[nn.Module, AdaptationReport]:
    """The bundle's network built with the given channel counts, holding every pretrained tensor that fits.

    ``out_channels`` sets the number of classes (the network_def key ``bundle.class_count_key``),
    ``in_channels`` the key of that name (only the ones given); ``overrides`` sets other keys (None
    drops one). Raises MedftError when fewer than ``min_loaded_fraction`` of the pretrained tensors
    were loaded.
    """
    classes = bundle.class_count_key
    changes = dict(overrides or {})
    for key, value in ((classes, out_channels), ("in_channels", in_channels)):
        if value is None:
            continue
        # a network_def that is an expression has no arguments to compare: build_network says why it fails
        if key not in {**bundle.network_args, **changes} and not isinstance(bundle.network_def, str):
            raise MedftError(
                f"{bundle.config_file}: network_def ({bundle.network_class}) has no {key} argument to set to "
                f"{value}. Fix: when {bundle.network_class} takes {key} with a default value, add it to network_def "
                f"with model.network_overrides: {{{key}: {value}}} in your medft config"
            )
        changes[key] = value
    network = bundle.build_network(changes)
    head_out = changes.get(classes, bundle.out_channels)
    head: list[str] = []
    if isinstance(head_out, int) and classes in {**bundle.network_args, **changes}:
        head = sorted(_shape_dependent(network, bundle.build_network({**changes, classes: head_out + 1})))
    report = load_matching(network, bundle.pretrained_state_dict(), head)
    require_loaded(report, bundle, min_loaded_fraction)
    return network, report


def load_matching(network: nn.Module, pretrained: dict[str, torch.Tensor], head: list[str]) -> AdaptationReport:
    """Copy each pretrained tensor whose name and shape match into ``network``, and report the rest."""
    target = network.state_dict()
    loadable, dropped = {}, []
    for name, tensor in pretrained.items():
        if name not in target:
            dropped.append((name, "not in the network"))
        elif tensor.shape != target[name].shape:
            dropped.append((name, f"shape {tuple(tensor.shape)} != {tuple(target[name].shape)} in the network"))
        else:
            loadable[name] = tensor
    network.load_state_dict(loadable, strict=False)
    new = [name for name in target if name not in loadable]
    return AdaptationReport(
        total_pretrained=len(pretrained),
        loaded=list(loadable),
        new=new,
        dropped=dropped,
        head=list(head),
        new_shapes={name: tuple(target[name].shape) for name in new},
    )


def require_loaded(report: AdaptationReport, bundle: Bundle, min_loaded_fraction: float = MIN_LOADED_FRACTION) -> None:
    """Raise MedftError when too few pretrained tensors were loaded (fine-tuning would start from scratch)."""
    weights = bundle.weights_file
    if report.total_pretrained == 0:
        raise MedftError(f"{weights}: holds no tensors. Fix: copy the bundle's real pretrained weights in")
    if report.loaded_fraction >= min_loaded_fraction:
        return
    examples = "; ".join(f"{name}: {reason}" for name, reason in report.dropped[:3])
    raise MedftError(
        f"only {len(report.loaded)} of {report.total_pretrained} pretrained tensors loaded "
        f"(at least {min_loaded_fraction:.0%} needed): the network_def in {bundle.config_file} does not match "
        f"the weights in {weights} (e.g. {examples}). Fix: use the network_def these weights were trained "
        f"with (same channels, features and blocks), or the bundle the weights come from"
    )


# Networks medft refuses to fine-tune, by the name network_def gives them (lower case), and why.
_VISTA3D = (
    "VISTA3D segments the classes it is prompted for (a class_vector or points), one sigmoid map per prompted class, "
    "and is fine-tuned by its own loop that samples prompts (the bundle's train_continual.json); medft's loop trains "
    "one softmax channel per class on one label map, which VISTA3D's forward does not give. Measured here: its 218 M "
    "parameters take 25 s for one training step at 64^3 and 83 s at 96^3 on 2 CPU cores (its patches are 128^3; "
    "benchmarks/vista3d_step.py). Fix: fine-tune it "
    "with the bundle's own train_continual.json (monai.bundle run), or fine-tune a segmentation bundle of the Model "
    "Zoo (e.g. wholeBody_ct_segmentation) with medft"
)
REFUSED_NETWORKS = {"vista3d": _VISTA3D, "vista3d132": _VISTA3D}


def training_refusal(bundle: Bundle) -> str | None:
    """Why medft does not fine-tune this bundle's network (None when it does)."""
    return REFUSED_NETWORKS.get(bundle.network_class.lower())


def segmentation_output_problem(output_shape: Sequence[int], spatial_dims: int | None) -> str | None:
    """Why an output of ``output_shape`` is not a segmentation map (batch, classes, *spatial), or None."""
    if spatial_dims is None or len(output_shape) == spatial_dims + 2:
        return None
    return (f"the network's output {tuple(output_shape)} is not a segmentation map (batch, classes, "
            f"{', '.join('xyz'[:spatial_dims])}): it gives one value per class and image, as a classifier does. medft "
            "fine-tunes segmentation networks (one score per class and voxel). Fix: choose a segmentation bundle")


def dummy_forward_backward(
    network: nn.Module, in_channels: int, spatial_dims: int, size: int | Sequence[int] = 32,
    size_option: str = "--input-size",
) -> tuple[int, ...]:
    """Push a random (2, in_channels, *size) batch through ``network`` in train mode, backward its mean.

    Returns the shape of the main output (the first of a list/tuple, or ``[:, 0]`` of DynUNet's
    deep-supervision stack). The network's mode, norm statistics and gradients are left as they were.
    ``size_option`` is what the caller's user sets the size with, named in the error when it does not fit.
    """
    size = (size,) * spatial_dims if isinstance(size, int) else tuple(size)
    if len(size) != spatial_dims:
        raise MedftError(f"input size {size} has {len(size)} dimensions, the network takes {spatial_dims}. "
                         f"Fix: give {size_option} {spatial_dims} sizes")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batch = torch.randn(2, in_channels, *size, device=device)
    was_training = network.training
    buffers = {name: b.detach().clone() for name, b in network.named_buffers()}
    network.train()
    try:
        try:
            output = network(batch)
        except Exception as error:
            raise MedftError(
                f"the network did not accept a {tuple(batch.shape)} input: {one_line(error)}. Fix: give an input "
                f"size the network accepts ({size_option}), e.g. a multiple of 32, and the channels it takes"
            ) from None
        if isinstance(output, (list, tuple)):
            output = output[0]
        if isinstance(output, torch.Tensor) and output.ndim == spatial_dims + 3:
            output = output[:, 0]  # deep supervision stacked on dim 1 (DynUNet in training)
        if not isinstance(output, torch.Tensor):
            raise MedftError(f"the network returned a {type(output).__name__}, not a tensor")
        if output.requires_grad:
            try:
                output.float().mean().backward()
            except Exception as error:
                raise MedftError(f"the backward pass through the network failed: {one_line(error)}") from None
        return tuple(output.shape)
    finally:
        network.train(was_training)
        network.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, buffer in network.named_buffers():
                buffer.copy_(buffers[name])

