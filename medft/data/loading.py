"""Load a case through MONAI: NIfTI with nibabel, DICOM series with pydicom, both brought to RAS.

The loaded tensors are MONAI MetaTensors shaped (channels, x, y, z) in RAS orientation with their
voxel spacing kept. Their metadata keeps the source geometry (``original_affine`` and
``spatial_shape`` of the file as stored) and the applied reorientation, so that predictions can
be written back in the geometry of the input.
"""
from __future__ import annotations

import contextlib
import functools
import gzip
import itertools
import logging
import os
import re
import warnings
import zlib
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import torch
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage, MapTransform, Orientation
from monai.utils import MetaKeys
from pydicom.misc import is_dicom

from medft.data.dicom import DicomSeriesReader, SeriesGrid, describe_exception, scan_folder, select_series, series_grid
from medft.data.dicom_labels import dicom_label_kind, read_dicom_label
from medft.errors import DataError, Problem

log = logging.getLogger("medft.data")

# Image and label must agree voxel for voxel: affine entries (mm) may differ by at most this.
AFFINE_TOLERANCE_MM = 1e-3
# A NIfTI's qform and sform may place a voxel this far apart (mm) before check-data warns.
QFORM_SFORM_TOLERANCE_MM = 0.01

# Axis letters of the RAS+ world frame that NIfTI, nibabel and MONAI's readers use.
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_TO_RAS = Orientation(axcodes="RAS", labels=_RAS_LABELS)
_RAS_ORNT = nib.orientations.axcodes2ornt("RAS", labels=_RAS_LABELS)
_READ_FIX = "the file looks damaged or is not a NIfTI image: copy it again from its source or re-export it"
_DICOM_READ_FIX = (
    "run medft check-data on it for details; export the series again, or convert it to NIfTI "
    "(e.g. with dcm2niix) and list the .nii.gz instead"
)
_SLICE_FIX = "give the folder that holds the whole series (all its slices, one series per folder) as the image"
_LABEL_FIX = (
    "give a NIfTI label map (.nii or .nii.gz) on the image's voxel grid, or a DICOM SEG or RTSTRUCT file of the "
    "image's series"
)
_AFFINE_FIX = (
    "give the image a valid affine (sform or qform: voxel spacing and orientation), e.g. re-export it from its source"
)
# Deflate turns 2 bits into at most 258 bytes: a gzip file expands at most this many times.
_DEFLATE_MAX_EXPANSION = 1032
# nibabel's message for a file shorter than its header declares (formats other than NIfTI)
_SHORT_READ = re.compile(r"Expected (\d+) bytes, got (\d+) bytes")


