"""MONAI config components (``{"_target_": "Spacingd", ...}``) as medft records and builds them.

A component is recorded as plain JSON (run folders, ``evaluation.json``, exported bundles): values
that JSON cannot hold but a MONAI config can (a torch or numpy dtype) are written as the ``$``
expression MONAI evaluates back to them. A bundle's components may name classes of its own
``scripts`` package: ``bundle_imports`` makes that package importable while they are built.
"""
from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The modules a recorded component's $ expressions use (see as_json).
IMPORTS = ("$import torch", "$import numpy")


class NotRecordable(ValueError):
    """A value a MONAI config can hold but JSON cannot (a function, an object)."""


@contextmanager
def bundle_imports(bundle_root: Path | str | None) -> Iterator[None]:
    """Make ``import scripts...`` find this bundle's package, and forget it afterwards.

    Every bundle calls its package ``scripts``: modules of that name are dropped from
    ``sys.modules`` before and after, so two bundles loaded in one process never share one.
    """
    if bundle_root is None:
        yield
        return
    path = str(Path(bundle_root).resolve())
    _forget_scripts()
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        if path in sys.path:
            sys.path.remove(path)
        _forget_scripts()


def _forget_scripts() -> None:
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        del sys.modules[name]


def as_json(value: Any) -> Any:
    """``value`` (a resolved config value) as JSON a MONAI ConfigParser reads back to it; NotRecordable otherwise."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, torch.dtype):
        return f"$torch.{str(value).removeprefix('torch.')}"
    if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
        return f"$numpy.{np.dtype(value).name}"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise NotRecordable(f"a {type(value).__name__} ({value!r:.60})")


def component_class(target: str, code_root: Path | str | None = None) -> type | None:
    """The class a ``_target_`` names (a MONAI name such as ``Spacingd``, or a dotted path), None when unknown."""
    from monai.bundle import ConfigComponent

    with bundle_imports(code_root):
        try:
            found = ConfigComponent({"_target_": target}).resolve_module_name()
        except Exception:
            return None
        if isinstance(found, str):
            module, _, name = found.rpartition(".")
            try:
                found = getattr(importlib.import_module(module), name)
            except Exception:
                return None
        return found if isinstance(found, type) else None
