"""Damage copies of the sample DICOM slices the way real exports and anonymisers do."""
from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag
from pydicom.uid import JPEGLossless


def edit_raw(path: Path, **values: bytes) -> None:
    """Store header values byte for byte (empty, malformed numbers), past pydicom's validation."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        tag = Tag(tag_for_keyword(keyword))
        value += b" " * (len(value) % 2)
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(path)


def strip_part10_header(path: Path) -> None:
    """Rewrite a slice as a bare dataset: no 128-byte preamble, no 'DICM', no file meta information."""
    ds = pydicom.dcmread(path)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, True
    write_dataset(out, ds)
    path.write_bytes(out.getvalue())


def mark_jpeg_lossless(path: Path) -> None:
    """Declare the pixel data JPEG Lossless compressed (the stream itself is no valid JPEG)."""
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64) + b"\xff\xd9"])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.save_as(path)
