import gzip
import re
import shutil
import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose

from medft.data import dicom, loading
from medft.data.loading import LoadCased, load_image, load_label, to_native
from medft.errors import DataError, find_user_error
from tests.conftest import SAMPLE, copy_case, rewrite_nifti, sample_case
from tests.data.dicom_edits import edit_raw

DICOM_CROP = SAMPLE / "dicom" / "study1" / "13_HCropVolume"


def test_an_lps_copy_loads_to_the_same_ras_voxels(tmp_path):
    image_path, _ = sample_case()
    original = nib.load(image_path)
    # The same world stored right-to-left and front-to-back: voxel i becomes n-1-i on two axes.
    nx, ny, _ = original.shape
    flip = np.array([[-1, 0, 0, nx - 1], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    lps = nib.Nifti1Image(original.get_fdata(dtype=np.float32)[::-1, ::-1, :], original.affine @ flip)
    nib.save(lps, tmp_path / "lps.nii.gz")
    assert nib.aff2axcodes(lps.affine) == ("L", "P", "S")

    ras_loaded, lps_loaded = load_image([image_path]), load_image([tmp_path / "lps.nii.gz"])
    np.testing.assert_array_equal(lps_loaded.numpy(), ras_loaded.numpy())
    np.testing.assert_allclose(np.asarray(lps_loaded.affine), np.asarray(ras_loaded.affine), atol=1e-5)
    assert nib.aff2axcodes(np.asarray(lps_loaded.affine)) == ("R", "A", "S")
    # The stored geometry is kept, and undoing the reorientation gives back the voxels as stored.
    np.testing.assert_allclose(lps_loaded.meta["original_affine"], lps.affine, atol=1e-5)
    np.testing.assert_array_equal(to_native(lps_loaded)[0], lps.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(to_native(ras_loaded)[0], original.get_fdata(dtype=np.float32))


def test_spacing_is_kept_without_resampling(tmp_path):
    image_path, _ = copy_case("hippocampus_334", tmp_path)
    rewrite_nifti(image_path, affine=np.diag([2.0, 1.0, 3.0, 1.0]))
    loaded = load_image([image_path])
    assert tuple(loaded.shape) == (1, 34, 47, 36)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(loaded.affine)[:3, :3], axis=0), [2.0, 1.0, 3.0])


def test_load_cased_gives_image_and_label_on_one_grid():
    image_path, label_path = sample_case()
    record = LoadCased()({"case_id": "hippocampus_334", "image": [str(image_path)], "label": str(label_path)})
    assert tuple(record["image"].shape) == tuple(record["label"].shape) == (1, 34, 47, 36)
    assert set(np.unique(record["label"].numpy())) == {0.0, 1.0, 2.0}
    unlabelled = LoadCased()({"case_id": "u", "image": [str(image_path)], "label": None})
    assert "label" not in unlabelled


def test_load_cased_rejects_a_label_off_the_image_grid(tmp_path):
    image_path, label_path = copy_case("hippocampus_334", tmp_path)
    shifted = nib.load(label_path).affine.copy()
    shifted[0, 3] += 2.0
    rewrite_nifti(label_path, affine=shifted)
    with pytest.raises(DataError) as err:
        LoadCased()({"case_id": "c7", "image": [str(image_path)], "label": str(label_path)})
    message = str(err.value)
    assert "case c7" in message and label_path.name in message and "differ by up to 2 mm" in message


def test_unreadable_and_multichannel_labels_are_clear_errors(tmp_path):
    image_path, label_path = copy_case("hippocampus_334", tmp_path)
    data = image_path.read_bytes()
    image_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="is truncated: .* the file holds 106392 bytes.*copy it again"):
        load_image([image_path])
    two = np.stack([nib.load(label_path).get_fdata()] * 2, axis=-1)
    rewrite_nifti(label_path, data=two.astype(np.uint8))
    with pytest.raises(DataError, match="the label map has 2 channels"):
        load_label(label_path)


