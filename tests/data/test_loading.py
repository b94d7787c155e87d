import nibabel as nib
import numpy as np
import pytest

from medft.data.loading import LoadCased, load_image, load_label, to_native
from medft.errors import DataError
from tests.conftest import copy_case, rewrite_nifti, sample_case


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
    with pytest.raises(DataError, match="cannot be read.*copy it again"):
        load_image([image_path])
    two = np.stack([nib.load(label_path).get_fdata()] * 2, axis=-1)
    rewrite_nifti(label_path, data=two.astype(np.uint8))
    with pytest.raises(DataError, match="the label map has 2 channels"):
        load_label(label_path)
