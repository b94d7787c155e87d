"""The search space of ``medft tune``: the ``search`` section of a run config (its schema and the checks
the schema cannot make), the sampling of one value per searched key, and the run config of a trial.

This module builds on ``medft.config`` (the searchable keys are the run config's keys), which knows
nothing of it: ``medft train`` takes the search section as a mapping and ignores it; ``medft tune`` and
``medft validate`` read a config with ``load_search_config``, which checks the section too.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, Field, model_validator

from medft.config import FREEZE_PRESETS, RunConfig, Section, read_raw_config, set_dotted, validate_config, validated

# Searched keys that are not config keys: they build the freeze schedule (see SearchConfig.params).
FREEZE_PRESET_KEY = "freeze.preset"
UNFREEZE_EPOCH_KEY = "freeze.unfreeze_epoch"
_NOT_SEARCHABLE = {
    "train.epochs": "it is the budget of every trial (and of the pruner); set it in train.epochs",
    "freeze": f"search {FREEZE_PRESET_KEY} and/or {UNFREEZE_EPOCH_KEY} instead",
    "search": "the search cannot search itself",
}


def _searchable_key(key: str) -> str:
    """A dotted key of the run config (or one of the freeze keys) that a search may set."""
    if key in (FREEZE_PRESET_KEY, UNFREEZE_EPOCH_KEY):
        return key
    parts = key.split(".")
    for prefix in (key, parts[0]):
        if prefix in _NOT_SEARCHABLE:
            raise ValueError(f"{key} cannot be searched: {_NOT_SEARCHABLE[prefix]}")
    model: type[BaseModel] = RunConfig
    for depth, part in enumerate(parts):
        field = model.model_fields.get(part)
        where = ".".join(parts[:depth + 1])
        if field is None:
            known = ", ".join(model.model_fields)
            raise ValueError(f"{where} is not a key of the run config (known here: {known})")
        if _is_dict(field.annotation):
            return key  # e.g. model.network_overrides.dropout: a free-form mapping
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if depth < len(parts) - 1 and section is None:
            raise ValueError(f"{where} is a value, not a section, so {key} does not exist")
        if depth == len(parts) - 1 and section is not None:
            raise ValueError(f"{key} is a section; name one of its keys, e.g. {key}.{next(iter(section.model_fields))}")
        model = section or model
    return key


def _is_dict(annotation: Any) -> bool:
    return get_origin(annotation) is dict or any(get_origin(arg) is dict for arg in get_args(annotation))


class SearchParam(Section):
    type: Literal["float", "int", "categorical"] = Field(description="float or int: a value from low to high; categorical: one of choices.")
    low: float | None = Field(None, description="Smallest value (float and int).")
    high: float | None = Field(None, description="Largest value, included (float and int).")
    log: bool = Field(False, description="Sample on a log scale (float and int; low must be above 0), as for learning rates.")
    step: float | None = Field(None, gt=0, description="Spacing of the values (float and int; int steps by 1 by default); not with log.")
    choices: list[str | bool | int | float | None] | None = Field(None, description="The values to choose from (categorical): strings, "
                                                                                    "numbers, true/false or null.")

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices or len(self.choices) < 2:
                raise ValueError("a categorical parameter needs choices: a list of at least two values "
                                 "(a single value belongs in the config, not in the search)")
            extra = [name for name in ("low", "high", "step") if getattr(self, name) is not None] + (["log"] if self.log else [])
            if extra:
                raise ValueError(f"{', '.join(extra)} apply to float and int parameters, not to categorical ones")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high, e.g. {{type: {self.type}, low: 1, high: 10}}")
        if self.choices is not None:
            raise ValueError(f"choices apply to categorical parameters; a {self.type} parameter takes low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low above 0, got low {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("low, high and step of an int parameter must be whole numbers")
        return self


class SearchConfig(Section):
    params: dict[Annotated[str, AfterValidator(_searchable_key)], SearchParam] = Field(
        min_length=1,
        description=f"What to search, by dotted config key as --set takes them, e.g. optim.lr: {{type: float, low: 1.0e-4, "
                    f"high: 1.0e-2, log: true}}. {FREEZE_PRESET_KEY} (categorical) and {UNFREEZE_EPOCH_KEY} (int; 0: no "
                    f"freezing) build the freeze schedule (docs/scaling.md).",
    )
    pruner: Literal["hyperband", "successive_halving", "none"] = Field("hyperband", description="Stops unpromising trials early from "
                                                                                                "their validation Dice after each epoch: "
                                                                                                "hyperband, successive_halving or none.")
    min_resource: int = Field(1, ge=1, description="Epochs a trial trains before the pruner first compares it with the others.")
    reduction_factor: int = Field(3, ge=2, description="At each pruning rung only the best 1/reduction_factor of the trials go on (rungs "
                                                       "at min_resource x reduction_factor^k epochs).")
    n_startup_trials: int = Field(10, ge=0, description="Trials sampled at random before the TPE sampler models the results.")
    sampler_seed: int | None = Field(None, description="Seed of the sampler; trial n draws from (seed, n), so parallel workers and "
                                                       "resumed studies do not repeat draws. By default the config's seed.")
    study_name: str | None = Field(None, min_length=1, description="Name of the study in the storage; by default the config file's name "
                                                                   "(medft tune --study overrides it).")


class RunConfigWithSearch(RunConfig):
    """The run config with the schema of its search section (``RunConfig`` leaves the section a mapping)."""

    search: SearchConfig | None = Field(None, description=RunConfig.model_fields["search"].description)


def validate_search_config(raw: dict, source: str, base: Path | None = None) -> RunConfigWithSearch:
    """``validate_config`` with the search section's schema and the checks the schema cannot make."""
    return validate_config(raw, source, base, schema=RunConfigWithSearch, checks=search_space_problems)


