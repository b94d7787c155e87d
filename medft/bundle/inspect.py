"""``medft bundle inspect``: would this bundle fine-tune? Load, adapt, push a dummy batch, report."""
from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence

from torch import nn

from medft.bundle.adapt import (
    MIN_LOADED_FRACTION,
    adapt_network,
    dummy_forward_backward,
    format_adaptation,
    require_loaded,
    segmentation_output_problem,
    training_refusal,
)
from medft.bundle.preprocessing import bundle_preprocessing, read_bundle_steps
from medft.bundle.reader import Bundle, load_bundle
from medft.errors import MedftError

DEFAULT_SIZE = 32
# Tried when the default size fails (e.g. SwinUNETR's instance norms need 2+ voxels at its bottom).
RETRY_SIZE = 64
# The bundle's own sizes (its training patch, its inferer's window) are tried first up to this many voxels
# (a batch of two of them through a large network fits in a few GB); UNesT takes nothing smaller than 96^3.
MAX_BUNDLE_VOXELS = 128**3
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def inspect_bundle(
    source: str,
    out_channels: int | None = None,
    in_channels: int | None = None,
    input_size: int | Sequence[int] | None = None,
    overrides: dict | None = None,
) -> dict:
    """Adapt the bundle to ``out_channels``/``in_channels`` and try one training step's passes on it.

    Returns the ``medft bundle inspect --json`` result: the adaptation counts (``loaded``, ``new``,
    ``dropped``, ``total_pretrained``), ``forward_ok``, ``would_train`` and what led to them.
    Without ``input_size`` the metadata's input shape is used when small, else 32 per dimension
    (then 64 when that fails). Errors reading or building the bundle raise MedftError. What the
    bundle's code prints (DiNTS prints advice on the input size) goes to stderr: stdout is the report's.
    """
    with contextlib.redirect_stdout(sys.stderr):
        return _inspect(source, out_channels, in_channels, input_size, overrides)


def _inspect(
    source: str,
    out_channels: int | None,
    in_channels: int | None,
    input_size: int | Sequence[int] | None,
    overrides: dict | None,
) -> dict:
    _require_positive(out_channels=out_channels, in_channels=in_channels, input_size=input_size)
    if out_channels == 1:
        raise MedftError("out_channels=1: medft trains one output channel per class, background included (softmax, "
                         "Dice + cross-entropy, the prediction is the channel with the highest score), so a head needs "
                         "at least 2. Fix: give 2 for one structure (background and the structure), N + 1 for N")
    bundle = load_bundle(source)
    refused = training_refusal(bundle)
    network, report = adapt_network(bundle, None if refused else out_channels, None if refused else in_channels,
                                    overrides, min_loaded_fraction=0.0)
    errors = [refused] if refused else []
    try:
        require_loaded(report, bundle, MIN_LOADED_FRACTION)
    except MedftError as error:
        errors.append(str(error))
    preprocessing = _preprocessing(bundle, errors)
    spatial_dims, n_in, n_out = _network_shape(bundle, network, overrides, out_channels, in_channels)
    sizes = [input_size] if input_size is not None else _default_sizes(bundle, spatial_dims)
    if refused:
        output_shape, size = None, sizes[0]
    else:
        output_shape, size, problem = _try_training_passes(network, spatial_dims, n_in, n_out, sizes)
        errors += [problem] if problem else []
    size = [size] * (spatial_dims or 0) if isinstance(size, int) else list(size)
    return {
        "bundle": bundle.name,
        "version": bundle.version,
        "path": str(bundle.root),
        "config_file": str(bundle.config_file),
        "weights_file": str(bundle.weights_file),
        "network": bundle.network_class,
        "spatial_dims": spatial_dims,
        "in_channels_before": bundle.in_channels,
        "in_channels": n_in,
        "out_channels_before": bundle.out_channels,
        "out_channels": n_out,
        "class_names_before": bundle.class_names,
        "parameters": sum(p.numel() for p in network.parameters()),
        **report.to_dict(),
        "min_loaded_fraction": MIN_LOADED_FRACTION,
        "input_shape": None if refused else [2, n_in, *size],
        "output_shape": list(output_shape) if output_shape else None,
        "forward_ok": output_shape is not None,
        "preprocessing": preprocessing,
        "would_train": not errors,
        "errors": errors,
    }


def _network_shape(bundle: Bundle, network: nn.Module, overrides: dict | None, out_channels: int | None,
                   in_channels: int | None) -> tuple[int | None, int | None, int | None]:
    """(spatial dims, input channels, output channels) of the adapted network: as asked for (the channels, then
    the overrides), else as the bundle's metadata says, else as its first convolution has them (None: unknown)."""
    changed = dict(overrides or {})
    changed.update({k: v for k, v in (("out_channels", out_channels), ("in_channels", in_channels)) if v is not None})
    spatial_dims = _int(changed.get("spatial_dims")) or bundle.spatial_dims or _first_conv(network, "dims")
    n_in = _int(changed.get("in_channels")) or bundle.in_channels or _first_conv(network, "in_channels")
    n_out = _int(changed.get("out_channels")) or bundle.out_channels
    return spatial_dims, n_in, n_out


