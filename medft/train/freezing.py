"""What to freeze and when: presets, per-family encoder rules, a gradual schedule, optimizer groups.

Typical use::

    schedule = FreezeSchedule([FreezeStage(0, "all_but_head"), FreezeStage(5, "encoder"), FreezeStage(10)], method="full")
    schedule.validate(model, head)                       # every stage, before a long run
    optimizer = torch.optim.AdamW(parameter_groups(model, head, lr, head_lr, weight_decay))
    for epoch in range(start, epochs):
        frozen = schedule.frozen_at(model, head, epoch)  # on resume too, not only on changes
        apply_freezing(model, frozen)
        set_train_mode(model, frozen)
        log.info("trainable: %s", TrainableCount.of(model, frozen))  # 12,345 of 1,234,567 parameters (1.0%) in ...
        ...

``head`` is the set of parameter names whose shape depends on the number of output classes.
A preset never freezes a head parameter; an explicit pattern may.

Fine-tuning methods (``finetune.method``): ``full`` adds nothing to the schedule; ``bitfit`` (Ben
Zaken et al., 2022) freezes every parameter but the bias terms and the head, ``lora`` every parameter but
the adapters (``medft.train.lora``) and the head, at every stage: a
stage's frozen set is the union of its own and the method's, so a stage may freeze more (biases of
the encoder) and never unfreezes what the method freezes. A bias term is a parameter whose own name
(after the last dot) is ``bias`` or ends in ``_bias`` (attention's ``in_proj_bias``): the shifts of
normalisation layers are bias terms, their scales are not; SwinUNETR's
``relative_position_bias_table`` is a table, not a bias term, and stays frozen.

Presets: ``none`` freezes nothing; ``all_but_head`` freezes every parameter outside the head;
``encoder`` freezes the family's contracting path, from the input down to and including the
bottleneck (every layer that runs before the first upsampling), chosen by the class name of the
network (or of the nearest base class that has a rule, so a bundle's subclass of ``UNet`` uses
the ``UNet`` rule). Parameter names of each family's encoder start with:

==============  =============================================================================
family          encoder parameter names start with
==============  =============================================================================
UNet            ``model.0.``, ``model.1.submodule.0.``, ``model.1.submodule.1.submodule.0.``,
                ... and the bottleneck ``model.1.submodule.(...)1.submodule.<name>``
SegResNet       ``convInit.``, ``down_layers.``
DynUNet         ``input_block.``, ``downsamples.``, ``bottleneck.``
SwinUNETR       ``swinViT.``, ``encoder1.`` ... ``encoder4.``, ``encoder10.``
BasicUNet       ``conv_0.``, ``down_1.`` ... ``down_4.``
FlexibleUNet    ``encoder.`` (the backbone)
==============  =============================================================================

MONAI's ``UNet`` is built recursively: each level is ``Sequential(down, SkipConnection(inner),
up)``, so level k lives under ``model.`` followed by k times ``1.submodule.``; its down layer is
child ``0``, its up layer child ``2``. At the deepest level ``inner`` is the bottleneck itself, a
``ResidualUnit`` or ``Convolution`` whose children have names (``conv``, ``residual``, ``adn``)
rather than indices. The decoder (``up_layers``, ``upsamples``, ``decoder*``, ``upcat_*``,
``decoder``, the ``2.`` children of UNet) and the head stay trainable.

Train mode: in frozen parts normalisation layers run in eval mode, so that batch norms keep their
pretrained running statistics. A normalisation layer belongs to a frozen part when its scale is
frozen, even if its bias trains (BitFit): its statistics stay those its scale was trained with.
Dropout (and SwinUNETR's drop path) keeps its train-mode behaviour everywhere: it holds no state,
so frozen weights stay frozen, and it remains the regulariser the network was trained with; set the network's dropout to 0 to turn it off.
"""
from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from medft.config import (
    FINETUNE_METHODS,
    FREEZE_PRESETS,
    FreezeStage,
    freeze_epochs_problem,
    freeze_pattern_problem,
)
from medft.errors import MedftError
from medft.train.lora import is_adapter