def load_search_config(path: str | Path, overrides: list[str] = ()) -> RunConfigWithSearch:
    """``load_config`` with the search section checked (``validate_search_config``)."""
    path = Path(path)
    return validate_search_config(read_raw_config(path, overrides), source=str(path), base=path.parent)


def search_space_problems(raw: dict) -> list[str]:
    """What the schema cannot see in a config's search: the config must stay valid at each end of
    every range and with each choice, and the pruner must be able to stop a trial. The parameters
    that the schema refuses, and a config that is invalid without its search, are left to the
    schema's problems, which come in the same error."""
    search = raw.get("search")
    base = {key: value for key, value in raw.items() if key != "search"}
    config, invalid = validated(base)
    if not isinstance(search, dict) or invalid:
        return []
    params = search["params"] if isinstance(search.get("params"), dict) else {}
    problems = []
    epochs, min_resource = config.train.epochs, search.get("min_resource", 1)
    if search.get("pruner") != "none" and type(min_resource) is int and min_resource >= epochs:
        problems.append(f"  search.min_resource: {min_resource} epoch(s) is not below train.epochs ({epochs}), so the "
                        f"pruner could never stop a trial. Fix: lower search.min_resource or set search.pruner: none")
    searched = {}
    for key, spec in params.items():
        param = _search_param(key, spec)
        if param is None:
            continue
        wrong = _freeze_key_problem(key, param)
        if wrong:
            problems.append(f"  search.params.{key}: {wrong}")
        else:
            searched[key] = param
    if UNFREEZE_EPOCH_KEY in searched and FREEZE_PRESET_KEY not in params:
        first = next((stage for stage in config.freeze_stages if stage.epoch == 0), None)
        if first is None or (first.preset in (None, "none") and not first.patterns):
            problems.append(f"  search.params.{UNFREEZE_EPOCH_KEY}: nothing is frozen at epoch 0, so there is nothing to "
                            f"unfreeze. Fix: search {FREEZE_PRESET_KEY} too, or give a freeze stage at epoch 0 with a preset")
    for key, param in searched.items():
        for value in _extremes(param):
            _, invalid = validated(apply_params(base, {key: value}))
            if invalid:
                problems.append(f"  search.params.{key}: the value {value!r} makes the config invalid:\n" +
                                "\n".join("  " + line for line in invalid))
    return problems


def _search_param(key: Any, spec: Any) -> SearchParam | None:
    """A searched parameter as the schema reads it; None when the schema refuses it."""
    if not isinstance(key, str):
        return None
    try:
        _searchable_key(key)
        return SearchParam.model_validate(spec)
    except ValueError:  # pydantic's ValidationError too
        return None


def _freeze_key_problem(key: str, param: SearchParam) -> str | None:
    """The searched freeze keys take a preset (categorical) and an epoch (int from 0)."""
    if key == FREEZE_PRESET_KEY:
        allowed = set(FREEZE_PRESETS)
        if param.type != "categorical" or not set(param.choices) <= allowed:
            return f"{FREEZE_PRESET_KEY} must be categorical with choices among {sorted(allowed)}"
    if key == UNFREEZE_EPOCH_KEY and (param.type != "int" or param.low < 0):
        return f"{UNFREEZE_EPOCH_KEY} must be an int parameter with low >= 0 (an epoch)"
    return None


def _extremes(param: SearchParam) -> list:
    if param.type == "categorical":
        return list(param.choices)
    cast = int if param.type == "int" else float
    return [cast(param.low), cast(param.high)]


def apply_params(base: dict, params: dict[str, Any]) -> dict:
    """A copy of the raw config ``base`` with the searched values set (the freeze keys build the schedule)."""
    raw = copy.deepcopy(base)
    raw.pop("search", None)
    for key, value in params.items():
        if key not in (FREEZE_PRESET_KEY, UNFREEZE_EPOCH_KEY):
            set_dotted(raw, key, value, f"search.params.{key}")
    if FREEZE_PRESET_KEY in params or UNFREEZE_EPOCH_KEY in params:
        raw["freeze"] = freeze_schedule(raw.get("freeze") or [], params.get(FREEZE_PRESET_KEY), params.get(UNFREEZE_EPOCH_KEY))
    return raw


def freeze_schedule(stages: list[dict], preset: str | None, unfreeze_epoch: int | None) -> list[dict]:
    """The schedule from a searched preset (replaces the epoch-0 stage's) and unfreeze epoch
    (replaces the later stages with one that trains everything from that epoch on)."""
    first = next((dict(s) for s in stages if s.get("epoch") == 0), {"epoch": 0, "preset": "none"})
    later = [dict(s) for s in stages if s.get("epoch", 0) > 0]
    if preset is not None:
        first["preset"] = preset
    if unfreeze_epoch is not None:
        if unfreeze_epoch == 0:
            return []
        later = [{"epoch": int(unfreeze_epoch), "preset": "none"}]
    if first.get("preset") in (None, "none") and not first.get("patterns"):
        return later if any(s.get("preset") not in (None, "none") or s.get("patterns") for s in later) else []
    return [first, *later]


def suggest(trial, key: str, spec: SearchParam):
    """The value of ``key`` for an Optuna trial."""
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def describe_params(params: dict) -> str:
    """Sampled values as the log and messages show them: optim.lr=0.001234, data.augmentation=light."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