def _nifti_header_only(path, shape, data: int | bytes, header_class=nib.Nifti1Header) -> None:
    """A NIfTI whose header declares `shape` uint8 voxels but that holds only `data` (bytes, or that many zeros)."""
    header = header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_data_offset(len(header.binaryblock) + 4)
    data = header.binaryblock + bytes(4) + (bytes(data) if isinstance(data, int) else data)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def _refusal_and_peak_memory(call) -> tuple[DataError, int]:
    """The DataError that `call` raises, and the most memory Python held meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as err:
            call()
        return err.value, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_nii_shorter_than_its_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.nii"
    _nifti_header_only(path, (1000, 1000, 1000), 10_000)  # 1 GB declared
    error, peak = _refusal_and_peak_memory(lambda: load_image([path]))
    assert peak < 50_000_000
    assert str(error) == (
        f"ERROR {path}: is truncated: its header declares 1000000000 bytes of voxel data (shape 1000 x 1000 x 1000, "
        "uint8), the file holds 10000 bytes. Fix: the file looks damaged or is not a NIfTI image: copy it again from "
        "its source or re-export it"
    )


def test_a_nii_gz_declaring_more_than_gzip_can_hold_is_refused_before_reading(tmp_path):
    path = tmp_path / "huge.nii.gz"
    _nifti_header_only(path, (60000, 60000, 60000), 10_000, nib.Nifti2Header)  # 216 TB declared
    error, peak = _refusal_and_peak_memory(lambda: load_label(path))
    assert peak < 50_000_000
    assert str(error) == (
        f"ERROR {path}: its header declares 216000000000000 bytes of voxel data (shape 60000 x 60000 x 60000, uint8), "
        f"more than a gzip file of {path.stat().st_size} bytes can hold (deflate expands at most 1032-fold): the "
        "header is damaged. Fix: the file looks damaged or is not a NIfTI image: copy it again from its source or "
        "re-export it"
    )


def test_a_nii_gz_shorter_than_its_header_is_measured_without_keeping_its_voxels(tmp_path):
    path = tmp_path / "short.nii.gz"
    _nifti_header_only(path, (1000, 1000, 1000), np.random.default_rng(0).bytes(2_000_000))  # 1 GB declared
    error, peak = _refusal_and_peak_memory(lambda: load_image([path]))
    assert peak < 50_000_000 and "\n" not in str(error)
    assert str(error).startswith(
        f"ERROR {path}: is truncated: its header declares 1000000000 bytes of voxel data (shape 1000 x 1000 x 1000, "
        "uint8), the file holds 2000000 bytes. Fix: "
    )
    path.write_bytes(path.read_bytes()[:1_000_000])  # a gzip stream cut short: counted as far as it goes
    with pytest.raises(DataError, match="is truncated: .* the file holds 9[0-9]{5} bytes"):
        load_image([path])


def test_a_nii_gz_is_read_to_its_end_once_per_process(tmp_path, monkeypatch):
    """Every member's checksum is checked (several gzip members load as one file); a file loaded again unchanged is
    not decompressed again, a changed one is."""
    image_path, _ = sample_case()
    counted, count = [], loading._gunzipped_size
    monkeypatch.setattr(loading, "_gunzipped_size", lambda path, needed: counted.append(path) or count(path, needed))
    monkeypatch.setattr(loading, "_SOUND_GZIP", {})
    data = gzip.decompress(image_path.read_bytes())
    two_members = tmp_path / "two_members.nii.gz"
    two_members.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:-1]) + gzip.compress(data[-1:]))
    np.testing.assert_array_equal(load_image([two_members]).numpy(), load_image([image_path]).numpy())
    load_image([two_members])
    load_label(two_members)
    assert counted == [two_members, image_path]
    two_members.write_bytes(gzip.compress(data))
    load_image([two_members])
    assert counted == [two_members, image_path, two_members]


def test_a_nii_gz_compressed_as_far_as_deflate_goes_loads(tmp_path):
    """An empty label map compresses about 1027-fold: within deflate's bound of 1032, so no refusal."""
    path = tmp_path / "empty.nii.gz"
    header = nib.Nifti1Header()
    header.set_data_shape((256, 256, 240))
    header.set_data_dtype(np.uint8)
    header.set_data_offset(352)
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4 + 256 * 256 * 240), compresslevel=9))
    assert 256 * 256 * 240 / path.stat().st_size > 1000
    assert tuple(load_label(path).shape) == (1, 256, 256, 240)


def test_channels_off_each_others_grid_are_refused(tmp_path):
    first, second = copy_case("hippocampus_334", tmp_path / "a")[0], copy_case("hippocampus_335", tmp_path / "b")[0]
    rewrite_nifti(second, data=np.asanyarray(nib.load(first).dataobj), affine=nib.load(first).affine)
    assert tuple(load_image([first, second]).shape) == (2, 34, 47, 36)
    shifted = nib.load(first).affine.copy()
    shifted[1, 3] += 2
    rewrite_nifti(second, affine=shifted)
    with pytest.raises(DataError) as err:
        load_image([first, second])
    assert str(err.value).startswith(
        f"ERROR {second}: channel and image affines differ by up to 2 mm (tolerance 0.001 mm): "
    )
    assert f"({first.name}, the first channel). Fix: give channels of one case on the same voxel grid" in str(err.value)


