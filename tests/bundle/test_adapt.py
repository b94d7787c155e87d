"""Head adaptation across the network families that Model Zoo bundles use, all tiny."""
from __future__ import annotations

import pytest
import torch

from medft.bundle.adapt import AdaptationReport, adapt_network, dummy_forward_backward, head_parameter_names
from medft.bundle.reader import build_network, load_bundle
from medft.errors import MedftError
from tests.bundle.helpers import UNET2D, UNET3D, make_bundle, pretrained

# name: (network_def, spatial dims, input size, the head: tensors sized by the output channels)
FAMILIES = {
    "unet3d": (UNET3D, 3, 32, {"model.2.0.conv.weight", "model.2.0.conv.bias",
                               "model.2.1.conv.unit0.conv.weight", "model.2.1.conv.unit0.conv.bias"}),
    "unet2d": (UNET2D, 2, 32, {"model.2.conv.weight", "model.2.conv.bias"}),
    "segresnet": ({"_target_": "SegResNet", "spatial_dims": 3, "init_filters": 4, "in_channels": 1,
                   "out_channels": 2, "blocks_down": [1, 1], "blocks_up": [1], "norm": ["group", {"num_groups": 2}]},
                  3, 32, {"conv_final.2.conv.weight", "conv_final.2.conv.bias"}),
    # the deep-supervision head is registered twice (also inside skip_layers): both names count
    "dynunet": ({"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                 "kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2],
                 "filters": [4, 8, 16], "deep_supervision": True, "deep_supr_num": 1},
                3, 32, {"output_block.conv.conv.weight", "output_block.conv.conv.bias",
                        "deep_supervision_heads.0.conv.conv.weight", "deep_supervision_heads.0.conv.conv.bias",
                        "skip_layers.next_layer.super_head.conv.conv.weight",
                        "skip_layers.next_layer.super_head.conv.conv.bias"}),
    "basicunet": ({"_target_": "BasicUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                   "features": [4, 4, 8, 8, 16, 4]}, 3, 32, {"final_conv.weight", "final_conv.bias"}),
    # efficientnet-b0 is the smallest backbone; pretrained=False builds it offline
    "flexibleunet": ({"_target_": "FlexibleUNet", "in_channels": 1, "out_channels": 2, "backbone": "efficientnet-b0",
                      "pretrained": False, "spatial_dims": 2, "decoder_channels": [16, 8, 8, 4, 4]},
                     2, 32, {"segmentation_head.0.weight", "segmentation_head.0.bias"}),
    # four stages are fixed in SwinUNETR; batch norm lets 32^3 reach its 1-voxel bottom in train mode
    "swinunetr": ({"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2, "feature_size": 12,
                   "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"},
                  3, 32, {"out.conv.conv.weight", "out.conv.conv.bias"}),
    # pancreas_ct_dints_segmentation: the classes are num_classes; a searched topology (here the full one)
    "dints": ({"_target_": "DiNTS", "in_channels": 1, "num_classes": 2, "use_downsample": True,
               "dints_space": {"_target_": "TopologyInstance", "channel_mul": 0.5, "num_blocks": 2, "num_depths": 3,
                               "use_downsample": True, "device": "cpu"}},
              3, 32, {"stem_finals.1.weight", "stem_finals.1.bias"}),
}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=FAMILIES.keys())
def test_adapt_to_three_classes_loads_everything_but_the_head(tmp_path, family):
    network_def, dims, size, expected_head = family
    root = make_bundle(tmp_path / "bundle", network_def)
    weights = pretrained(root)

    network, report = adapt_network(load_bundle(root), out_channels=3)

    assert set(report.head) == expected_head
    assert set(report.new) == expected_head
    assert {name for name, _ in report.dropped} == expected_head
    assert all("shape" in reason for _, reason in report.dropped)
    assert report.total_pretrained == len(weights)
    assert set(report.loaded) == set(weights) - expected_head
    state = network.state_dict()
    assert all(torch.equal(state[name], weights[name]) for name in report.loaded)
    assert dummy_forward_backward(network, 1, dims, size) == (2, 3, *([size] * dims))


def test_head_parameter_names_compares_two_builds():
    head = head_parameter_names(lambda n: build_network({**UNET3D, "num_res_units": 0, "out_channels": n}), 2)
    assert head == {"model.2.conv.weight", "model.2.conv.bias"}


