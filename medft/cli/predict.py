"""``medft predict``: label maps for cases without labels."""
from __future__ import annotations

import argparse
from pathlib import Path

from medft.cli.common import add_command, add_inference_options, add_model, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(
        commands,
        "predict",
        "predict cases without labels",
        "Writes one label map per input (NIfTI files or DICOM series folders) as OUT/<name>.nii.gz,\n"
        "in the geometry of the input image. A file already there is refused before predicting, unless\n"
        "--overwrite.",
        "medft predict runs/demo/train sample_data/dicom/study1/13_HCropVolume --out runs/predictions",
    )
    add_model(command)
    command.add_argument("inputs", type=Path, nargs="+", help="NIfTI files or DICOM series folders")
    command.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    add_inference_options(command)
    command.add_argument("--overwrite", action="store_true",
                         help="replace prediction files already in --out (default: refuse before predicting)")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    console_logging()
    from medft.evaluate.run import predict_files

    missing = [p for p in args.inputs if not p.exists()]
    if missing:
        raise MedftError(f"{missing[0]}: no such file or folder. Fix: give NIfTI files or DICOM series folders")
    for path in predict_files(args.model, args.inputs, args.out, tta=args.tta, largest_component=args.largest_component,
                              overwrite=args.overwrite):
        print(path)
    return 0
