"""Test-time augmentation: the average over exactly the mirrorings the model was trained with."""
import pytest
import torch
from monai.data import MetaTensor

from medft.data.preprocessing import Preprocessing
from medft.evaluate.inference import TrainedModel, predict, tta_mirrors


def _model(flip_axes: tuple[int, ...]) -> TrainedModel:
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)  # random weights: not mirror-symmetric
    return TrainedModel(network.eval(), ["background", "a", "b"], roi_size=[6, 8, 5], preprocessing=Preprocessing.medft(),
                        sw_batch_size=4, flip_axes=flip_axes)


def _by_hand(model: TrainedModel, image: torch.Tensor, mirrorings: list[tuple[int, ...]]) -> torch.Tensor:
    """Softmax of the network on each mirrored image (the window covers the whole image), mirrored back, averaged."""
    total = torch.zeros(3, *image.shape[1:])
    with torch.no_grad():
        for axes in mirrorings:
            dims = [a + 1 for a in axes]
            mirrored = image.flip(dims) if dims else image
            probs = torch.softmax(model.network(mirrored[None])[0], dim=0)
            total += probs.flip(dims) if dims else probs
    return total / len(mirrorings)


def test_mirrorings_are_every_combination_of_the_trained_axes():
    assert tta_mirrors((0,)) == [(), (0,)]
    assert tta_mirrors((0, 1, 2)) == [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    assert tta_mirrors(()) == [()]


@pytest.mark.parametrize("flip_axes", [(0,), (0, 1, 2), (1, 2)])
def test_tta_averages_the_mirrorings_of_the_trained_axes(flip_axes):
    image = torch.randn(1, 6, 8, 5, generator=torch.Generator().manual_seed(1))
    model = _model(flip_axes)
    plain = predict(model, MetaTensor(image))
    with_tta = predict(model, MetaTensor(image), tta=True)
    assert torch.allclose(plain, _by_hand(model, image, [()]), atol=1e-5)
    assert torch.allclose(with_tta, _by_hand(model, image, tta_mirrors(flip_axes)), atol=1e-5)
    assert not torch.allclose(with_tta, plain, atol=1e-3), "the mirrorings must change the prediction"
    assert torch.allclose(with_tta.sum(0), torch.ones(6, 8, 5), atol=1e-5)


def test_the_report_names_the_mirrorings_or_their_absence():
    from medft.evaluate.html import describe_tta

    assert describe_tta(False, []) == "no"
    assert describe_tta(True, []) == "yes, but the model was trained without flips: nothing mirrored"
    assert describe_tta(True, [0, 1, 2]) == "yes: 8 mirrorings averaged (left-right, front-back, up-down)"


def test_a_bundle_whose_inferer_refers_to_its_config_gives_the_values(tmp_path):
    """Model Zoo configs often write ``"roi_size": "@patch_size"``: the reference is resolved, not taken
    as the characters of a string (which stopped the evaluation with a ValueError)."""
    from medft.evaluate.inference import load_model
    from tests.bundle.helpers import UNET3D, ZSCORE, make_bundle

    config = {"patch_size": [32, 32, 16], "batch": 2, "network_def": UNET3D, "preprocessing": ZSCORE,
              "inferer": {"_target_": "SlidingWindowInferer", "roi_size": "@patch_size", "sw_batch_size": "$@batch * 2",
                          "overlap": 0.5}}
    model = load_model(make_bundle(tmp_path / "refs", config=config), device=torch.device("cpu"))
    assert (model.roi_size, model.sw_batch_size, model.overlap) == ([32, 32, 16], 4, 0.5)
    config["inferer"].update(roi_size="@nowhere", sw_batch_size="many")  # unresolvable: the defaults
    model = load_model(make_bundle(tmp_path / "broken", config=config), device=torch.device("cpu"))
    assert (model.roi_size, model.sw_batch_size) == ([96, 96, 96], 4)


def test_a_foreign_bundle_is_loaded_with_a_warning_of_what_is_assumed(tmp_path, caplog):
    from medft.evaluate.inference import load_model
    from tests.bundle.helpers import UNET3D, make_bundle

    with caplog.at_level("WARNING", logger="medft"):
        model = load_model(make_bundle(tmp_path / "foreign", UNET3D), device=torch.device("cpu"))
    assert model.flip_axes == (0,) and model.preprocessing.source == "bundle"
    assert [step["_target_"] for step in model.preprocessing.steps] == ["Orientationd", "NormalizeIntensityd"]
    assert "--tta mirrors left-right only (the axes its training mirrored are not recorded)" in caplog.text
