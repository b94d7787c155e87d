"""``medft bundle inspect``: the JSON contract and the report."""
from __future__ import annotations

import json

import pytest
import torch

from medft.bundle.inspect import format_inspection, inspect_bundle
from medft.cli import main
from medft.errors import MedftError
from tests.bundle.helpers import UNET2D, UNET3D, ZSCORE, make_bundle
from tests.bundle.test_adapt import FAMILIES

CONTRACT = {"loaded": int, "new": int, "dropped": int, "total_pretrained": int, "forward_ok": bool}


def test_a_bundle_that_would_train(tmp_path):
    root = make_bundle(tmp_path / "b", UNET3D)
    result = inspect_bundle(str(root), out_channels=3)
    assert {k: type(result[k]) for k in CONTRACT} == CONTRACT
    assert (result["total_pretrained"], result["loaded"], result["new"], result["dropped"]) == (26, 22, 4, 4)
    assert result["forward_ok"] and result["would_train"] and result["errors"] == []
    assert (result["in_channels_before"], result["out_channels_before"], result["out_channels"]) == (1, 2, 3)
    assert result["input_shape"] == [2, 1, 32, 32, 32] and result["output_shape"] == [2, 3, 32, 32, 32]
    assert result["network"] == "UNet" and result["parameters"] > 0
    assert json.loads(json.dumps(result))["loaded"] == 22
    text = format_inspection(result)
    assert "loaded              22 (84.6%)" in text and "would train" in text
    assert "model.2.0.conv.weight" in text  # the new head tensors are listed


def test_a_mismatched_bundle_would_not_train(tmp_path):
    from medft.bundle.reader import build_network

    root = make_bundle(tmp_path / "b", {**UNET3D, "channels": [8, 16, 32]}, network=build_network(UNET3D))
    result = inspect_bundle(root, out_channels=3)
    assert result["forward_ok"] and not result["would_train"]
    assert result["loaded"] < result["total_pretrained"] / 2
    assert "does not match the weights" in result["errors"][0]
    assert "would NOT train" in format_inspection(result)


@pytest.mark.parametrize("counts", [{"out_channels": 0}, {"in_channels": -2}, {"input_size": [16, 0, 16]}])
def test_a_count_under_1_is_refused_before_the_bundle_is_read(counts):
    name, value = next(iter(counts.items()))
    with pytest.raises(MedftError, match=rf"^{name}={value!r}: give a whole number of at least 1".replace("[", r"\[")):
        inspect_bundle("no/such/bundle", **counts)


def test_one_output_channel_is_refused_before_the_bundle_is_read(tmp_path, capsys):
    """A head needs background and a class: with one channel softmax is 1 everywhere and every voxel background."""
    with pytest.raises(MedftError, match=r"^out_channels=1: medft trains one output channel per class, background "
                                         r"included .* Fix: give 2 for one structure"):
        inspect_bundle("no/such/bundle", out_channels=1)
    root = make_bundle(tmp_path / "b", UNET3D)
    assert main(["bundle", "inspect", str(root), "--out-channels", "1"]) == 1
    assert "at least 2" in capsys.readouterr().err


def test_input_size_from_metadata_and_from_the_caller(tmp_path):
    metadata = {"network_data_format": {"inputs": {"image": {"spatial_shape": [16, 16, 8]}}}}
    root = make_bundle(tmp_path / "b", UNET2D | {"spatial_dims": 3}, metadata=metadata)
    assert inspect_bundle(root)["output_shape"] == [2, 2, 16, 16, 8]
    assert inspect_bundle(root, input_size=8)["output_shape"] == [2, 2, 8, 8, 8]


def test_a_size_too_small_is_retried_at_64_unless_given(tmp_path):
    # five halvings leave one voxel at 32: instance norm refuses it in train mode
    deep = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
            "channels": [2, 2, 2, 2, 2, 2], "strides": [2, 2, 2, 2, 2]}
    root = make_bundle(tmp_path / "b", deep)
    result = inspect_bundle(root)
    assert result["forward_ok"] and result["input_shape"] == [2, 1, 64, 64, 64]
    given = inspect_bundle(root, input_size=32)
    assert not given["forward_ok"] and not given["would_train"] and given["output_shape"] is None
    assert "did not accept a (2, 1, 32, 32, 32) input" in given["errors"][0]
    assert "dummy pass  (2, 1, 32, 32, 32): FAILED" in format_inspection(given)


