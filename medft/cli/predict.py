"""predict cases without labels

Writes one label map per input (NIfTI files or DICOM series folders) as OUT/<name>.nii.gz,
in the geometry of the input image. A file already there is refused before predicting, unless
--overwrite. With --dicom-seg, each DICOM series also gets OUT/<name>.seg.dcm, a DICOM SEG that a
PACS stores and a DICOM viewer overlays on the series.

example:
  medft predict runs/demo/train sample_data/dicom/study1/13_HCropVolume --out runs/predictions
  medft predict runs/demo/train sample_data/dicom/study1/13_HCropVolume --out runs/predictions --dicom-seg \
      --classes data_manifests/hippocampus_sample.classes.json
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, add_dicom_seg_option, add_inference_options, add_model, console_logging
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(commands, "predict", __doc__, run)
    add_model(command)
    command.add_argument("inputs", type=Path, nargs="+", help="NIfTI files or DICOM series folders")
    command.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    add_inference_options(command)
    command.add_argument("--overwrite", action="store_true",
                         help="replace prediction files already in --out (default: refuse before predicting)")
    add_dicom_seg_option(command)
    command.add_argument("--classes", type=Path, default=None, metavar="CLASSES_JSON",
                         help="with --dicom-seg: a classes file (the .classes.json form) whose codes (e.g. SNOMED CT) the "
                              "segments carry, for the classes of the same names")


def run(model: Path, inputs: list[Path], out: Path, tta: bool = False, largest_component: bool = False,
        overwrite: bool = False, parent: str | None = None, dicom_seg: bool = False, classes: Path | None = None) -> int:
    console_logging()
    from medft.evaluate.run import predict_files

    missing = [p for p in inputs if not p.exists()]
    if missing:
        raise MedftError(f"{missing[0]}: no such file or folder. Fix: give NIfTI files or DICOM series folders")
    if classes is not None and not dicom_seg:
        raise MedftError("--classes gives the codes of the DICOM SEG segments. Fix: add --dicom-seg, or leave out --classes")
    for path in predict_files(model, inputs, out, tta=tta, largest_component=largest_component, overwrite=overwrite,
                              parent=parent, dicom_seg=dicom_seg, classes=classes):
        print(path)
    return 0