def _singular_copy(tmp_path):
    """The sample case with its sform's third column zeroed and no qform."""
    image_path, label_path = copy_case("hippocampus_334", tmp_path)
    image = nib.load(image_path)
    header = image.header.copy()
    affine = image.affine.copy()
    affine[:3, 2] = 0
    header.set_qform(None, code=0)
    header.set_sform(affine, code=1)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj), None, header), image_path)
    return image_path, label_path


def test_a_singular_affine_is_a_clear_error_in_loading_and_in_a_pipeline(tmp_path):
    image_path, label_path = _singular_copy(tmp_path)
    expected = f"{image_path}: the affine is singular (a zero column): the voxel axes cannot be placed in space. Fix: "
    with pytest.raises(DataError, match=re.escape(expected)):
        load_image([image_path])
    shutil.copyfile(image_path, label_path)
    with pytest.raises(DataError, match="the affine is singular"):
        load_label(label_path)
    # inside a MONAI pipeline (evaluate, predict) the DataError is found behind MONAI's wrapping
    with pytest.raises(Exception) as err:
        Compose([LoadCased()])({"case_id": "c1", "image": [str(image_path)]})
    assert isinstance(find_user_error(err.value), DataError)
    assert "case c1" in str(find_user_error(err.value)) and "the affine is singular" in str(find_user_error(err.value))


def test_a_dicom_folder_that_fails_unexpectedly_gets_a_dicom_fix(tmp_path, monkeypatch):
    def damaged(series):
        raise ValueError("something pydicom did not expect\n  on two lines")

    monkeypatch.setattr(dicom, "read_series", damaged)
    with pytest.raises(DataError) as err:
        load_image([DICOM_CROP])
    text = str(err.value)
    assert text.startswith(
        f"ERROR {DICOM_CROP}: cannot be read (ValueError: something pydicom did not expect on two lines)"
    )
    assert "export the series again" in text and "NIfTI image" not in text


def test_a_dicom_series_with_zero_pixel_spacing_is_a_clear_error_in_a_pipeline(tmp_path):
    folder = tmp_path / "crop"
    shutil.copytree(DICOM_CROP, folder)
    for path in folder.iterdir():
        edit_raw(path, PixelSpacing=b"0\\0")
    with pytest.raises(Exception) as err:
        Compose([LoadCased()])({"case_id": "c2", "image": [str(folder)]})
    error = find_user_error(err.value)
    assert isinstance(error, DataError) and "case c2" in str(error) and "PixelSpacing is 0" in str(error)


# --------------------------------------------------------------------------------------------
# read_volume: the loaders' voxels without their copies (the review app)
# --------------------------------------------------------------------------------------------
def _stored_copies(tmp_path) -> dict:
    """The sample case stored in ways that load differently: axes flipped and swapped, scaled, channels, NIfTI-2."""
    image_path, label_path = sample_case()
    stored = nib.load(image_path)
    data = np.asanyarray(stored.dataobj)
    labels = np.asanyarray(nib.load(label_path).dataobj)
    nx, ny, _ = data.shape
    # voxel axes towards L, S and P: reading them to RAS takes flips and a swap of axes
    turned = np.array([[-1, 0, 0, nx - 1], [0, 0, 1, 0], [0, -1, 0, ny - 1], [0, 0, 0, 1]], dtype=float)
    files = {}

    def save(name, image):
        nib.save(image, tmp_path / name)
        files[name] = tmp_path / name

    save("ras.nii.gz", nib.Nifti1Image(data, stored.affine))
    turned_data = np.ascontiguousarray(data[::-1].transpose(0, 2, 1)[:, :, ::-1])
    save("turned.nii", nib.Nifti1Image(turned_data, stored.affine @ np.linalg.inv(turned)))
    scaled = nib.Nifti1Image(data.astype(np.int16), stored.affine)
    scaled.header.set_slope_inter(0.5, -3.0)
    save("scaled.nii.gz", scaled)
    save("channels.nii.gz", nib.Nifti1Image(np.stack([data, data[::-1]], axis=-1).astype(np.float32), stored.affine))
    save("nifti2.nii", nib.Nifti2Image(data.astype(np.float64) / 7, stored.affine))
    save("label.nii.gz", nib.Nifti1Image(labels.astype(np.uint8), stored.affine))
    save("label_turned.nii.gz", nib.Nifti1Image(np.ascontiguousarray(labels[::-1].transpose(0, 2, 1)[:, :, ::-1]),
                                                stored.affine @ np.linalg.inv(turned)))
    save("label_channel.nii.gz", nib.Nifti1Image(labels[..., None].astype(np.float32), stored.affine))
    return files


