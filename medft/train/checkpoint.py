"""A run's checkpoints while it trains: when best.pt and last.pt are written, and the checks before a
resume reads last.pt. The file format is ``medft.formats.checkpoint``'s."""
from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medft.errors import MedftError
from medft.formats import checkpoint as checkpoint_file
from medft.formats.checkpoint import Checkpoint, read_checkpoint, write_checkpoint
from medft.train import distributed


class CheckpointSaver:
    """Rank 0 writes; every write is atomic (a kill leaves the previous file). After an epoch that
    improved, best.pt is written before last.pt: a kill in between redoes the epoch, saving best again."""

    def __init__(self, run_dir: Path, main: bool):
        self.folder, self.main = Path(run_dir) / checkpoint_file.FOLDER, main
        self.last, self.best = self.folder / checkpoint_file.LAST, self.folder / checkpoint_file.BEST

    def holds_run(self) -> bool:
        return self.last.exists()

    def save_epoch(self, state: Callable[[], Checkpoint], improved: bool) -> None:
        """After an epoch: best.pt when it ``improved``, then last.pt (``state`` is built on rank 0 only)."""
        if not self.main:
            return
        checkpoint = state()
        if improved:
            write_checkpoint(checkpoint, self.best)
        write_checkpoint(checkpoint, self.last)

    def save_last(self, state: Callable[[], Checkpoint]) -> None:
        if self.main:
            write_checkpoint(state(), self.last)

    def load_last(self) -> Checkpoint | None:
        """last.pt, read by every process; None when the run stopped before its first checkpoint."""
        seen = distributed.all_gather_object(self.last.is_file())
        if seen[0] and not all(seen):
            raise MedftError(
                f"{self.last}: rank 0 has it but rank(s) {[r for r, s in enumerate(seen) if not s]} cannot read it. "
                "Fix: keep the run folder on a filesystem that every machine mounts at the same path"
            )
        return read_checkpoint(self.last) if seen[0] else None

    def check_same_network(self, state: Checkpoint, network_def: dict, network_state: dict, source: str) -> None:
        """The config is the one the run started with, but the bundle it names (``source``) may have changed:
        ``network_state`` is the state_dict of the network built now (merged, with adapters)."""
        same_def = state.network_def == network_def
        shapes = {name: tuple(t.shape) for name, t in network_state.items()}
        if same_def and shapes == {name: tuple(t.shape) for name, t in state.model.items()}:
            return
        raise MedftError(
            f"{self.last}: the run started with another network than {source} builds now "
            f"({'its network_def changed' if not same_def else 'its layers differ'}), so it cannot resume. "
            "Fix: restore the bundle as it was when the run started, or start a new run with another --out"
        )


def rng_states() -> dict:
    """The random states a checkpoint keeps, so that a resumed run draws what the uninterrupted run would."""
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