def test_spatial_dims_and_channels_from_the_network_when_network_def_omits_them(tmp_path):
    root = make_bundle(tmp_path / "b", {"_target_": "BasicUNet", "features": [4, 4, 8, 8, 16, 4]})
    result = inspect_bundle(root, in_channels=None)
    assert (result["spatial_dims"], result["in_channels"], result["out_channels"]) == (3, 1, None)
    assert result["would_train"] and result["output_shape"] == [2, 2, 32, 32, 32]


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_the_inspect_command_adapts_every_family(tmp_path, capsys, family):
    network_def, _, _, expected_head = family
    root = make_bundle(tmp_path / "bundle", network_def)
    capsys.readouterr()  # what building the test's weights printed
    assert main(["bundle", "inspect", str(root), "--out-channels", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)  # DiNTS prints as it is built: to stderr, not into the JSON
    assert result["forward_ok"] and result["dropped"] == result["new"] == len(expected_head)
    assert result["loaded"] == result["total_pretrained"] - len(expected_head)


def test_the_report_lists_the_preprocessing_medft_replays(tmp_path):
    steps = [{"_target_": "LoadImaged", "keys": "@key", "image_only": True}, {"_target_": "EnsureChannelFirstd", "keys": "@key"},
             {"_target_": "Spacingd", "keys": ["@key", "label"], "pixdim": "@spacing", "mode": ["bilinear", "nearest"]},
             {"_target_": "ScaleIntensityRanged", "keys": "@key", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
              "clip": True},
             {"_target_": "RandFlipd", "keys": "@key", "prob": 0.5}]
    config = {"key": "img", "spacing": [1.5, 1.5, 2.0], "network_def": UNET3D,
              "preprocessing": {"_target_": "Compose", "transforms": "$@steps"}, "steps": steps}
    result = inspect_bundle(make_bundle(tmp_path / "b", config=config))
    assert result["would_train"], result["errors"]
    assert result["preprocessing"]["origin"] == "configs/inference.json#preprocessing"
    assert result["preprocessing"]["steps"] == [
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1, "clip": True}]
    text = format_inspection(result)
    assert "  Spacingd(pixdim=[1.5, 1.5, 2.0], mode=bilinear)\n" in text
    assert "left out: RandFlipd: random (augmentation)" in text and "left out: LoadImaged: medft loads the image" in text


