"""LoRA (Hu et al., 2022) through Hugging Face peft: low-rank adapters beside a pretrained network's layers.

Typical use::

    targets = add_lora(network, head, config.finetune.lora)   # in place; names of the adapted layers
    ...train: the method "lora" freezes all but the adapters and the head (medft.train.freezing)...
    merged = merged_state_dict(network)                       # plain names: what the network computes, one
                                                              # weight per layer (checkpoints, export, WiSE-FT)

peft replaces each adapted layer ``x`` by a wrapper: its weights move to ``x.base_layer.*`` and the adapter
adds ``x.lora_A.default.weight`` (a layer of the same kind as ``x``, with ``rank`` outputs: for a convolution,
its kernel, stride, padding and dilation) and ``x.lora_B.default.weight`` (``rank`` inputs; a 1 x 1 x 1 convolution),
started at zero so that the adapted network first computes what the pretrained one does. The layer then
computes ``x(input) + scale * B(A(dropout(input)))``; merging adds ``scale * B @ A`` to ``x``'s weight.

Which layers: every convolution (1D, 2D, 3D) and linear layer outside the head, in every network family
(a UNet's and DynUNet's convolutions and residual projections, a SegResNet's, MeshNet's dilated
convolutions, SwinUNETR's and UNesT's attention (qkv, proj) and MLP layers with their convolutional
blocks), or those ``target_modules`` choose. The head is not adapted: it is new, and trains whole.
Transposed convolutions (the upsampling of UNet, DynUNet, SwinUNETR) and grouped convolutions get no adapter (peft
has no LoRA layer for the former, medft's merge does not cover the latter): they keep their pretrained weights
unless they belong to the head.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from medft.config import LoraConfig
from medft.errors import MedftError

ADAPTER = "default"  # peft's adapter name: its tensors are <layer>.lora_A.default.weight and lora_B
ADAPTED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
TRANSPOSED_TYPES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BASE = ".base_layer."


@dataclass(frozen=True)
class LoraTargets:
    """The layers that get an adapter, and the transposed convolutions (outside the head) that cannot."""

    layers: tuple[str, ...]
    transposed: tuple[str, ...] = ()

    def describe(self, model: nn.Module, rank: int) -> str:
        """One line for train.log, once the adapters are in ``model``: the layers, their adapters' size, what is left out."""
        adapter = sum(p.numel() for name in self.layers for key, p in model.get_submodule(name).named_parameters()
                      if key.startswith("lora_"))
        text = f"LoRA rank {rank} on {len(self.layers)} layers ({adapter:,} adapter parameters)"
        if self.transposed:
            frozen = sum(p.numel() for name in self.transposed for p in model.get_submodule(name).parameters())
            text += (f"; {len(self.transposed)} transposed convolutions ({frozen:,} parameters) have no adapter (peft "
                     f"wraps none) and keep their pretrained weights: {', '.join(self.transposed)}")
        return text


def lora_targets(model: nn.Module, head: Collection[str], patterns: list[str] | None = None) -> LoraTargets:
    """The layers to adapt: convolutions and linear layers outside the head, those matching any of ``patterns``
    (``re.search`` over module names) when given. A MedftError when a pattern chooses no such layer, or none is left."""
    head_layers = {name.rpartition(".")[0] for name in head}
    layers = [name for name, module in model.named_modules()  # grouped convolutions aside: B @ A would not be one
              if isinstance(module, ADAPTED_TYPES) and getattr(module, "groups", 1) == 1 and name not in head_layers]
    transposed = [name for name, module in model.named_modules()
                  if isinstance(module, TRANSPOSED_TYPES) and name not in head_layers]
    if patterns:
        for pattern in patterns:
            if not any(re.search(pattern, name) for name in layers):
                raise MedftError(
                    f"finetune.lora.target_modules: {pattern!r} matches none of the {len(layers)} convolutions and linear "
                    f"layers of {type(model).__name__} outside the head (names look like {', '.join(layers[:3])}, ...). "
                    "Fix: correct the regular expression (module names, not parameter names), or remove it"
                )
        chosen = [name for name in layers if any(re.search(pattern, name) for pattern in patterns)]
        transposed = [name for name in transposed if any(re.search(pattern, name) for pattern in patterns)]
        layers = chosen
    if not layers:
        raise MedftError(f"finetune.method lora: {type(model).__name__} has no convolution or linear layer outside its head "
                         "to adapt. Fix: use finetune.method full or bitfit")
    return LoraTargets(tuple(layers), tuple(transposed))