def load_image(paths: list[str] | tuple[Path, ...], series_uid: str | None = None, reorient: bool = True) -> MetaTensor:
    """An image as a (C, x, y, z) MetaTensor in RAS (as stored without ``reorient``): one NIfTI per channel,
    or one DICOM series folder. Images with NaN or infinite voxels are refused (DataError)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        image = _read(paths[0], DicomSeriesReader(series_uid=series_uid))
    else:
        for path in paths:
            if _is_dicom_file(path):
                raise DataError("is one DICOM file (a single slice), not a 3D image", _SLICE_FIX, file=path)
        channels = [_read(p) for p in paths]
        for path, channel in zip(paths[1:], channels[1:], strict=True):
            mismatch = geometry_mismatch(channels[0], channel, "channel")
            if mismatch:
                raise DataError(
                    f"{mismatch} ({paths[0].name}, the first channel)",
                    "give channels of one case on the same voxel grid (resample them together)",
                    file=path,
                )
        image = channels[0] if len(channels) == 1 else torch.cat(channels, dim=0)
    _require_3d(image, paths[0])
    _require_placeable(image, paths[0])
    _require_finite(image, paths[0])
    return to_ras(image) if reorient else image


def read_volume(path: str | Path, label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One NIfTI file as an (x, y, z) array in RAS and its 4 x 4 RAS affine, for drawing slices of it: the
    voxels of ``load_image([path])[0]`` (``label=False``) or of ``load_label(path)[0]`` (``label=True``).

    The values are the same; the array keeps the file's data type and memory order (NIfTI stores x fastest),
    and the reorientation to RAS is made of numpy views (flips and axis swaps), where the loaders make a
    float32 tensor in C order (for a 512 x 512 x 300 CT, seconds of transposing copies). The same checks and
    errors as the loaders: a DICOM file, a damaged or short file, other than 3D, an affine that places no
    axes; an image with NaN or infinite voxels, a label map with several channels. An image in several files
    or a DICOM series folder is for ``load_image``.
    """
    path = Path(path)
    if label:
        _require_label_file(path)
    elif _is_dicom_file(path):
        raise DataError("is one DICOM file (a single slice), not a 3D image", _SLICE_FIX, file=path)
    reader = NibabelReader(mmap=False)  # the voxels in memory: a file rewritten in place cannot pull them away
    with _read_errors(path, _READ_FIX):
        _require_complete_nifti(path)
        data, meta = reader.get_data(reader.read(str(path)))
    data = np.asarray(data)
    # As LoadImage(ensure_channel_first=True): axes beyond the header's spatial ones are channels, last.
    channels_last = data.ndim != len(meta[MetaKeys.SPATIAL_SHAPE])
    dimensions = data.ndim if channels_last else data.ndim + 1
    if dimensions != 4:
        raise DataError(*_not_3d(dimensions), file=path)
    affine = np.asarray(meta[MetaKeys.AFFINE], dtype=np.float64)
    _require_placeable_affine(affine, path)
    if label and channels_last and data.shape[-1] != 1:
        raise DataError(*_label_channels(data.shape[-1]), file=path)
    if not label and data.dtype.kind in "fc":
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            raise DataError(*_not_finite(bad), file=path)
    volume = data[..., 0] if channels_last else data
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS_ORNT)
    ras = nib.orientations.apply_orientation(volume, ornt)  # np.flip and transpose: views
    return ras, affine @ nib.orientations.inv_ornt_aff(ornt, volume.shape)


def _require_finite(image: MetaTensor, path: Path) -> None:
    """NaN or infinite voxels would turn the normalisation, the loss and the prediction to NaN."""
    bad = int((~torch.isfinite(image)).sum())
    if bad:
        raise DataError(*_not_finite(bad), file=path)


def _not_finite(bad: int) -> tuple[str, str]:
    return f"{bad} voxel(s) of the image are NaN or infinite", "re-export the image, or replace the non-finite voxels"


def _not_3d(dimensions: int) -> tuple[str, str]:
    return (f"has {dimensions - 1} spatial dimensions after adding the channel",
            "give 3D volumes (x, y, z), or 4D with channels last")


def _label_channels(channels: int) -> tuple[str, str]:
    return f"the label map has {channels} channels", "give one 3D label map with one integer class value per voxel"


def load_label(path: str | Path, reorient: bool = True, series: DicomSource | None = None,
               segments: Mapping[int, Sequence[str]] | None = None, warnings: list[Problem] | None = None) -> MetaTensor:
    """A label map as a (1, x, y, z) MetaTensor in RAS (as stored without ``reorient``), values as stored (float32).

    A DICOM SEG or RTSTRUCT file becomes the label map of the classes in ``segments`` (class -> the names its
    segments may carry: ``Manifest.segment_names``) on the grid of the image's DICOM ``series``; its warnings
    (segments that name no class) go to ``warnings`` when given, else to the log, once per file and process."""
    path = Path(path)
    kind = dicom_label_kind(path) if path.is_file() else None
    if kind:
        return _dicom_label(path, kind, series, segments, reorient, warnings)
    _require_label_file(path)
    label = _read(path)
    _require_3d(label, path)
    _require_placeable(label, path)
    if label.shape[0] != 1:
        raise DataError(*_label_channels(label.shape[0]), file=path)
    return to_ras(label) if reorient else label


class DicomSource(NamedTuple):
    """The DICOM series of a case's image: its folder and, when the folder holds several, its SeriesInstanceUID."""

    folder: Path
    series_uid: str | None = None


