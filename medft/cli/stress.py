"""stress-test a run, bundle or adapter: Dice under noise, bias field, motion, contrast, resolution

Predicts every labelled case of the manifest (or of one split) unperturbed (level 0, as medft evaluate does) and
under each perturbation at severity levels 1 to 5, each case, perturbation and level seeded (a rerun and a second
model meet the same perturbed images). Writes stress.csv (per case, perturbation, level and class: Dice,
sensitivity, specificity, HD95), stress.json (means with 95% bootstrap intervals, ROOD-MRI's severity-weighted
overall and degradation scores, weakest perturbation first) and stress.html (the curves and the most affected
case of each perturbation). MR perturbations: noise, bias_field, contrast_compression, contrast_expansion, motion,
ghosting, smoothing, thick_slices, affine, elastic; CT: noise_hu, hu_offset, smoothing, thick_slices, affine,
elastic. The parameters of each level are in stress.json and docs/stress-tests.md.

example:
  medft stress runs/demo/train --manifest data_manifests/hippocampus_sample.csv --split test --out runs/demo/stress
  medft stress runs/demo/bundle --manifest data_manifests/hippocampus_sample.csv --split test --out runs/demo/stress_ft \\
      --perturbations noise motion --levels 1 3 5 --compare runs/demo/stress
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, add_inference_options, add_model, console_logging, whole_number


def add_to(commands) -> None:
    command = add_command(commands, "stress", __doc__, run)
    add_model(command)
    command.add_argument("--manifest", type=Path, required=True, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    command.add_argument("--out", type=Path, required=True, help="stress folder to write")
    command.add_argument("--split", default=None, help="stress-test one split (train, val, test); default: all cases")
    command.add_argument("--perturbations", nargs="+", default=None, metavar="NAME",
                         help="the perturbations to run (default: all of the modality's)")
    command.add_argument("--levels", nargs="+", type=whole_number("a level from 1 to 5", 1, 5), default=None,
                         metavar="N", help="severity levels from 1 to 5 (default: all; level 0 always runs)")
    command.add_argument("--modality", choices=("auto", "mr", "ct"), default="auto",
                         help="which perturbations make sense (default auto: ct when the model's preprocessing "
                              "clips a fixed HU window, else mr)")
    command.add_argument("--seed", type=whole_number("a whole number from 0", 0), default=0,
                         help="base of every case's random draws (default 0); a comparison needs the same")
    command.add_argument("--workers", type=whole_number("a whole number from 0", 0), default=None,
                         help="loader processes that perturb and preprocess (default: the CPUs less one, at most 4; "
                              "0: in the main process)")
    add_inference_options(command)
    command.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="a run's best checkpoint (default) or its last one; run folders only")
    command.add_argument("--compare", type=Path, default=None, metavar="OTHER_STRESS_DIR",
                         help="another model's stress folder, run with the same perturbations, levels and seed: "
                              "paired differences on the same perturbed images, both curves on one plot")


def run(model: Path, manifest: Path, out: Path, split: str | None = None, perturbations: list[str] | None = None,
        levels: list[int] | None = None, modality: str = "auto", seed: int = 0, workers: int | None = None,
        tta: bool = False, largest_component: bool = False, checkpoint: str = "best", compare: Path | None = None,
        parent: str | None = None) -> int:
    """``medft.stress.run.stress``, its outcome printed."""
    console_logging()
    from medft.stress.run import stress

    result = stress(model, manifest, out, perturbations=perturbations, levels=levels, modality=modality, split=split,
                    seed=seed, workers=workers, tta=tta, largest_component=largest_component, checkpoint=checkpoint,
                    compare=compare, parent=parent)
    print_ranking(result.stress)
    print(f"stress test written to {result.folder}: stress.csv, stress.json, {result.page.name}")
    return 0


def print_ranking(stress: dict) -> None:
    """Each perturbation's mean Dice at level 0 and at each level, and its degradation score, weakest first."""
    levels = [0, *stress["levels"]]
    print(f"  {'mean Dice':<22}" + "".join(f"{'level ' + str(level):>9}" for level in levels) + "  degradation [95% CI]")
    for name in stress["ranking"]:
        result = stress["results"][name]
        means = [result["levels"][str(level)]["mean_foreground"]["dice"]["mean"] for level in levels]
        degradation = result["degradation"]
        low, high = degradation["ci95"]
        interval = f" [{low:+.3f}, {high:+.3f}]" if low is not None else ""
        score = "n/a" if degradation["mean"] is None else f"{degradation['mean']:+.3f}{interval}"
        print(f"  {name:<22}" + "".join(f"{'n/a' if m is None else f'{m:.3f}':>9}" for m in means) + f"  {score}")
    comparison = stress.get("comparison")
    if comparison:
        print(f"  compared with {comparison['label_a']} on {comparison['n_common_cases']} common cases: "
              "paired differences in stress.json and stress.html")
