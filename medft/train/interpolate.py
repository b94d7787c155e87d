"""WiSE-FT: weight-space ensembles of a fine-tuned run and the bundle it was fine-tuned from.

For each alpha, ``interpolate_run`` writes a run folder whose weights are (1 - alpha) x the bundle's +
alpha x the run's, for each floating tensor the two share (same name and shape); a tensor the bundle has
no counterpart for (a new head, a tensor whose shape changed) and integer buffers (BatchNorm's
``num_batches_tracked``) keep the run's. alpha 0 is the bundle's body under the run's head (the bundle
itself when the run kept its classes), alpha 1 the run. Each folder is a run folder: ``medft evaluate``,
``medft predict`` and ``medft export`` take it as they take the run.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from medft.atomic_files import new_folder
from medft.bundle.reader import load_bundle
from medft.errors import MedftError
from medft.formats import checkpoint as checkpoints
from medft.formats import run as run_folder


@dataclass
class InterpolationResult:
    """What ``interpolate_run`` wrote: a run folder per alpha, and which tensors were mixed or kept."""

    folders: dict[float, Path]
    interpolated: list[str]  # mixed with the bundle's
    kept: list[str]  # the run's at every alpha: no counterpart in the bundle, or not floating point
    parent_checkpoint: Path


def check_alphas(alphas: list[float]) -> list[float]:
    """The alphas, sorted and without repeats; a MedftError for none, or one outside [0, 1]."""
    if not alphas:
        raise MedftError("--alpha: no value given. Fix: give one or more weights of the run from 0 to 1, e.g. --alpha 0.25 0.5 0.75")
    wrong = [a for a in alphas if not (isinstance(a, (int, float)) and math.isfinite(a) and 0 <= a <= 1)]
    if wrong:
        raise MedftError(f"--alpha {' '.join(f'{a:g}' for a in wrong)}: alpha is the run's weight, from 0 (the bundle's "
                         "weights) to 1 (the run's). Fix: give values from 0 to 1")
    return sorted(set(float(a) for a in alphas))


def folder_name(alpha: float) -> str:
    """``alpha_0.25``: the folder of one alpha."""
    return f"alpha_{alpha:g}"


def interpolate_state(run: dict[str, torch.Tensor], bundle: dict[str, torch.Tensor], alpha: float
                      ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """The run's state dict with each floating tensor that the bundle has by the same name and shape
    replaced by (1 - alpha) x the bundle's + alpha x the run's (in the run's dtype; alpha 0 and 1 give
    either one exactly); returns it with the names interpolated and the names kept as the run's."""
    state, interpolated, kept = {}, [], []
    for name, tensor in run.items():
        other = bundle.get(name)
        if (other is None or other.shape != tensor.shape or not tensor.is_floating_point()
                or not other.is_floating_point()):
            state[name] = tensor.clone()
            kept.append(name)
            continue
        other = other.to(dtype=tensor.dtype, device=tensor.device)
        if alpha == 0:
            mixed = other.clone()
        elif alpha == 1:
            mixed = tensor.clone()
        else:
            mixed = (1 - alpha) * other + alpha * tensor
        state[name] = mixed
        interpolated.append(name)
    return state, interpolated, kept


def interpolate_run(run_dir: str | Path, alphas: list[float], out: str | Path, checkpoint: str = "best"
                    ) -> InterpolationResult:
    """Write ``out/alpha_A`` for each alpha: the run's config and preprocessing, ``checkpoints/best.pt`` with
    the interpolated weights, ``summary.json`` (no validation Dice: the folder was not trained) and
    ``interpolation.json``. ``out`` is a new or empty folder, written whole or not at all (``new_folder``).
    ``checkpoint``: the run's best.pt (else last.pt) or its last.pt, interpolated with the bundle."""
    run_dir, out = Path(run_dir), Path(out)
    alphas = check_alphas(alphas)
    config = run_folder.read_config(run_dir)
    if not config.model.bundle:
        raise MedftError(f"{run_dir}: this run was trained from random weights (model.network_def, no model.bundle), so "
                         "there are no pretrained weights to interpolate with. Fix: give a run fine-tuned from a bundle")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedftError(f"{out} exists and is not an empty folder. Fix: give a new folder to --out")
    if checkpoint not in ("best", "last"):
        raise MedftError(f"checkpoint {checkpoint!r}: expected best or last")
    source = checkpoints.find_checkpoint(run_dir, checkpoint)
    if source is None:
        raise MedftError(f"{run_dir}: no checkpoint (checkpoints/{' or '.join(checkpoints.candidates(checkpoint))}): the "
                         f"run has not finished an epoch. Fix: train it, or give another run folder")
    parent = checkpoints.read_checkpoint(source)
    bundle = load_bundle(config.model.bundle, version=config.model.bundle_version)
    pretrained = bundle.pretrained_state_dict()
    _, interpolated, kept = interpolate_state(parent.model, pretrained, 0.0)
    if not interpolated:
        raise MedftError(f"{source}: no tensor of the run has a counterpart of the same name and shape in the weights of "
                         f"{bundle.root}: nothing to interpolate. Fix: give the run fine-tuned from that bundle (its "
                         f"config.yaml names the bundle in model.bundle)")
    early = {**parent.early_stopping, "best": -math.inf, "best_epoch": -1}  # the parent's Dice is not this model's
    folders: dict[float, Path] = {}
    with new_folder(out) as partial:
        for alpha in alphas:
            state, _, _ = interpolate_state(parent.model, pretrained, alpha)
            folder = partial / folder_name(alpha)
            (folder / checkpoints.FOLDER).mkdir(parents=True)
            for name in (run_folder.CONFIG, run_folder.PREPROCESSING, run_folder.HEAD_ADAPTATION):
                if (run_dir / name).is_file():
                    shutil.copyfile(run_dir / name, folder / name)
            child = dataclasses.replace(parent, model=state, optimizer={}, scheduler={}, scaler={}, rng={},
                                        early_stopping=early, epoch_loss=(0.0, 0), adapter=None)  # merged weights only
            checkpoints.write_checkpoint(child, folder / checkpoints.FOLDER / checkpoints.BEST)
            final = out / folder_name(alpha)
            run_folder.write_summary(folder, run_folder.TrainingSummary(best_val_dice=None, best_epoch=None,
                                                                        run_dir=str(final)))
            run_folder.write_interpolation(folder, run_folder.Interpolation(
                alpha=alpha, parent_run=str(run_dir.resolve()), parent_checkpoint=source.name,
                bundle=str(config.model.bundle), interpolated=interpolated, kept=kept))
            folders[alpha] = final
    return InterpolationResult(folders, interpolated, kept, source)