def dicom_source(image: Sequence[str | Path], series_uid: str | None = None) -> DicomSource | None:
    """The DICOM series of an image given as the manifest gives it (one folder), or None for NIfTI files."""
    paths = [Path(p) for p in image]
    return DicomSource(paths[0], series_uid) if len(paths) == 1 and paths[0].is_dir() else None


def case_series(series: DicomSource) -> SeriesGrid:
    """The grid of a case's DICOM series (headers only); DataError as loading the image would raise it."""
    scan = scan_folder(series.folder)
    return series_grid(select_series(scan, series.series_uid))


def _dicom_label(path: Path, kind: str, series: DicomSource | None, segments: Mapping[int, Sequence[str]] | None,
                 reorient: bool, warnings: list[Problem] | None) -> MetaTensor:
    """A DICOM SEG or RTSTRUCT as a label map on the grid of ``series`` (``load_label``)."""
    if series is None:
        raise DataError(
            f"is a DICOM {kind}, which medft places on the DICOM series it was made on, and the case's image is no "
            "DICOM series folder",
            "list the folder of the series the segmentation was made on as the case's image, or give the label as a "
            "NIfTI label map on the image's grid",
            file=path,
        )
    if not segments:
        raise DataError(
            f"is a DICOM {kind}: its segments are matched to the classes by name, and the manifest declares no classes",
            'declare the classes with the names the segments carry ("aliases" for other names) in the .classes.json '
            'beside a CSV manifest, or the "labels" of a dataset.json',
            file=path,
        )
    grid = case_series(series)
    labels, found = read_dicom_label(path, grid, segments)
    if warnings is not None:
        warnings += found
    elif path not in _WARNED:
        _WARNED.add(path)
        for warning in found:
            log.warning("%s", warning)
    meta = {"affine": grid.affine, "original_affine": grid.affine.copy(), "spatial_shape": np.asarray(grid.shape),
            "space": "RAS", "filename_or_obj": str(path)}
    label = MetaTensor(torch.from_numpy(labels.astype(np.float32))[None], meta=meta)
    return to_ras(label) if reorient else label


_WARNED: set[Path] = set()  # DICOM label files whose warnings this process logged: a label is read every epoch


def _require_label_file(path: Path) -> None:
    if path.is_dir() or _is_dicom_file(path):
        what = "a folder" if path.is_dir() else "a DICOM file"
        raise DataError(f"is {what}, but a label must be a NIfTI label map, a DICOM SEG or an RTSTRUCT", _LABEL_FIX,
                        file=path)


def _is_dicom_file(path: Path) -> bool:
    """A file named .dcm, or one with the DICOM Part-10 header ('DICM' after the preamble)."""
    return path.is_file() and (path.suffix.lower() == ".dcm" or is_dicom(path))


def to_ras(tensor: MetaTensor) -> MetaTensor:
    return _TO_RAS(tensor)


def to_native(tensor: MetaTensor) -> np.ndarray:
    """Voxels of a (C, x, y, z) RAS tensor in the axis order of its source file (``original_affine``).

    Predictions pass through here to be written in the geometry of the input image.
    """
    native = nib.orientations.io_orientation(np.asarray(tensor.meta["original_affine"]))
    ras = nib.orientations.io_orientation(np.asarray(tensor.affine))
    transform = nib.orientations.ornt_transform(ras, native)
    array = np.asarray(tensor.detach().cpu())
    return np.stack([nib.orientations.apply_orientation(channel, transform) for channel in array])


def geometry_mismatch(image: MetaTensor, other: MetaTensor, name: str = "label") -> str | None:
    """Why `other` (a label, or another channel) is not on the image's voxel grid, or None when it is."""
    return grid_mismatch((image.shape[1:], image.affine), (other.shape[1:], other.affine), name)


