"""A run's checkpoints, ``checkpoints/last.pt`` (every epoch, what ``--resume`` reads) and
``checkpoints/best.pt`` (the best validation Dice): what training writes and evaluation, export and
resuming read. Written atomically: a kill at any moment leaves the previous file intact."""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch

from medft import __version__
from medft.atomic_files import atomic_write
from medft.errors import MedftError

FOLDER = "checkpoints"
LAST = "last.pt"
BEST = "best.pt"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    epoch: int  # full epochs done
    step: int  # steps done of the next epoch (a checkpoint taken mid-epoch, on a stop)
    model: dict  # the network's state_dict (with adapters: merged, medft.train.lora.merged_state_dict)
    class_names: list[str]
    network_def: dict  # the definition that builds the network
    optimizer: dict
    scheduler: dict
    scaler: dict
    early_stopping: dict
    rng: dict  # random states of python, numpy, torch (and CUDA)
    preprocessing: dict  # Preprocessing.to_dict() of what the network was trained on
    epoch_loss: tuple[float, int] = (0.0, 0)  # loss sum and steps of the epoch so far, for a mid-epoch resume
    adapter: dict | None = None  # LoRA: the adapters' tensors, to resume on the pretrained weights (None without)
    # finetune.linear_probe_epochs auto: the epoch from which everything trains, once decided (None while probing)
    linear_probe_switch: int | None = None
    medft_version: str = __version__
    format_version: int = FORMAT_VERSION


def write_checkpoint(checkpoint: Checkpoint, path: Path) -> None:
    """torch.save through atomic_write: a kill or a full disk leaves the previous file intact."""
    state = {f.name: getattr(checkpoint, f.name) for f in fields(checkpoint)}  # not asdict: it would copy every tensor
    atomic_write(path, lambda file: torch.save(state, file))


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at ``path``; a MedftError that names the file and a way out when it is missing,
    damaged (a copy cut short), not medft's or from a newer medft."""
    if not path.is_file():
        raise MedftError(f"{path}: no checkpoint here. Fix: give a run folder that has {FOLDER}/ (or train without --resume)")
    best = path.with_name(BEST)
    fix = ("Fix: restore it from a copy" + (f", or copy {BEST} over it to resume from the best epoch" if
                                            best.is_file() and best != path else "")
           + ", or start a new run with another --out")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise MedftError(f"{path}: the checkpoint cannot be read: the file is damaged (cut short, or overwritten) or "
                         f"is no PyTorch file ({type(exc).__name__}: {exc}). {fix}") from None
    required = [f.name for f in fields(Checkpoint) if f.default is MISSING]
    missing = [name for name in required if name not in state] if isinstance(state, dict) else required
    if missing:
        raise MedftError(f"{path}: not a checkpoint written by medft train (it lacks {', '.join(missing)}). {fix}")
    version = state.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise MedftError(f"{path}: checkpoint format {version}, written by medft {state.get('medft_version')}; this medft "
                         f"({__version__}) reads format {FORMAT_VERSION} and older. Fix: upgrade medft")
    known = {f.name for f in fields(Checkpoint)}
    return Checkpoint(**{k: v for k, v in state.items() if k in known})


def candidates(which: str = "best") -> tuple[str, ...]:
    """The files ``find_checkpoint`` looks for, in order: ``best.pt`` falls back to ``last.pt``."""
    return (BEST, LAST) if which == "best" else (LAST,)


def find_checkpoint(run_dir: Path, which: str = "best") -> Path | None:
    """The first of ``candidates(which)`` in the run folder's checkpoints/; None when it has none."""
    return next((p for p in (run_dir / FOLDER / name for name in candidates(which)) if p.is_file()), None)