@pytest.mark.parametrize("key, prefix", [("model", ""), ("state_dict", ""), (None, "module.")])
def test_weights_in_checkpoint_dicts_and_from_ddp_load_fully(tmp_path, key, prefix):
    root = make_bundle(tmp_path / "b", UNET3D, key=key, prefix=prefix)
    network, report = adapt_network(load_bundle(root))
    assert report.loaded_fraction == 1.0 and not report.new and not report.dropped
    expected = {k.removeprefix(prefix): v for k, v in (pretrained(root)[key] if key else pretrained(root)).items()}
    assert all(torch.equal(network.state_dict()[k], v) for k, v in expected.items())


def test_mismatched_network_def_is_refused(tmp_path):
    weights_from = build_network(UNET3D)
    root = make_bundle(tmp_path / "b", {**UNET3D, "channels": [8, 16, 32]}, network=weights_from)
    with pytest.raises(MedftError, match=r"only \d+ of 26 pretrained tensors loaded.*inference.json does not match"):
        adapt_network(load_bundle(root), out_channels=3)
    _, report = adapt_network(load_bundle(root), out_channels=3, min_loaded_fraction=0.0)
    assert 0 < report.loaded_fraction < 0.5


def test_new_input_channels_make_the_first_conv_new(tmp_path):
    unet = {**UNET3D, "num_res_units": 0}
    root = make_bundle(tmp_path / "b", unet)
    network, report = adapt_network(load_bundle(root), in_channels=2)
    assert report.new == ["model.0.conv.weight"]
    assert report.dropped == [("model.0.conv.weight", "shape (4, 1, 3, 3, 3) != (4, 2, 3, 3, 3) in the network")]
    assert report.head == ["model.2.conv.bias", "model.2.conv.weight"]  # the head is kept: same out_channels
    assert dummy_forward_backward(network, 2, 3, 16) == (2, 2, 16, 16, 16)


def test_setting_channels_the_network_def_lacks_is_refused_unless_an_override_adds_them(tmp_path):
    root = make_bundle(tmp_path / "b", {"_target_": "BasicUNet", "features": [4, 4, 8, 8, 16, 4]})
    with pytest.raises(MedftError, match=r"has no out_channels argument to set to 3\. Fix: when BasicUNet takes "
                                         r"out_channels with a default value, .*model.network_overrides: \{out_channels: 3\}"):
        adapt_network(load_bundle(root), out_channels=3)
    _network, report = adapt_network(load_bundle(root), out_channels=3, overrides={"out_channels": 2})  # its default
    assert set(report.head) == set(report.new) == {"final_conv.weight", "final_conv.bias"}


def test_report_table_and_dict():
    report = AdaptationReport(
        total_pretrained=4, loaded=["a", "b"], new=["head.weight"],
        dropped=[("head.weight", "shape (2, 4) != (3, 4) in the network"), ("aux", "not in the network")],
        head=["head.weight"], new_shapes={"head.weight": (3, 4)},
    )
    assert report.loaded_fraction == 0.5
    data = report.to_dict()
    assert (data["total_pretrained"], data["loaded"], data["new"], data["dropped"]) == (4, 2, 1, 2)
    assert data["new_tensors"] == [{"name": "head.weight", "shape": [3, 4], "head": True}]
    table = report.table()
    assert "loaded              2 (50.0%)" in table
    assert "head.weight  (3, 4)  head" in table
    assert "aux          not in the network" in table


def test_dummy_pass_leaves_the_network_as_it_was(tmp_path):
    network = build_network({**UNET3D, "norm": "batch"})
    network.eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    assert dummy_forward_backward(network, 1, 3, [16, 16, 8]) == (2, 2, 16, 16, 8)
    assert not network.training
    assert all(p.grad is None for p in network.parameters())
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # running stats too


def test_dummy_pass_takes_the_main_output_of_deep_supervision():
    network = build_network(FAMILIES["dynunet"][0] | {"deep_supr_num": 2, "kernel_size": [3, 3, 3, 3],
                                                      "strides": [1, 2, 2, 2], "upsample_kernel_size": [2, 2, 2],
                                                      "filters": [2, 2, 2, 2]})
    assert network.train()(torch.zeros(2, 1, 16, 16, 16)).shape == (2, 3, 2, 16, 16, 16)  # main + 2 supervised
    assert dummy_forward_backward(network, 1, 3, 16) == (2, 2, 16, 16, 16)


def test_dummy_pass_names_the_input_it_refused():
    network = build_network({**UNET3D, "num_res_units": 0})
    with pytest.raises(MedftError, match=r"did not accept a \(2, 2, 16, 16, 16\) input: .*--input-size"):
        dummy_forward_backward(network, 2, 3, 16)  # one input channel expected
