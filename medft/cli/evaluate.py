"""evaluate a run, bundle or adapter on labelled held-out data

Predicts every case of the manifest (or of one split) with a sliding window, writes the
predictions in the geometry of the input images, and computes per case and class Dice,
sensitivity, specificity, HD95 and NSD (mm), a summary with 95% bootstrap intervals overall
and per site, and report.html. Cases without a label are predicted only.

Labels may be NIfTI label maps, DICOM SEG or RTSTRUCT files (segments matched to the classes by
the names in the manifest's classes file). With --dicom-seg, the prediction of each DICOM series is
also written as predictions/<case_id>.seg.dcm.

example:
  medft evaluate runs/demo/train --manifest data_manifests/hippocampus_sample.csv --split test --out runs/demo/eval
  medft evaluate runs/demo/train --manifest hospital/dicom_cases.csv --out runs/dicom_eval --dicom-seg
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, add_dicom_seg_option, add_inference_options, add_model, console_logging


def add_to(commands) -> None:
    command = add_command(commands, "evaluate", __doc__, run)
    add_model(command)
    command.add_argument("--manifest", type=Path, required=True, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    command.add_argument("--out", type=Path, required=True, help="evaluation folder to write")
    command.add_argument("--split", default=None, help="evaluate one split (train, val, test); default: all cases")
    add_inference_options(command)
    command.add_argument("--checkpoint", choices=("best", "last"), default="best",
                         help="a run's best checkpoint (picked on its validation split; default) or its last one "
                              "(the final model: an unbiased score on that validation split); run folders only: "
                              "a bundle has one set of weights")
    command.add_argument("--compare", type=Path, default=None, metavar="OTHER_EVAL_DIR",
                         help="also write comparison.html: this evaluation against another one (paired on "
                              "common cases, unpaired when they share none, e.g. two sites)")
    add_dicom_seg_option(command)


def run(model: Path, manifest: Path, out: Path, split: str | None = None, tta: bool = False,
        largest_component: bool = False, checkpoint: str = "best", compare: Path | None = None,
        parent: str | None = None, dicom_seg: bool = False) -> int:
    """``medft.evaluate.run.evaluate``, its outcome printed."""
    console_logging()
    from medft.evaluate.run import evaluate

    result = evaluate(model, manifest, out, split=split, tta=tta, largest_component=largest_component,
                      checkpoint=checkpoint, compare=compare, parent=parent, dicom_seg=dicom_seg)
    print(f"evaluation written to {result.folder}: per_case.csv, summary.json, predictions/, report.html")
    print_dice(result.summary)
    failed = result.failed_cases
    if failed:
        print(f"  {len(failed)} of {len(result.evaluation.cases)} cases failed and were not evaluated: the reasons are "
              "above, in evaluation.json and in report.html")
    if result.comparison is not None:
        print(f"comparison written to {result.comparison_page}")
        print_comparison(result.comparison)
    return 0


def print_dice(summary: dict) -> None:
    """Each class's mean Dice over the cases, with its 95% interval, from an evaluation's summary."""
    if not summary["n_cases"]:
        print("  no case with a label: predictions only, no Dice")
        return
    for name in summary["classes"]:
        dice = summary["overall"][name]["dice"]
        if dice["mean"] is None:
            print(f"  {name:<16} Dice undefined: the class is in no case's label or prediction")
            continue
        low, high = dice["ci95"]
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        absent = f"; {dice['n_nan']} without the class in label or prediction, left out" if dice["n_nan"] else ""
        print(f"  {name:<16} Dice {dice['mean']:.3f}{interval} over {dice['n']} cases{absent}")


def print_comparison(comparison: dict) -> None:
    """Each class's mean Dice under A and B and the difference B - A with its 95% interval (comparison.json)."""
    from medft.evaluate.html import MEAN_LABEL
    from medft.evaluate.summary import MEAN_FOREGROUND

    design = comparison["design"]
    print(f"  A: {comparison['a']['label']}\n  B: {comparison['b']['label']}\n"
          f"  {'':<16} {'A':>6} {'B':>6}  B - A ({design}, 95% interval)")

    def number(value: float | None, sign: str = "") -> str:
        return "n/a" if value is None else f"{value:{sign}.3f}"

    for key, entry in comparison["dice"].items():
        diff = entry[design]
        low, high = diff["ci95"]
        interval = f" [{number(low, '+')}, {number(high, '+')}]" if low is not None else ""
        print(f"  {MEAN_LABEL if key == MEAN_FOREGROUND else key:<16} {number(entry['a']['mean']):>6} "
              f"{number(entry['b']['mean']):>6}  {number(diff['mean_diff'], '+')}{interval}")