def grid_mismatch(image: tuple, other: tuple, name: str = "label") -> str | None:
    """``geometry_mismatch`` of two voxel grids given as (spatial shape, affine), as ``read_volume`` gives them."""
    (image_shape, image_affine), (other_shape, other_affine) = image, other
    if tuple(image_shape) != tuple(other_shape):
        return f"{name} shape {tuple(other_shape)} differs from image shape {tuple(image_shape)}"
    image_affine, other_affine = (np.asarray(a, dtype=np.float64) for a in (image_affine, other_affine))
    diff = float(np.abs(image_affine - other_affine).max())
    if diff > AFFINE_TOLERANCE_MM:
        return (
            f"{name} and image affines differ by up to {diff:.4g} mm (tolerance {AFFINE_TOLERANCE_MM} mm): "
            f"{name} spacing {_spacing(other_affine)} origin {_origin(other_affine)}, image spacing "
            f"{_spacing(image_affine)} origin {_origin(image_affine)}"
        )
    return None


def qform_sform_problem(path: Path) -> Problem | None:
    """A warning when a NIfTI's qform and sform are both set and place its voxels differently: medft
    (as nibabel and MONAI) uses the sform, ITK-SNAP and some FSL tools the qform."""
    image = nib.load(path)
    header = image.header
    if not isinstance(header, nib.Nifti1Header) or not (header["qform_code"] > 0 and header["sform_code"] > 0):
        return None
    qform, sform = header.get_qform(), header.get_sform()
    corners = np.array([[*corner, 1] for corner in itertools.product(*[(0, n - 1) for n in image.shape[:3]])])
    apart = float(np.linalg.norm(corners @ (qform - sform)[:3].T, axis=1).max())
    if apart <= QFORM_SFORM_TOLERANCE_MM:
        return None
    lengths = np.linalg.norm(qform[:3, :3], axis=0) * np.linalg.norm(sform[:3, :3], axis=0)
    cosines = np.sum(qform[:3, :3] * sform[:3, :3], axis=0) / np.maximum(lengths, 1e-12)
    turned = float(np.degrees(np.arccos(np.clip(cosines, -1, 1))).max())
    return Problem(
        f"its qform and sform disagree: they place voxels up to {apart:.3g} mm apart, axes turned by up to "
        f"{turned:.3g} degrees; medft (as nibabel and MONAI) uses the sform, ITK-SNAP and some FSL tools the "
        "qform, so images and labels made with those tools may be misaligned",
        "rewrite the file with the right one in both, e.g. with nibabel: img = nibabel.load(path); "
        "img.set_qform(img.get_sform()); nibabel.save(img, path) (or img.set_sform(img.get_qform()) "
        "when the qform is right)",
        file=path,
        severity="warning",
    )


class LoadCased(MapTransform):
    """Load a case record (see ``Case.record``): ``image`` and, when present, ``label``, in RAS (as
    stored without ``reorient``: a bundle's own steps orient them, as MONAI's LoadImaged leaves them).
    A label given as DICOM SEG or RTSTRUCT maps its segments to classes by ``segments`` (``load_label``).

    Raises DataError naming the case and file when a file cannot be read or the label does not
    lie on the image's voxel grid.
    """

    def __init__(self, image_key: str = "image", label_key: str = "label", reorient: bool = True,
                 segments: Mapping[int, Sequence[str]] | None = None):
        super().__init__(keys=[image_key, label_key], allow_missing_keys=True)
        self.image_key, self.label_key, self.reorient = image_key, label_key, reorient
        self.segments = dict(segments or {})

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        record = dict(data)
        case_id = str(record.get("case_id", ""))
        try:
            series = dicom_source(record[self.image_key], record.get("series_uid"))
            image = load_image(record[self.image_key], record.get("series_uid"), self.reorient)
            record[self.image_key] = image
            if record.get(self.label_key):
                label = load_label(record[self.label_key], self.reorient, series, self.segments)
                mismatch = geometry_mismatch(image, label)
                if mismatch:
                    raise DataError(
                        mismatch,
                        "resample the label onto the image grid, or pair it with the right image",
                        file=record[self.label_key],
                    )
                record[self.label_key] = label
            else:
                record.pop(self.label_key, None)
        except DataError as exc:
            raise exc.with_case(case_id) from None
        return record