def add_lora(model: nn.Module, head: Collection[str], settings: LoraConfig) -> LoraTargets:
    """Adapters beside the layers ``lora_targets`` chooses, in place (the new tensors on each layer's device)."""
    targets = lora_targets(model, head, settings.target_modules)
    peft = _peft()
    config = peft.LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha if settings.alpha is not None else settings.rank,
        lora_dropout=settings.dropout, bias="none",
        target_modules="|".join(re.escape(name) for name in targets.layers),  # a string is matched whole (re.fullmatch)
    )
    aliases = _aliases(model, targets.layers)
    peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name in targets.layers:
        wrapper = model.get_submodule(name)
        _match_sampling(wrapper)
        for other in aliases.get(name, ()):  # peft replaces a layer under one name; its forward may call another
            parent, _, child = other.rpartition(".")
            setattr(model.get_submodule(parent), child, wrapper)
    return targets


def _match_sampling(wrapper: nn.Module) -> None:
    """A's dilation and padding mode as the layer's. peft (0.21) gives A the layer's kernel, stride and padding but
    not its dilation: beside a dilated convolution (MeshNet's) A's output would not have the layer's size."""
    base, a = wrapper.base_layer, wrapper.lora_A[ADAPTER]
    if isinstance(base, nn.modules.conv._ConvNd):
        a.dilation, a.padding_mode = base.dilation, base.padding_mode


def is_adapter(name: str) -> bool:
    """Whether a parameter (or state_dict key) belongs to an adapter: peft names them ``lora_A``, ``lora_B``, ..."""
    return ".lora_" in name


def has_adapters(model: nn.Module) -> bool:
    return any(is_adapter(name) for name, _ in model.named_parameters())


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of the network without adapters that computes what ``model`` computes: each adapted
    layer's weight plus its update, under the layer's own names. ``model.state_dict()`` for a network without
    adapters. The model itself is not changed."""
    state = model.state_dict()
    if not has_adapters(model):
        return state
    deltas = {f"{name}{BASE}weight": _delta(module)
              for name, module in model.named_modules(remove_duplicate=False) if _is_lora_layer(module)}
    merged = {}
    for key, tensor in state.items():
        if is_adapter(key):
            continue
        value = tensor + deltas[key].to(tensor.dtype) if key in deltas else tensor
        merged[key.replace(BASE, ".")] = value
    return merged


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors, under their peft names (what a checkpoint needs besides the merged weights)."""
    return {key: tensor for key, tensor in model.state_dict().items() if is_adapter(key)}


def restore_adapted(model: nn.Module, merged: dict[str, torch.Tensor], adapters: dict[str, torch.Tensor], source: str) -> None:
    """Load a checkpoint of an adapted network into ``model``, freshly adapted on the pretrained weights: the adapters
    from ``adapters``, every tensor outside the adapted layers from ``merged``; the adapted layers' own weights stay
    the pretrained ones, which LoRA never changes. A MedftError when ``merged`` then differs from what the model
    computes: the pretrained weights are not those the adapters were trained on."""
    state = model.state_dict()
    loaded = {}
    for key, tensor in state.items():
        if is_adapter(key):
            loaded[key] = adapters[key]
        elif BASE in key:
            loaded[key] = tensor
        else:
            loaded[key] = merged[key]
    model.load_state_dict(loaded)
    rebuilt = merged_state_dict(model)
    changed = [key for key, value in rebuilt.items()
               if not torch.allclose(value.float(), merged[key].float(), rtol=1e-4, atol=1e-6)]
    if changed:
        raise MedftError(
            f"{source}: its adapters were trained on other pretrained weights than the bundle holds now ({len(changed)} "
            f"adapted layers differ, e.g. {changed[0]}). Fix: restore the bundle as it was when the run started"
        )


def _aliases(model: nn.Module, layers: tuple[str, ...]) -> dict[str, list[str]]:
    """The other names of each layer registered under several (DynUNet's skip_layers hold its blocks again)."""
    names: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    return {layer: [n for n in names[id(model.get_submodule(layer))] if n != layer] for layer in layers
            if len(names[id(model.get_submodule(layer))]) > 1}


def _is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


@torch.no_grad()
def _delta(layer: nn.Module) -> torch.Tensor:
    """scale x B @ A in the shape of the layer's weight. Not peft's get_delta_weight: in peft 0.21 it fails on
    1 x 1 x 1 convolutions (it squeezes two of their three kernel dimensions)."""
    a, b = layer.lora_A[ADAPTER].weight.float(), layer.lora_B[ADAPTER].weight.float()
    if a.ndim == 2:  # linear: (rank, in), (out, rank)
        delta = b @ a
    else:  # convolution: A (rank, in, *kernel) and B (out, rank, 1, ...): delta[o, i] = sum_r B[o, r] A[r, i]
        delta = torch.einsum("or,ri...->oi...", b.flatten(1), a)
    return delta * layer.scaling[ADAPTER]


def _peft():
    try:
        import peft
    except ImportError as exc:  # a dependency of medft: only a broken environment lacks it
        raise MedftError(f"finetune.method lora needs Hugging Face peft, which cannot be imported ({exc}). "
                         "Fix: pip install 'peft>=0.14' (make setup installs it)") from None
    return peft
