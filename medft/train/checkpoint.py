"""Checkpoints written atomically: a kill at any moment leaves the previous file intact."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from medft.atomic_files import atomic_write
from medft.errors import MedftError


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to ``path`` through atomic_write: a kill or a full disk leaves the previous file intact."""
    atomic_write(path, lambda file: torch.save(obj, file))


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise MedftError(f"{path}: no checkpoint here. Fix: give a run folder that has checkpoints/ (or train without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise MedftError(f"{path}: the checkpoint cannot be read ({type(exc).__name__}: {exc})") from None


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    # Only on the same number of GPUs: each epoch and step is reseeded anyway, so this is a courtesy.
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