# re.match patterns over parameter names: see the table in the module docstring.
ENCODER_RULES: dict[str, tuple[str, ...]] = {
    "UNet": (r"model\.(1\.submodule\.)*0\.", r"model\.(1\.submodule\.)+(?!\d)"),
    "SegResNet": (r"convInit\.", r"down_layers\."),
    "DynUNet": (r"input_block\.", r"downsamples\.", r"bottleneck\."),
    "SwinUNETR": (r"swinViT\.", r"encoder\d+\."),
    "BasicUNet": (r"conv_0\.", r"down_\d+\."),
    "FlexibleUNet": (r"encoder\.",),
}

# BatchNorm*, SyncBatchNorm and InstanceNorm* (running statistics), and the stateless ones.
NORM_TYPES = (_NormBase, nn.GroupNorm, nn.LayerNorm)

# Optimizer groups, in this order: head or body, with weight decay or without. Tensors with at
# most one dimension (biases, normalisation scales and shifts, PReLU slopes) get no decay.
GROUP_NAMES = ("head/decay", "head/no_decay", "body/decay", "body/no_decay")


def frozen_parameter_names(
    model: nn.Module, head: Collection[str], preset: str | None = None, patterns: Sequence[str] = ()
) -> set[str]:
    """Names of the parameters to freeze: the preset's (never a head parameter) and those that
    match any of ``patterns`` (``re.search``; these may include head parameters)."""
    names = [name for name, _ in model.named_parameters()]
    head = _checked_head(model, head)
    frozen = _preset_names(model, names, head, preset or "none") - head
    for pattern in _as_patterns(patterns):
        matched = {name for name in names if _compile(pattern).search(name)}
        if not matched:
            raise MedftError(
                f"freeze pattern {pattern!r} matches no parameter of {type(model).__name__} "
                f"(names look like {', '.join(names[:3])}, ..., {names[-1]}). "
                "Fix: correct the regular expression, or remove it"
            )
        frozen |= matched
    return frozen


def is_bias(name: str) -> bool:
    """Whether a parameter is a bias term for BitFit: its own name is ``bias`` or ends in ``_bias``."""
    leaf = name.rpartition(".")[2]
    return leaf == "bias" or leaf.endswith("_bias")


def method_frozen_names(model: nn.Module, head: Collection[str], method: str = "full") -> set[str]:
    """Names of the parameters that fine-tuning ``method`` freezes at every stage (never a head parameter):
    none for ``full``; for ``bitfit``, every parameter but the bias terms (``is_bias``); for ``lora``, every
    parameter but the adapters' (``medft.train.lora``, which must have added them)."""
    _check_method(method)
    if method == "full":
        return set()
    head = _checked_head(model, head)
    names = [name for name, _ in model.named_parameters()]
    if method == "lora":
        if not any(map(is_adapter, names)):
            raise MedftError(f"finetune.method lora: {type(model).__name__} has no adapters. Fix: add them first "
                             "(medft.train.lora.add_lora)")
        return {name for name in names if not is_adapter(name)} - head
    return {name for name in names if not is_bias(name)} - head


@dataclass(frozen=True)
class TrainableCount:
    """Trainable parameters (elements) and tensors of a network, out of all of the network's own: adapters
    (LoRA) count as trainable, not in the totals, so that the share compares what trains with the network."""

    parameters: int  # adapters included
    total_parameters: int  # the network's own
    tensors: int  # the network's own that train
    total_tensors: int
    adapter_tensors: int = 0

    @classmethod
    def of(cls, model: nn.Module, frozen: Collection[str]) -> TrainableCount:
        """The counts once ``frozen`` is frozen (a tensor registered under two names counts once)."""
        _check_known(model, frozen)
        sizes = {name: param.numel() for name, param in model.named_parameters()}
        trainable = [size for name, size in sizes.items() if name not in frozen]
        own = {name: size for name, size in sizes.items() if not is_adapter(name)}
        adapters = [name for name in sizes if name not in own and name not in frozen]
        return cls(sum(trainable), sum(own.values()), len(trainable) - len(adapters), len(own), len(adapters))

    @property
    def share(self) -> float:
        """Trainable parameters as a share of all (0 to 1; 0 for a network without any)."""
        return self.parameters / self.total_parameters if self.total_parameters else 0.0

    def __str__(self) -> str:
        """As "12,345 of 1,234,567 parameters (1.0%) in 40 of 120 tensors" (with adapters: "... and 24 adapter tensors")."""
        percent = 100 * self.share
        shown = f"{percent:.1f}" if percent >= 0.1 or percent == 0 else f"{percent:.2g}"
        adapters = f" and {self.adapter_tensors} adapter tensors" if self.adapter_tensors else ""
        return (f"{self.parameters:,} of {self.total_parameters:,} parameters ({shown}%) "
                f"in {self.tensors} of {self.total_tensors} tensors{adapters}")