def _try_training_passes(network: nn.Module, spatial_dims: int | None, n_in: int | None, n_out: int | None,
                         sizes: list) -> tuple[tuple | None, int | Sequence[int], str | None]:
    """One training step's passes on a dummy batch, at each input size in turn until one works: (the output
    shape, None when every size failed; the size tried last; what stops training, or None)."""
    if spatial_dims is None or n_in is None:
        return None, sizes[0], ("cannot tell the network's spatial dims or input channels from network_def: give "
                                "--in-channels")
    error = None
    for size in sizes:
        try:
            output_shape = dummy_forward_backward(network, n_in, spatial_dims, size)
        except MedftError as exc:
            error = str(exc)
            continue
        problem = segmentation_output_problem(output_shape, spatial_dims)
        if not problem and n_out is not None and output_shape[1] != n_out:
            problem = f"the network's output has {output_shape[1]} channels, not the {n_out} asked for"
        return output_shape, size, problem
    return None, size, error


def format_inspection(result: dict) -> str:
    """The human-readable ``medft bundle inspect`` report of an ``inspect_bundle`` result."""
    channels = f"{result['in_channels_before']} -> {result['out_channels_before']} channels"
    adapted = f"{result['in_channels']} -> {result['out_channels']} channels"
    lines = [
        f"bundle   {result['bundle']} {result['version']}  ({result['path']})",
        f"config   {result['config_file']}",
        f"weights  {result['weights_file']}",
        f"network  {result['network']}, {result['spatial_dims']}D, {channels}; adapted: {adapted}, "
        f"{result['parameters']:,} parameters",
        "",
        format_adaptation(result),
        "",
    ]
    lines += ["preprocessing (replayed by medft train and evaluate):"]
    lines += [f"  {line}" for line in result["preprocessing"]["lines"]]
    lines.append("")
    shape_in = tuple(result["input_shape"] or ())
    if result["input_shape"] is None:
        lines.append("dummy pass  not run")
    elif result["forward_ok"]:
        lines.append(f"dummy pass  {shape_in} -> {tuple(result['output_shape'])}: forward and backward OK")
    else:
        lines.append(f"dummy pass  {shape_in}: FAILED")
    if result["would_train"]:
        lines.append("verdict  would train")
    else:
        lines.append("verdict  would NOT train:")
        lines += [f"  - {error}" for error in result["errors"]]
    return "\n".join(lines)


def _require_positive(**counts: int | Sequence[int] | None) -> None:
    for name, value in counts.items():
        values = [value] if isinstance(value, int) or value is None else list(value)
        if any(v is not None and (not isinstance(v, int) or v < 1) for v in values):
            raise MedftError(f"{name}={value!r}: give a whole number of at least 1 (or leave it out)")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _default_sizes(bundle: Bundle, spatial_dims: int | None) -> list:
    """The bundle's own sizes (the metadata's input shape, then its inferer's roi_size) up to MAX_BUNDLE_VOXELS,
    then 32 per dim, then 64 per dim as a retry."""
    own = [shape for shape in map(lambda s: _size(s, spatial_dims), (bundle.input_spatial_shape, bundle.inferer_arg("roi_size")))
           if shape is not None and math.prod(shape) <= MAX_BUNDLE_VOXELS]
    sizes = own + [DEFAULT_SIZE, RETRY_SIZE]
    return [size for i, size in enumerate(sizes) if size not in sizes[:i]]


def _size(value: object, spatial_dims: int | None) -> list[int] | None:
    """A size as a bundle writes one (``[96, 96, 96]``, ``256`` for every axis, ``["256", "256"]``), or None
    (``"8*n"``, or the wrong number of axes)."""
    if spatial_dims is None:
        return None
    if _int(value) or (isinstance(value, str) and value.isdigit()):
        value = [value] * spatial_dims
    if not isinstance(value, (list, tuple)) or len(value) != spatial_dims:
        return None
    size = [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
    return size if all(_int(v) and v > 0 for v in size) else None


def _preprocessing(bundle: Bundle, errors: list[str]) -> dict:
    """What medft will replay of the bundle's preprocessing, one line per step; a problem joins ``errors``."""
    try:
        steps = read_bundle_steps(bundle)
    except MedftError as error:
        errors.append(str(error))
        return {"origin": None, "steps": None, "left_out": [], "lines": [f"cannot replay: {error}"]}
    if steps.preprocessing is None:
        try:
            bundle_preprocessing(bundle)
        except MedftError as error:
            errors.append(str(error))
        return {"origin": None, "steps": None, "left_out": [], "lines": steps.describe()}
    return {"origin": steps.origin, "steps": steps.preprocessing.steps,
            "left_out": [{"step": name, "reason": why} for name, why in steps.left_out], "lines": steps.describe()}


def _first_conv(network: nn.Module, what: str) -> int | None:
    """Spatial dims ("dims") or input channels of the network's first convolution."""
    for module in network.modules():
        if isinstance(module, _CONVS):
            return len(module.kernel_size) if what == "dims" else module.in_channels
    return None