def test_a_bundle_without_preprocessing_or_with_a_step_medft_cannot_replay_would_not_train(tmp_path):
    bare = inspect_bundle(make_bundle(tmp_path / "bare", config={"network_def": UNET3D}))
    assert bare["forward_ok"] and not bare["would_train"]
    assert "declares no preprocessing" in bare["errors"][0] and "data.preprocessing: medft" in bare["errors"][0]
    joined = {"network_def": UNET3D, "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "ConcatItemsd", "keys": ["t1", "t2"], "name": "image"}]}}
    result = inspect_bundle(make_bundle(tmp_path / "joined", config=joined))
    assert not result["would_train"] and "the step ConcatItemsd adds, joins or removes data keys" in result["errors"][0]
    assert "cannot replay" in format_inspection(result)


NEEDS_96 = '''
import torch.nn as nn


class Needs96(nn.Module):
    """Refuses inputs under 96 voxels a side, as UNesT's patch embedding does."""

    def __init__(self, in_channels=1, out_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x):
        if min(x.shape[2:]) < 96:
            raise ValueError(f"input {tuple(x.shape)} is smaller than 96")
        return self.conv(x)
'''


def test_the_dummy_input_takes_the_bundles_own_window_size(tmp_path):
    config = {"network_def": {"_target_": "scripts.net.Needs96", "in_channels": 1, "out_channels": 2},
              "preprocessing": ZSCORE, "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96]}}
    namespace: dict = {}
    exec(NEEDS_96, namespace)
    root = make_bundle(tmp_path / "b", config=config, network=namespace["Needs96"](),
                       scripts={"__init__.py": "", "net.py": NEEDS_96})
    result = inspect_bundle(root, out_channels=3)
    assert result["forward_ok"] and result["input_shape"] == [2, 1, 96, 96, 96], result["errors"]


def test_a_classifier_is_refused_by_inspect_and_train_with_the_reason(tmp_path):
    classifier = {"_target_": "DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    root = make_bundle(tmp_path / "b", classifier)
    result = inspect_bundle(root)
    assert result["forward_ok"] and result["output_shape"] == [2, 2] and not result["would_train"]
    assert "is not a segmentation map" in result["errors"][0] and "as a classifier does" in result["errors"][0]
    from medft.config import load_config
    from medft.train.recipe import run_training
    from tests.train.helpers import make_config

    with pytest.raises(MedftError, match="output .* is not a segmentation map"):
        run_training(load_config(make_config(tmp_path, **{"model.bundle": str(root), "train.epochs": 1})), tmp_path / "run")


def test_vista3d_and_expression_network_defs(tmp_path, monkeypatch):
    """VISTA3D's network_def is a $ expression; medft builds it, and refuses to fine-tune it, saying why."""
    from medft.bundle import adapt

    expression = {"network_def": "$monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, "
                                 "channels=[4, 8, 16], strides=[2, 2])", "preprocessing": ZSCORE}
    root = make_bundle(tmp_path / "expr", config=expression)
    result = inspect_bundle(root)
    assert result["network"] == "UNet" and result["forward_ok"] and result["would_train"], result["errors"]
    with pytest.raises(MedftError, match=r"network_def is a \$ expression .* cannot set its arguments \['out_channels'\]"):
        inspect_bundle(root, out_channels=3)
    monkeypatch.setitem(adapt.REFUSED_NETWORKS, "unet", adapt.REFUSED_NETWORKS["vista3d"])  # VISTA3D's 218 M parameters aside
    refused = inspect_bundle(root)
    assert not refused["would_train"] and refused["errors"][0].startswith("VISTA3D segments the classes it is prompted for")
    assert "Measured here" in refused["errors"][0] and refused["output_shape"] is None


def _with_steps(tmp_path, name: str, steps: list, **config) -> dict:
    full = {"network_def": UNET3D, "preprocessing": {"_target_": "Compose", "transforms": steps}, **config}
    return inspect_bundle(make_bundle(tmp_path / name, config=full))


def test_the_image_is_the_key_a_bundle_loads_it_under(tmp_path):
    """A loader of several keys: "image" is the image, whatever comes first; several images joined are refused."""
    window = {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000, "b_min": 0, "b_max": 1}
    result = _with_steps(tmp_path, "first", [{"_target_": "LoadImaged", "keys": ["artery", "image"]}, window])
    assert [s["_target_"] for s in result["preprocessing"]["steps"]] == ["ScaleIntensityRanged"], result["errors"]
    named = _with_steps(tmp_path, "img", [{"_target_": "LoadImaged", "keys": ["img", "label"]},
                                          {**window, "keys": ["img", "label"]}])
    assert named["preprocessing"]["steps"] == [{**window, "keys": "image"}]
    joined = _with_steps(tmp_path, "phases", [{"_target_": "LoadImaged", "keys": ["artery", "vein", "label"]}, window])
    assert not joined["would_train"]
    assert "loads several images (artery, vein) and joins them" in joined["errors"][0]


def test_a_step_without_keys_is_refused_for_what_it_is(tmp_path):
    """Guidance steps (NuClick's click signals) name no keys: medft cannot tell what they read or add."""
    clicks = {"_target_": "monai.apps.nuclick.transforms.AddClickSignalsd", "image": "image", "foreground": "foreground"}
    result = _with_steps(tmp_path, "clicks", [{"_target_": "LoadImaged", "keys": "image"}, clicks])
    assert not result["would_train"]
    assert "the step AddClickSignalsd names no keys, so medft cannot tell which data it reads or adds" in result["errors"][0]


def test_a_preprocessing_joined_from_lists_is_followed(tmp_path):
    load = [{"_target_": "LoadImaged", "keys": "image"}]
    scale = [{"_target_": "ScaleIntensityd", "keys": "image"}]
    result = inspect_bundle(make_bundle(tmp_path / "b", config={
        "network_def": UNET3D, "load": load, "scale": scale,
        "preprocessing": {"_target_": "Compose", "transforms": "$@load + @scale"}}))
    assert [s["_target_"] for s in result["preprocessing"]["steps"]] == ["ScaleIntensityd"], result["errors"]


def test_a_window_size_given_as_one_number_sizes_the_dummy_input(tmp_path):
    result = _with_steps(tmp_path, "b", [{"_target_": "LoadImaged", "keys": "image"}],
                         inferer={"_target_": "SlidingWindowInferer", "roi_size": 48})
    assert result["input_shape"] == [2, 1, 48, 48, 48]


TAKES_OLD_ARGUMENTS = '''
import torch.nn as nn


class OldNet(nn.Module):
    def __init__(self, in_channels=1, out_channels=2):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, 1, dimensions=3)  # as code written for an older library
'''


def test_an_argument_the_bundles_own_code_passes_gets_no_override_advice(tmp_path):
    config = {"network_def": {"_target_": "scripts.net.OldNet", "in_channels": 1, "out_channels": 2}, "preprocessing": ZSCORE}
    root = make_bundle(tmp_path / "b", config=config, network=torch.nn.Conv3d(1, 2, 1),
                       scripts={"__init__.py": "", "net.py": TAKES_OLD_ARGUMENTS})
    with pytest.raises(MedftError) as error:
        inspect_bundle(root)
    message = str(error.value)
    assert "TypeError" in message and "dimensions" in message and "network_overrides: {dimensions: null}" not in message
    assert "the network's code (MONAI" in message and "or the bundle's scripts/) may not take what it is given" in message