def apply_freezing(model: nn.Module, frozen: Collection[str]) -> None:
    """requires_grad False for the frozen parameters, True for the rest.

    A frozen parameter's gradient is also dropped: AdamW and SGD update every parameter whose grad
    is not None (decay and momentum included), so a stale zero gradient would keep moving it.
    """
    _check_known(model, frozen)
    for name, param in model.named_parameters():
        param.requires_grad_(name not in frozen)
        if name in frozen:
            param.grad = None


def set_train_mode(model: nn.Module, frozen: Collection[str]) -> None:
    """``model.train()``, then eval mode for each normalisation layer of a frozen part.

    A normalisation layer is in a frozen part when its own parameters are all frozen or, when it
    has none, when the parameters of its nearest enclosing module that has some are all frozen.
    """
    _check_known(model, frozen)
    model.train()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES) and _in_frozen_part(model, name, frozen):
            module.eval()


class FreezeSchedule:
    """Freeze stages by epoch, each adding to what fine-tuning ``method`` freezes (``method_frozen_names``);
    without a stage at epoch 0, training starts with only the method's parameters frozen."""

    def __init__(self, stages: Iterable[FreezeStage], method: str = "full"):
        _check_method(method)
        self.method = method
        stages = list(stages)
        if not stages or stages[0].epoch != 0:
            stages.insert(0, FreezeStage(0, "none"))
        epochs = [stage.epoch for stage in stages]
        problem = freeze_epochs_problem(epochs)
        if problem:
            raise MedftError(problem)
        self.stages = tuple(stages)
        self._epochs = epochs

    def stage_at(self, epoch: int) -> FreezeStage:
        """The stage in force at ``epoch``: the last one that starts at or before it."""
        if epoch < 0:
            raise ValueError(f"epoch must be 0 or more, got {epoch}")
        return self.stages[bisect.bisect_right(self._epochs, epoch) - 1]

    def frozen_at(self, model: nn.Module, head: Collection[str], epoch: int) -> set[str]:
        return _stage_frozen(self.stage_at(epoch), model, head, self.method)

    def changes_at(self, epoch: int) -> bool:
        """True when a stage starts at ``epoch`` (0 included)."""
        return epoch in self._epochs

    def validate(self, model: nn.Module, head: Collection[str]) -> None:
        """Raise the MedftError of the first stage that does not fit ``model``, before training."""
        for stage in self.stages:
            _stage_frozen(stage, model, head, self.method)


def _stage_frozen(stage: FreezeStage, model: nn.Module, head: Collection[str], method: str = "full") -> set[str]:
    """The stage's frozen parameter names, with the method's; a MedftError when they would leave nothing
    to train (the first step would otherwise fail in backward, "does not require grad")."""
    frozen = frozen_parameter_names(model, head, stage.preset, stage.patterns) | method_frozen_names(model, head, method)
    total = sum(1 for _ in model.named_parameters())
    if total and len(frozen) == total:
        with_method = f" with finetune.method {method}" if method != "full" else ""
        raise MedftError(
            f"freeze stage at epoch {stage.epoch} (preset {stage.preset or 'none'}, patterns {list(stage.patterns)})"
            f"{with_method} freezes all {total} parameter tensors of {type(model).__name__}: nothing would train. "
            "Fix: narrow the patterns so that they leave the head (at least) trainable"
        )
    return frozen


