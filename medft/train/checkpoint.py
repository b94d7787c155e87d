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


# What --resume reads from last.pt (FineTuneRecipe.save_checkpoint writes these and more).
RESUME_KEYS = ("epoch", "step", "model", "optimizer", "scheduler", "scaler", "early_stopping", "rng")


def load_checkpoint(path: Path) -> dict:
    """A training checkpoint (``last.pt``) with everything a resume needs; a MedftError that names
    the file and a way out when it is missing, damaged (a copy cut short) or not medft's."""
    if not path.is_file():
        raise MedftError(f"{path}: no checkpoint here. Fix: give a run folder that has checkpoints/ (or train without --resume)")
    best = path.with_name("best.pt")
    fix = ("Fix: restore it from a copy" + (f", or copy {best.name} over it to resume from the best epoch" if
                                            best.is_file() and best != path else "")
           + ", or start a new run with another --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise MedftError(f"{path}: the checkpoint cannot be read: the file is damaged (cut short, or overwritten) or "
                         f"is no PyTorch file ({type(exc).__name__}: {exc}). {fix}") from None
    missing = [key for key in RESUME_KEYS if key not in state] if isinstance(state, dict) else list(RESUME_KEYS)
    if missing:
        raise MedftError(f"{path}: not a checkpoint written by medft train (it lacks {', '.join(missing)}), so the run "
                         f"cannot resume from it. {fix}")
    return state


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
