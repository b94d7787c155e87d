"""A fuzzer over NIfTI headers and gzip streams: every damaged variant of a small case is either refused with a
one-line message naming the file, or loads exactly as its original; never a traceback, never other voxels in silence.

The variants (a fixed seed): bytes of the gzip stream changed (its header, the compressed data, the checksum and
length), the stream cut short or followed by garbage; bytes of the NIfTI header changed, one at a time, anywhere but
in the two fields that legitimately change the values (scl_slope, scl_inter: a scaled image is a valid image); the
fields that say where and how large the voxels are (sizeof_hdr, dim, datatype, bitpix, vox_offset, the extension
flag, magic) set to random values. The image is mutated and loaded with its intact label, as ``train`` and
``evaluate`` load a case: an image that no longer lies on its label's grid is refused there.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medft.data import loading
from medft.data.loading import AFFINE_TOLERANCE_MM, LoadCased
from medft.errors import DataError
from tests.conftest import sample_case, write_csv

SEED = 33
CLASSES = {"0": "background", "1": "anterior", "2": "posterior"}
_SCALING = range(112, 120)  # scl_slope, scl_inter
_FIELDS = {  # offset, struct format: what locates and sizes the voxels
    "sizeof_hdr": (0, "<i"), "dim0": (40, "<h"), "dim1": (42, "<h"), "dim2": (44, "<h"), "dim3": (46, "<h"),
    "dim4": (48, "<h"), "datatype": (70, "<h"), "bitpix": (72, "<h"), "vox_offset": (108, "<f"),
    "extension": (348, "<i"), "magic": (344, "<i"),
}


def _small_case(folder) -> tuple[bytes, object]:
    """A uint8 image (a 1-byte type: no single damaged byte of datatype names another 1-byte type) and its label."""
    image_path, label_path = sample_case("hippocampus_334")
    image = nib.load(image_path)
    voxels = np.clip(np.asarray(image.dataobj), 0, 255).astype(np.uint8)
    out = nib.Nifti1Image(voxels, image.affine)
    out.set_qform(image.affine, code=1)
    raw = out.to_bytes()
    assert len(raw) == 352 + voxels.size
    return raw, label_path


def _variants(raw: bytes) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(SEED)
    packed = gzip.compress(raw, mtime=0)
    variants = []
    for _ in range(100):  # one byte of the gzip stream changed
        at = int(rng.integers(0, len(packed)))
        changed = bytearray(packed)
        changed[at] = (changed[at] + int(rng.integers(1, 256))) % 256
        variants.append((f"gzip byte {at} of {len(packed)}", bytes(changed)))
    for _ in range(40):  # cut short
        at = int(rng.integers(0, len(packed)))
        variants.append((f"gzip cut at {at}", packed[:at]))
    for _ in range(10):  # garbage after the stream
        variants.append(("gzip + garbage", packed + rng.bytes(int(rng.integers(1, 64)))))
    for _ in range(100):  # one byte of the NIfTI header changed
        at = int(rng.choice([i for i in range(352) if i not in _SCALING]))
        changed = bytearray(raw)
        changed[at] = (changed[at] + int(rng.integers(1, 256))) % 256
        variants.append((f"header byte {at}", gzip.compress(bytes(changed), mtime=0)))
    for _ in range(100):  # a field that locates or sizes the voxels set to a random value
        name = str(rng.choice(list(_FIELDS)))
        at, form = _FIELDS[name]
        value = float(rng.uniform(-1000, 1000)) if form == "<f" else int(rng.integers(-2**15, 2**15))
        if name == "vox_offset" and rng.random() < 0.5:
            value = float(rng.choice([0, 1, 344, 348, 351, 352.5, 353, 10**9]))
        changed = bytearray(raw)
        changed[at:at + struct.calcsize(form)] = struct.pack(form, value)
        variants.append((f"{name} = {value}", gzip.compress(bytes(changed), mtime=0)))
    return variants


def test_every_damaged_variant_is_refused_in_one_line_or_loads_as_its_original(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "_SOUND_GZIP", {})  # every variant is checked, whatever an earlier test loaded
    raw, label = _small_case(tmp_path)
    original = tmp_path / "original.nii.gz"
    original.write_bytes(gzip.compress(raw))
    load = LoadCased()
    expected = load({"case_id": "original", "image": [str(original)], "label": str(label)})["image"]
    refused, same = 0, 0
    for index, (what, data) in enumerate(_variants(raw)):
        path = tmp_path / f"variant_{index}.nii.gz"
        path.write_bytes(data)
        try:
            image = load({"case_id": f"v{index}", "image": [str(path)], "label": str(label)})["image"]
        except DataError as exc:
            named = str(path) in str(exc) or f"{label}: label and image affines differ" in str(exc)  # off its label's grid
            assert "\n" not in str(exc) and named and "Fix: " in str(exc), (what, str(exc))
            refused += 1
            continue
        assert image.shape == expected.shape and np.array_equal(image.numpy(), expected.numpy()), f"{what}: other voxels"
        assert np.abs(np.asarray(image.affine) - np.asarray(expected.affine)).max() <= AFFINE_TOLERANCE_MM, what
        same += 1
    assert refused > 150 and same > 20, (refused, same)  # both outcomes are exercised


@pytest.mark.parametrize("offset", [0, 100, 351.0, 352.5])
def test_a_single_file_vox_offset_inside_the_header_is_named(tmp_path, offset):
    raw, label = _small_case(tmp_path)
    changed = bytearray(raw)
    changed[108:112] = struct.pack("<f", offset)
    path = tmp_path / "shifted.nii.gz"
    path.write_bytes(gzip.compress(bytes(changed)))
    with pytest.raises(DataError, match=rf"its vox_offset \({offset:g}\) is (below 352|no whole number)"):
        LoadCased()({"case_id": "a", "image": [str(path)], "label": str(label)})
    plain = tmp_path / "shifted.nii"
    plain.write_bytes(bytes(changed))
    with pytest.raises(DataError, match="vox_offset"):
        loading.load_label(plain)


def test_a_vox_offset_past_the_end_of_the_file_is_named(tmp_path):
    raw, _ = _small_case(tmp_path)
    changed = bytearray(raw)
    changed[108:112] = struct.pack("<f", len(raw) + 16)
    path = tmp_path / "past.nii"
    path.write_bytes(bytes(changed))
    with pytest.raises(DataError, match=rf"its vox_offset \({len(raw) + 16}\) lies past the end of the file \({len(raw)} bytes\)"):
        loading.load_image([path])


def test_damaged_compressed_data_with_a_readable_header_is_refused(tmp_path, monkeypatch):
    """A changed byte late in the deflate stream leaves the header and most voxels readable: nibabel alone loads it
    with wrong values; the gzip checksum, read at the end, tells."""
    monkeypatch.setattr(loading, "_SOUND_GZIP", {})
    raw, label = _small_case(tmp_path)
    packed = bytearray(gzip.compress(raw, compresslevel=0, mtime=0))  # stored blocks: a changed byte stays one byte
    packed[-100] ^= 0x01
    path = tmp_path / "damaged.nii.gz"
    path.write_bytes(bytes(packed))
    read_by_nibabel = np.asarray(nib.load(path).dataobj)  # no error: nibabel never reaches the checksum
    original = np.frombuffer(raw[352:], np.uint8).reshape(read_by_nibabel.shape, order="F")
    assert np.count_nonzero(read_by_nibabel != original) == 1
    with pytest.raises(DataError, match=r"its compressed data is damaged \(gzip: BadGzipFile: CRC check failed"):
        LoadCased()({"case_id": "a", "image": [str(path)], "label": str(label)})


def _damaged_copies(folder) -> dict[str, Path]:
    """A sample image with vox_offset 0 (read as written, shifted by 352 bytes) and one whose compressed data is
    damaged past its header (nibabel loads it with other values)."""
    image_path, _ = sample_case("hippocampus_334")
    raw = bytearray(gzip.decompress(image_path.read_bytes()))
    raw[108:112] = struct.pack("<f", 0)
    shifted = folder / "shifted.nii.gz"
    shifted.write_bytes(gzip.compress(bytes(raw)))
    raw[108:112] = struct.pack("<f", 352)
    packed = bytearray(gzip.compress(bytes(raw), compresslevel=0, mtime=0))
    packed[-100] ^= 0x01
    damaged = folder / "damaged.nii.gz"
    damaged.write_bytes(bytes(packed))
    return {"shifted": shifted, "damaged": damaged}


def test_check_data_names_a_zero_vox_offset_and_damaged_compressed_data(tmp_path, monkeypatch):
    from medft.data.checks import check_manifest

    monkeypatch.setattr(loading, "_SOUND_GZIP", {})
    copies = _damaged_copies(tmp_path)
    label = sample_case("hippocampus_334")[1]
    rows = [{"case_id": name, "image": path, "label": label, "split": "train"} for name, path in copies.items()]
    problems = check_manifest(write_csv(tmp_path / "m.csv", rows, classes=CLASSES), workers=1, progress=False)
    errors = {p.case_id: p for p in problems if p.severity == "error"}
    assert set(errors) == {"shifted", "damaged"}
    assert "its vox_offset (0) is below 352" in errors["shifted"].problem and errors["shifted"].file == copies["shifted"]
    assert "its compressed data is damaged (gzip: BadGzipFile: CRC check failed" in errors["damaged"].problem
    assert errors["damaged"].fix.startswith("the compressed data is damaged: copy the file again")


def test_evaluate_marks_damaged_cases_failed_and_scores_the_others(tmp_path, monkeypatch):
    from medft.evaluate.run import evaluate
    from tests.stress.helpers import DEMO_BUNDLE, whole_hippocampus_manifest

    monkeypatch.setattr(loading, "_SOUND_GZIP", {})
    manifest = whole_hippocampus_manifest(tmp_path / "data", cases=("hippocampus_334", "hippocampus_340"))
    copies = _damaged_copies(tmp_path)
    text = manifest.read_text().replace(str(sample_case("hippocampus_334")[0]), str(copies["damaged"]))
    manifest.write_text(text)
    result = evaluate(DEMO_BUNDLE, manifest, tmp_path / "eval")
    status = {case.case_id: (str(case.status), case.message) for case in result.evaluation.cases}
    assert status["hippocampus_340"] == ("ok", None)
    assert status["hippocampus_334"][0] == "failed" and "its compressed data is damaged" in status["hippocampus_334"][1]
