"""Augmentation presets on a real case: geometry stays anatomical and labels stay labels."""
import numpy as np
import pytest
import torch
from monai.transforms import Compose

from medft.data.preprocessing import Preprocessing
from medft.data.transforms import augmentation, sampling
from tests.conftest import sample_case

SIZE = [48, 64, 48]


def _centroid(label: torch.Tensor, value: int) -> np.ndarray:
    return np.argwhere(label[0].numpy() == value).mean(axis=0)


@pytest.mark.parametrize("preset", ["none", "light", "standard", "strong"])
def test_presets_keep_anterior_in_front_of_posterior(preset):
    image, label = sample_case("hippocampus_334")
    case = Compose(Preprocessing.medft().training())({"case_id": "hippocampus_334", "image": [image], "label": label})
    transform = Compose(sampling("whole", SIZE) + augmentation(preset))
    transform.set_random_state(seed=0)
    changed = 0
    for _ in range(12):
        out = transform(dict(case))
        img, lab = out["image"].as_tensor(), out["label"].as_tensor()
        assert list(img.shape[1:]) == SIZE and list(lab.shape[1:]) == SIZE
        assert torch.isfinite(img).all()
        assert set(torch.unique(lab).tolist()) <= {0, 1, 2}, "labels must stay label values (nearest interpolation)"
        # RAS: axis 1 points anterior. No preset may swap anterior and posterior.
        assert _centroid(lab, 1)[1] > _centroid(lab, 2)[1]
        reference = Compose(sampling("whole", SIZE))(dict(case))["image"].as_tensor()
        changed += not torch.equal(img, reference)
    if preset == "none":
        assert changed == 0
    else:
        assert changed >= 3, f"{preset}: augmentation should change most samples"


def test_strong_changes_intensities_more_than_standard():
    image, label = sample_case("hippocampus_334")
    case = Compose(Preprocessing.medft().training())({"case_id": "hippocampus_334", "image": [image], "label": label})
    spread = {}
    for preset in ("standard", "strong"):
        transform = Compose(sampling("whole", SIZE) + augmentation(preset))
        transform.set_random_state(seed=1)
        reference = Compose(sampling("whole", SIZE))(dict(case))["image"].as_tensor()
        spread[preset] = np.mean([float((transform(dict(case))["image"].as_tensor() - reference).abs().mean())
                                  for _ in range(20)])
    assert spread["strong"] > spread["standard"]


def test_flip_axes_mirror_each_axis_on_its_own():
    image, label = sample_case("hippocampus_334")
    case = Compose(Preprocessing.medft().training())({"case_id": "hippocampus_334", "image": [image], "label": label})
    padded = Compose(sampling("whole", SIZE))(dict(case))
    mirrorings = {axes: padded["label"].as_tensor().flip([a + 1 for a in axes]) if axes else padded["label"].as_tensor()
                  for axes in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]}
    transform = Compose(sampling("whole", SIZE) + augmentation("light", flip_axes=[0, 1, 2]))
    transform.set_random_state(seed=0)
    seen = []
    for _ in range(40):
        label_out = transform(dict(case))["label"].as_tensor()
        seen.append(next(axes for axes, mirrored in mirrorings.items() if torch.equal(label_out, mirrored)))
    for axis in (0, 1, 2):  # each axis mirrored in about half of the samples, independently of the others
        assert 10 <= sum(axis in axes for axes in seen) <= 30
    assert len(set(seen)) >= 6


def test_elastic_bends_shapes_by_a_voxel_or_two_and_keeps_labels():
    image, label = sample_case("hippocampus_334")
    steps = Compose(Preprocessing.medft().training() + sampling("whole", SIZE))
    case = steps({"case_id": "hippocampus_334", "image": [image], "label": label})
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in SIZE], indexing="ij"))
    original = case["label"].as_tensor()
    assert augmentation("light", flip_axes=[], elastic=0.0) == []
    transform = Compose(augmentation("light", flip_axes=[], elastic=1.0))
    transform.set_random_state(seed=0)
    for _ in range(3):
        out = transform({"image": grid.clone(), "label": original.clone()})
        # each voxel of the coordinate image now holds the coordinate it was taken from
        shift = (out["image"].as_tensor() - grid)[:, 8:-8, 8:-8, 8:-8].norm(dim=0)
        assert 0.5 < float(shift.mean()) < 3 and float(shift.max()) < 10
        lab = out["label"].as_tensor()
        assert set(torch.unique(lab).tolist()) <= {0, 1, 2}
        assert not torch.equal(lab, original)
        for value in (1, 2):  # bent, each part's volume within a third of its own, as scaling by 0.9-1.1 does
            assert abs(int((lab == value).sum()) / int((original == value).sum()) - 1) < 0.33