def _read(path: Path, reader: ImageReader | None = None) -> MetaTensor:
    """Read through MONAI's LoadImage with one reader: NIfTI by default, else the one given."""
    with _read_errors(path, _READ_FIX if reader is None else _DICOM_READ_FIX):
        if reader is None:
            _require_complete_nifti(path)
        return _loader()(str(path), reader=reader or NibabelReader())


@contextlib.contextmanager
def _read_errors(path: Path, fix: str):
    """What reading ``path`` raises, as a DataError naming the file and ``fix``; a missing file is refused first."""
    if not path.exists():
        raise DataError("file not found", "correct the path in the manifest (relative paths start at the manifest's folder)", file=path)
    try:
        yield
    except DataError:
        raise
    except Exception as exc:  # nibabel, gzip and zlib raise many types for damaged files
        short = _SHORT_READ.search(str(exc))
        problem = _truncated(int(short[1]), int(short[2])) if short else f"cannot be read ({describe_exception(exc)})"
        raise DataError(problem, fix, file=path) from None


def _require_complete_nifti(path: Path) -> None:
    """Refuse a NIfTI whose voxels would be read wrongly or not at all, before reading them: a header that
    declares more voxel data than the file holds (a damaged header may declare terabytes, which reading would try
    to allocate), a single-file ``vox_offset`` inside the header, and a .nii.gz whose compressed data is damaged.

    A .nii is measured by its length. A .nii.gz is refused at once when deflate could not expand it that far (at
    most 1032-fold); otherwise it is decompressed to its end, keeping nothing, so that gzip checks every member's
    checksum and length (nibabel reads only the bytes it needs, which never checks them). A .nii.gz found sound is
    remembered by its size, modification time and inode for the life of the process: a case loaded again (every epoch
    without ``data.cache``) is not decompressed twice over.
    """
    if not path.name.endswith((".nii", ".nii.gz")):
        return
    offset = _single_file_offset(path)
    header = nib.load(path).header  # the header only: the voxels stay on disk
    voxels_shape, dtype = header.get_data_shape(), header.get_data_dtype()
    declared = int(np.prod(voxels_shape)) * dtype.itemsize
    what = f"shape {' x '.join(str(n) for n in voxels_shape)}, {dtype}"
    needed = offset + declared  # bytes of the whole uncompressed file
    stat = path.stat()
    if path.suffix == ".nii":
        held = stat.st_size
    elif needed > _DEFLATE_MAX_EXPANSION * stat.st_size:
        raise DataError(
            f"its header declares {declared} bytes of voxel data ({what}), more than a gzip file of "
            f"{stat.st_size} bytes can hold (deflate expands at most {_DEFLATE_MAX_EXPANSION}-fold): the header is damaged",
            _READ_FIX,
            file=path,
        )
    elif _SOUND_GZIP.get(path.resolve()) == _stamp(stat):
        return
    else:
        held = _gunzipped_size(path, needed)
    if offset > held:
        raise DataError(f"its vox_offset ({offset}) lies past the end of the {'uncompressed ' if path.suffix != '.nii' else ''}"
                        f"file ({held} bytes): the voxel data would start after it", _READ_FIX, file=path)
    if held < needed:
        raise DataError(_truncated(declared, held - offset, what), _READ_FIX, file=path)
    if path.suffix != ".nii":
        _SOUND_GZIP[path.resolve()] = _stamp(stat)


_SOUND_GZIP: dict[Path, tuple[int, int, int]] = {}  # .nii.gz files read to their end, checksums right: their _stamp
_DAMAGED_GZIP_FIX = "the compressed data is damaged: copy the file again from its source, or re-export it"


