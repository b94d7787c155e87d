"""The perturbations of medft stress: seeded, stronger at every level, and spatial ones move the label with the image."""
import itertools

import nibabel as nib
import numpy as np
import pytest

from medft.stress.perturbations import LEVELS, PERTURBATIONS, Volume, case_seed, for_modality, slice_axis
from tests.conftest import sample_case


@pytest.fixture(scope="module")
def case() -> Volume:
    image, label = (nib.load(p) for p in sample_case("hippocampus_334"))
    return Volume(np.asarray(image.dataobj, dtype=np.float32)[None], np.asarray(label.dataobj, dtype=np.float32)[None],
                  tuple(float(s) for s in image.header.get_zooms()[:3]))


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_each_level_changes_the_image_more_than_the_one_below_and_a_rerun_is_identical(case, name):
    perturbation = PERTURBATIONS[name]
    seed = case_seed("hippocampus_334", name)
    change = []
    for level in LEVELS:
        out = perturbation(case, level, seed)
        assert out.image.shape == case.image.shape and out.image.dtype == np.float32
        change.append(float(np.abs(out.image - case.image).mean()))
    assert np.array_equal(perturbation(case, LEVELS[-1], seed).image, out.image)  # seeded
    assert all(low < high for low, high in itertools.pairwise(change)), (name, change)
    assert change[0] > 0


@pytest.mark.parametrize("name", [n for n, p in PERTURBATIONS.items() if p.spatial])
def test_a_spatial_perturbation_moves_the_label_with_the_image(case, name):
    """An image that is its label (100 inside, 0 outside): after the perturbation, the image thresholded halfway
    is the label (up to the voxels that bilinear and nearest interpolation round differently)."""
    mask = (case.label > 0).astype(np.float32)
    labelled = Volume(mask * 100.0, mask, case.spacing)
    moved_label = []
    for level in LEVELS:
        out = PERTURBATIONS[name](labelled, level, case_seed("c", name))
        follows, label = out.image[0] > 50, out.label[0] == 1
        dice = 2 * (follows & label).sum() / (follows.sum() + label.sum())
        assert dice > 0.95, (name, level, dice)
        moved_label.append(float((out.label != mask).mean()))
    assert all(low <= high for low, high in itertools.pairwise(moved_label)) and moved_label[-1] > 0.01


@pytest.mark.parametrize("name", [n for n, p in PERTURBATIONS.items() if not p.spatial])
def test_an_intensity_perturbation_leaves_the_label(case, name):
    out = PERTURBATIONS[name](case, 5, 1)
    assert out.label is case.label


def test_another_case_or_seed_draws_otherwise_and_levels_share_their_draws(case):
    noise = PERTURBATIONS["noise"]
    assert case_seed("a", "noise") != case_seed("b", "noise") != case_seed("b", "noise", seed=1)
    one, other = (noise(case, 1, seed).image - case.image for seed in (1, 2))
    assert not np.allclose(one, other)
    # a higher level is the same draw made stronger: the noise of levels 1 and 5 correlate
    five = noise(case, 5, 1).image - case.image
    assert np.corrcoef(one.ravel(), five.ravel())[0, 1] > 0.5


def test_thick_slices_average_slabs_along_the_coarsest_axis():
    image = np.zeros((1, 4, 4, 8), dtype=np.float32)
    image[..., 3] = 8.0  # one bright slice along the last axis
    out = PERTURBATIONS["thick_slices"](Volume(image, None, (1.0, 1.0, 3.0)), 1, 0)  # factor 2 on axis 2
    assert np.isclose(out.image.sum(), image.sum(), rtol=0.05)  # the slab keeps the tissue's signal
    assert out.image[0, 0, 0, 3] < 8.0 and out.image[0, 0, 0, 2] > 0  # spread over its slab
    assert np.array_equal(out.image[0, 0], out.image[0, 3])  # nothing moved within a slice
    rng = np.random.default_rng(0)
    assert slice_axis((1.0, 1.0, 3.0), rng) == 2 and slice_axis((2.0, 0.5, 0.5), rng) == 0
    assert {slice_axis((1.0, 1.0, 1.0), np.random.default_rng(s)) for s in range(20)} == {0, 1, 2}


def test_the_ct_set_has_no_mr_physics_and_the_mr_set_no_hounsfield_units():
    assert set(for_modality("ct")) == {"noise_hu", "hu_offset", "smoothing", "thick_slices", "affine", "elastic"}
    assert {"noise", "bias_field", "motion", "ghosting"} <= set(for_modality("mr"))
    assert not {"noise_hu", "hu_offset"} & set(for_modality("mr"))
