"""The check shared by the DICOM tests: no message the code shows holds a patient's name or ID."""
from __future__ import annotations

import functools
from pathlib import Path

import pydicom
import pytest

DICOM = Path(__file__).resolve().parents[2] / "sample_data" / "dicom"
FULL_STUDY = Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom" / "study1" / "12-T1post-05670"


@functools.cache
def patient_identifiers() -> list[str]:
    """PatientName (whole and each part) and PatientID from the headers of the series the tests use."""
    folders = [DICOM / "study1" / "13_HCropVolume", DICOM / "study2" / "14_HCropVolume"]
    found = set()
    for folder in folders + ([FULL_STUDY] if FULL_STUDY.is_dir() else []):
        ds = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
        name = str(ds.PatientName)
        found |= {name, str(ds.PatientID)} | {part for part in name.split("^") if len(part) >= 3}
    assert len(found) >= 4, "the test data should carry (fake) patient names and IDs"
    return sorted(found)


@pytest.fixture
def shown():
    """Texts the code under test shows to users; checked for patient identifiers after the test."""
    texts: list[str] = []
    yield texts
    for text in texts:
        for identifier in patient_identifiers():
            assert identifier.lower() not in text.lower(), f"patient identifier shown in: {text}"


def show_error(shown: list[str], excinfo: pytest.ExceptionInfo) -> str:
    """The error's message, added to what the test shows."""
    text = str(excinfo.value)
    shown += [text, repr(excinfo.value.details)]
    return text
