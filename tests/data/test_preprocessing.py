"""medft's preprocessing against plain MONAI, the label following the image, and the way back to the input's grid."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import (
    Compose,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
)

from medft.data.preprocessing import Preprocessing, case_spacing, median_spacing
from tests.conftest import sample_case
from tests.foreign_bundle import RAS, stored_otherwise


def _plain_monai(spacing, intensity_step) -> Compose:
    steps = [LoadImaged("image", image_only=True, ensure_channel_first=True),
             Orientationd("image", axcodes="RAS", labels=RAS)]
    if spacing:
        steps.append(Spacingd("image", pixdim=spacing, mode="bilinear"))
    return Compose(steps + [intensity_step])


@pytest.mark.parametrize("intensity, span, plain", [
    ("zscore", None, NormalizeIntensityd("image", channel_wise=True)),
    ("nonzero_zscore", None, NormalizeIntensityd("image", nonzero=True, channel_wise=True)),
    ("ct_window", [20, 80], ScaleIntensityRanged("image", a_min=20, a_max=80, b_min=0, b_max=1, clip=True)),
    ("percentiles", [1, 99], ScaleIntensityRangePercentilesd("image", lower=1, upper=99, b_min=0, b_max=1, clip=True,
                                                              channel_wise=True)),
])
@pytest.mark.parametrize("spacing", [None, [1.5, 1.2, 2.0]])
def test_medft_preprocessing_is_what_plain_monai_computes(intensity, span, plain, spacing):
    image, _ = sample_case("hippocampus_340")
    ours = Compose(Preprocessing.medft(spacing, intensity, span).inference())({"case_id": "a", "image": [image]})["image"]
    theirs = _plain_monai(spacing, plain)({"image": str(image)})["image"]
    assert ours.shape == theirs.shape
    assert np.allclose(ours.affine, theirs.affine) and torch.allclose(ours.as_tensor(), theirs.as_tensor(), atol=1e-5)
    if intensity in ("ct_window", "percentiles"):
        assert float(ours.min()) == 0.0 and float(ours.max()) == 1.0


def test_in_training_the_label_follows_the_image_onto_its_new_grid():
    image, label = sample_case("hippocampus_340")
    prep = Preprocessing.medft([1.5, 1.5, 1.5])
    case = Compose(prep.training())({"case_id": "a", "image": [image], "label": label})
    reference = Compose([LoadImaged(["image", "label"], image_only=True, ensure_channel_first=True),
                         Orientationd(["image", "label"], axcodes="RAS", labels=RAS),
                         Spacingd(["image", "label"], pixdim=[1.5] * 3, mode=("bilinear", "nearest"))])(
        {"image": str(image), "label": str(label)})
    assert case["label"].shape == case["image"].shape == reference["label"].shape
    assert np.allclose(case["label"].affine, case["image"].affine)
    assert torch.equal(case["label"].as_tensor(), reference["label"].as_tensor())  # as MONAI's Spacingd(nearest)


def test_a_label_that_only_needs_reorienting_is_reoriented_not_resampled(tmp_path):
    image, label = stored_otherwise(*sample_case("hippocampus_340"), tmp_path, spacing=(1.0, 1.0, 1.0))
    steps = [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": RAS}]
    case = Compose(Preprocessing("bundle", steps, reorient=False).training())({"case_id": "a", "image": [image], "label": label})
    ras = Compose(Preprocessing.medft(None, "none").training())({"case_id": "a", "image": [image], "label": label})
    assert torch.equal(case["label"].as_tensor(), ras["label"].as_tensor())
    assert "ResampleToMatch" not in [op["class"] for op in case["label"].applied_operations]


@pytest.mark.parametrize("reorient", [True, False])
def test_predictions_go_back_to_the_grid_the_image_was_loaded_on(tmp_path, reorient):
    """A perfect prediction made at 1.5 mm returns onto the 0.9 x 0.9 x 1.6 mm input grid, close to the truth."""
    image, label = stored_otherwise(*sample_case("hippocampus_340"), tmp_path)
    steps = [{"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": RAS}] if not reorient else []
    steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 1.5], "mode": "bilinear"})
    prep = Preprocessing("medft" if reorient else "bundle", steps, reorient=reorient)
    resampled = Compose(prep.training())({"case_id": "a", "image": [image], "label": label})
    loaded = Compose(prep.inference())({"case_id": "a", "image": [image], "label": label})
    one_hot = torch.nn.functional.one_hot(resampled["label"][0].long(), 3).permute(3, 0, 1, 2).float()
    back = prep.to_input_grid(one_hot, loaded["image"])
    assert back.shape[1:] == loaded["label"].shape[1:] and np.allclose(back.affine, loaded["label"].affine)
    pred, truth = back.as_tensor().argmax(0), loaded["label"][0].long()
    for c in (1, 2):
        overlap = 2 * ((pred == c) & (truth == c)).sum() / ((pred == c).sum() + (truth == c).sum())
        assert overlap > 0.85  # what a round trip through 1.5 mm voxels keeps of a 1 mm structure


def test_the_median_spacing_is_per_ras_axis_whatever_the_storage(tmp_path):
    image, _ = sample_case("hippocampus_340")
    turned, _ = stored_otherwise(image, None, tmp_path, spacing=(0.9, 0.8, 1.6))  # stored axes: y, x, z
    assert case_spacing({"image": [turned]}) == pytest.approx([0.8, 0.9, 1.6])
    assert case_spacing({"image": [turned]}, reorient=False) == pytest.approx([0.9, 0.8, 1.6])
    assert median_spacing([{"image": [image]}, {"image": [turned]}, {"image": [turned]}]) == [0.8, 0.9, 1.6]
    assert nib.load(turned).shape == tuple(np.asarray(nib.load(image).shape)[[1, 0, 2]])