def _stamp(stat: os.stat_result) -> tuple[int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _single_file_offset(path: Path) -> int:
    """``vox_offset`` of a single-file NIfTI (.nii, .nii.gz) as stored, where the voxel data starts; DataError when it
    is no whole number or lies inside the header (the standard's minimum: the header and the 4-byte extension flag,
    352 bytes for NIfTI-1, 544 for NIfTI-2): read from there, every voxel would be shifted against its label (nibabel
    refuses 1 to 351, and reads 0 from the start of the file). A header that is no NIfTI one is left to nibabel."""
    with nib.openers.ImageOpener(path) as file:
        start = file.read(4)
    nifti2 = 540 in (int.from_bytes(start, "little"), int.from_bytes(start, "big"))
    with nib.openers.ImageOpener(path) as file:
        header = (nib.Nifti2Header if nifti2 else nib.Nifti1Header).from_fileobj(file, check=False)
    if header["magic"].item() not in (b"n+1", b"n+2"):
        return int(nib.load(path).dataobj.offset)  # not a single-file NIfTI header: nibabel says what it is
    raw = float(header["vox_offset"])
    least = int(header.sizeof_hdr) + 4
    if raw.is_integer() and raw >= least:
        return int(raw)
    rule = "is no whole number" if not raw.is_integer() else f"is below {least}"
    raise DataError(
        f"its vox_offset ({raw:g}) {rule}: in a single-file NIfTI the voxel data starts after the {least - 4}-byte header "
        f"and the 4-byte extension flag, at byte {least} or later, so it would be read from inside the header, every "
        "voxel shifted",
        "the file was written by a broken converter or damaged: re-export it from its source (e.g. with nibabel, "
        "dcm2niix or SimpleITK)",
        file=path,
    )


def _gunzipped_size(path: Path, needed: int) -> int:
    """The uncompressed size of a gzip file, read to its end without keeping the data, so that gzip checks every
    member's checksum and length. A stream cut short before ``needed`` bytes counts what it holds (``_truncated``
    names it); DataError when the checksum, the length or the compressed data is wrong, or when the stream ends
    early after the voxels."""
    count = 0
    try:
        with gzip.open(path) as stream:
            while chunk := stream.read1(1 << 20):
                count += len(chunk)
    except EOFError:  # the stream ends before its end marker
        if count < needed:
            return count
        problem = "its gzip stream is cut short after the voxel data, so its checksum cannot be checked"
        raise DataError(problem, _DAMAGED_GZIP_FIX, file=path) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        problem = f"its compressed data is damaged (gzip: {describe_exception(exc)})"
        raise DataError(problem, _DAMAGED_GZIP_FIX, file=path) from None
    return count


def _truncated(declared: int, held: int, what: str = "") -> str:
    what = f" ({what})" if what else ""
    return (
        f"is truncated: its header declares {declared} bytes of voxel data{what}, the file holds {max(held, 0)} bytes"
    )


@functools.cache
def _loader() -> LoadImage:
    """One LoadImage for the process; readers are given per call (they keep per-file state).

    LoadImage builds every MONAI reader when created, and the GPU DICOM decoder's reader
    complains on machines without nvImageCodec: medft decodes DICOM with pydicom, so that
    complaint is noise and is silenced here, once.
    """
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
        return LoadImage(image_only=True, ensure_channel_first=True)


def _require_3d(tensor: MetaTensor, path: Path) -> None:
    if tensor.ndim != 4:
        raise DataError(*_not_3d(tensor.ndim), file=path)


def _require_placeable(tensor: MetaTensor, path: Path) -> None:
    _require_placeable_affine(tensor.affine, path)


def _require_placeable_affine(affine, path: Path) -> None:
    """Refuse an affine that cannot place the voxel axes in space (reorienting to RAS fails on it)."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.isfinite(axes).all():
        what = "holds NaN or infinite values"
    elif not lengths.all():
        what = "is singular (a zero column)"
    elif abs(np.linalg.det(axes)) <= 1e-6 * lengths.prod():
        what = "is singular (two voxel axes point the same way)"
    else:
        return
    raise DataError(f"the affine {what}: the voxel axes cannot be placed in space", _AFFINE_FIX, file=path)


def _spacing(affine) -> tuple[float, ...]:
    return tuple(round(float(s), 4) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def _origin(affine) -> tuple[float, ...]:
    return tuple(round(float(v), 3) for v in np.asarray(affine)[:3, 3])