def parameter_groups(model: nn.Module, head: Collection[str], lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """Optimizer groups of every parameter, frozen or not, so that unfreezing needs no new optimizer.

    Groups are named as in ``GROUP_NAMES``; empty ones are left out. Head groups use ``head_lr``,
    body groups ``lr``; ``no_decay`` groups have weight decay 0. Frozen parameters get no
    gradient, and AdamW and SGD leave parameters without one untouched.
    """
    head = _checked_head(model, head)
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        part = "head" if name in head else "body"
        decay = param.ndim > 1
        group_name = f"{part}/{'decay' if decay else 'no_decay'}"
        group = groups.setdefault(group_name, {
            "name": group_name,
            "params": [],
            "lr": head_lr if part == "head" else lr,
            "weight_decay": weight_decay if decay else 0.0,
        })
        group["params"].append(param)
    return [groups[name] for name in GROUP_NAMES if name in groups]


def _preset_names(model: nn.Module, names: list[str], head: set[str], preset: str) -> set[str]:
    _check_preset(preset)
    if preset == "all_but_head":
        return set(names)
    if preset == "encoder":
        return _encoder_names(model, names, head)
    return set()


def _encoder_names(model: nn.Module, names: list[str], head: set[str]) -> set[str]:
    family = next((cls.__name__ for cls in type(model).__mro__ if cls.__name__ in ENCODER_RULES), None)
    if family is None:
        raise MedftError(
            f"freeze preset 'encoder' has no rule for network class {type(model).__name__}; "
            f"known families: {', '.join(ENCODER_RULES)}. "
            "Fix: list the encoder's parameter-name patterns under freeze patterns instead"
        )
    rule = re.compile("|".join(f"(?:{pattern})" for pattern in ENCODER_RULES[family]))
    encoder = {name for name in names if rule.match(name)} - head
    if not encoder:
        raise MedftError(
            f"freeze preset 'encoder': the {family} rule matches no parameter of {type(model).__name__} "
            "outside the head. Fix: list the encoder's parameter-name patterns under freeze patterns instead"
        )
    return encoder


def _in_frozen_part(model: nn.Module, name: str, frozen: Collection[str]) -> bool:
    """Whether the parameters of ``name``, or of its nearest ancestor that has some, are all frozen,
    bias terms aside (BitFit trains them in frozen parts)."""
    while True:
        params = [f"{name}.{p}" if name else p for p, _ in model.get_submodule(name).named_parameters()]
        if params:
            return all(p in frozen for p in [p for p in params if not is_bias(p)] or params)
        if not name:
            return False
        name = name.rpartition(".")[0]


def _checked_head(model: nn.Module, head: Collection[str]) -> set[str]:
    """The head as canonical names, after checking that its names belong to ``model`` (buffers allowed).

    A tensor registered under several names (DynUNet's deep-supervision heads) counts under the
    first name ``named_parameters`` gives it, so every alias of a head tensor means that tensor.
    """
    canonical: dict[str, str] = {}
    for named in (model.named_parameters, model.named_buffers):
        first = {id(tensor): name for name, tensor in named()}
        canonical.update({name: first[id(tensor)] for name, tensor in named(remove_duplicate=False)})
    unknown = set(head) - canonical.keys()
    if unknown:
        raise MedftError(
            f"head names {sorted(unknown)[:3]} are not in {type(model).__name__}. "
            "Fix: compute the head from this network's own parameter names"
        )
    return {canonical[name] for name in head}


def _check_known(model: nn.Module, frozen: Collection[str]) -> None:
    unknown = set(frozen) - {name for name, _ in model.named_parameters()}
    if unknown:
        raise MedftError(
            f"frozen names {sorted(unknown)[:3]} are not parameters of {type(model).__name__}. "
            "Fix: compute them with frozen_parameter_names on this network"
        )


def _check_method(method: str) -> None:
    if method not in FINETUNE_METHODS:
        raise MedftError(f"finetune.method must be one of {', '.join(FINETUNE_METHODS)}, got {method!r}. Fix: use one of them")


def _check_preset(preset: str | None) -> None:
    if preset is not None and preset not in FREEZE_PRESETS:
        raise MedftError(f"freeze preset must be one of {', '.join(FREEZE_PRESETS)}, got {preset!r}. Fix: use one of them")


def _as_patterns(patterns: Sequence[str] | str) -> tuple[str, ...]:
    """A single string is one pattern, not a sequence of one-character patterns."""
    return (patterns,) if isinstance(patterns, str) else tuple(patterns)


def _compile(pattern: str) -> re.Pattern:
    problem = freeze_pattern_problem(pattern)
    if problem:
        raise MedftError(problem)
    return re.compile(pattern)
