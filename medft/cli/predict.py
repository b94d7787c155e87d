"""predict cases without labels

Writes one label map per input (NIfTI files or DICOM series folders) as OUT/<name>.nii.gz,
in the geometry of the input image. A file already there is refused before predicting, unless
--overwrite.

example:
  medft predict runs/demo/train sample_data/dicom/study1/13_HCropVolume --out runs/predictions
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, add_inference_options, add_model, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(commands, "predict", __doc__, run)
    add_model(command)
    command.add_argument("inputs", type=Path, nargs="+", help="NIfTI files or DICOM series folders")
    command.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    add_inference_options(command)
    command.add_argument("--overwrite", action="store_true",
                         help="replace prediction files already in --out (default: refuse before predicting)")


def run(model: Path, inputs: list[Path], out: Path, tta: bool = False, largest_component: bool = False,
        overwrite: bool = False, parent: str | None = None) -> int:
    console_logging()
    from medft.evaluate.run import predict_files

    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise MedftError(f"{missing[0]}: no such file or folder. Fix: give NIfTI files or DICOM series folders")
    for path in predict_files(model, inputs, out, tta=tta, largest_component=largest_component, overwrite=overwrite,
                              parent=parent):
        print(path)
    return 0