def test_read_volume_gives_the_voxels_and_affine_of_the_loaders(tmp_path):
    files = _stored_copies(tmp_path)
    assert nib.aff2axcodes(nib.load(files["turned.nii"]).affine) == ("L", "S", "P")
    for name, path in files.items():
        label = name.startswith("label")
        loaded = load_label(path) if label else load_image([path])
        volume, affine = loading.read_volume(path, label=label)
        assert volume.shape == tuple(loaded.shape[1:]), name
        np.testing.assert_array_equal(volume.astype(np.float32), loaded[0].numpy(), err_msg=name)
        np.testing.assert_array_equal(affine, np.asarray(loaded.affine, dtype=np.float64), err_msg=name)
        assert loading.grid_mismatch((volume.shape, affine), (loaded.shape[1:], loaded.affine)) is None
    # no float32 copy, no transposition: the file's type, and a view of the voxels as stored
    volume, _ = loading.read_volume(files["turned.nii"])
    assert volume.dtype == nib.load(files["turned.nii"]).get_data_dtype()
    assert not volume.flags.c_contiguous and volume.base is not None
    assert loading.read_volume(files["label.nii.gz"], label=True)[0].dtype == np.uint8
    assert loading.read_volume(files["scaled.nii.gz"])[0].dtype.kind == "f"  # scaled as nibabel scales


def test_read_volume_refuses_what_the_loaders_refuse(tmp_path):
    files = _stored_copies(tmp_path)
    image_path, _ = sample_case()
    affine = nib.load(image_path).affine
    cases = {
        "flat.nii.gz": (nib.Nifti1Image(np.zeros((4, 5), dtype=np.int16), affine), False),
        "nan.nii.gz": (nib.Nifti1Image(np.full((4, 5, 6), np.nan, dtype=np.float32), affine), False),
        "two_labels.nii.gz": (nib.Nifti1Image(np.zeros((4, 5, 6, 2), dtype=np.uint8), affine), True),
    }
    for name, (image, _) in cases.items():
        nib.save(image, tmp_path / name)
    singular, _ = _singular_copy(tmp_path / "singular")
    short = tmp_path / "short.nii.gz"
    data = files["ras.nii.gz"].read_bytes()
    short.write_bytes(data[: len(data) // 2])
    checks = [(tmp_path / name, label) for name, (_, label) in cases.items()]
    checks += [(singular, False), (short, False), (tmp_path / "missing.nii.gz", False), (tmp_path, True),
               (next(DICOM_CROP.iterdir()), False), (next(DICOM_CROP.iterdir()), True)]
    for path, label in checks:
        with pytest.raises(DataError) as expected:
            load_label(path) if label else load_image([path])
        with pytest.raises(DataError) as got:
            loading.read_volume(path, label=label)
        assert str(got.value) == str(expected.value), path


def test_a_dicom_seg_label_needs_a_dicom_series_image_and_declared_classes(tmp_path):
    from tests.dicom_objects import write_seg

    series = SAMPLE / "dicom" / "study1" / "13_HCropVolume"
    truth = np.zeros((32, 51, 35), dtype=np.uint8)
    truth[10:20, 20:30, 10:20] = 1
    seg = write_seg(series, truth, {1: "hippocampus"}, tmp_path / "truth_seg.dcm")
    image, _ = sample_case()
    with pytest.raises(DataError, match="the case's image is no DICOM series folder") as raised:
        LoadCased(segments={1: ("hippocampus",)})({"case_id": "a", "image": [str(image)], "label": str(seg)})
    assert raised.value.details.file == seg and raised.value.details.case_id == "a"
    with pytest.raises(DataError, match="the manifest declares no classes"):
        LoadCased()({"case_id": "a", "image": [str(series)], "label": str(seg)})
    loaded = LoadCased(segments={1: ("Hippocampus",)})({"case_id": "a", "image": [str(series)], "label": str(seg)})
    assert int(loaded["label"].sum()) == 1000 and loaded["label"].shape == loaded["image"].shape


def test_a_nii_cut_short_is_refused_before_any_voxel_is_read(tmp_path, monkeypatch):
    image_path, _ = sample_case()
    cut = tmp_path / "cut.nii"
    data = gzip.decompress(image_path.read_bytes())
    cut.write_bytes(data[:-100])
    read = []
    monkeypatch.setattr(loading.NibabelReader, "get_data", lambda self, img: read.append(img) or pytest.fail("voxels read"))
    for call in (lambda: load_image([cut]), lambda: load_label(cut), lambda: loading.read_volume(cut)):
        with pytest.raises(DataError, match=rf"is truncated: its header declares {len(data) - 352} bytes of voxel data .* "
                                            rf"the file holds {len(data) - 452} bytes"):
            call()
    assert read == []
