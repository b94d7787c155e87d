"""Reading bundles: layout, configs with references, scripts packages, weight files, clear errors."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from medft.bundle.adapt import adapt_network
from medft.bundle.reader import build_network, load_bundle
from medft.errors import MedftError
from tests.bundle.helpers import UNET2D, UNET3D, make_bundle, pretrained, tiny_net, tiny_net_source

SWIN_OLD = {"_target_": "SwinUNETR", "img_size": [32, 32, 32], "in_channels": 1, "out_channels": 2,
            "feature_size": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "norm_name": "batch"}


def test_a_bundle_folder_reads_with_its_metadata(tmp_path):
    metadata = {"name": "Tiny UNet", "version": "1.2.3", "network_data_format": {
        "inputs": {"image": {"spatial_shape": [16, 16, 16]}},
        "outputs": {"pred": {"channel_def": {"1": "spleen", "0": "background"}}}}}
    root = make_bundle(tmp_path / "tiny", UNET3D, metadata=metadata)
    bundle = load_bundle(str(root))
    assert (bundle.name, bundle.version, bundle.root) == ("Tiny UNet", "1.2.3", root.resolve())
    assert bundle.config_file == root.resolve() / "configs" / "inference.json"
    assert bundle.network_def == UNET3D and bundle.network_class == "UNet"
    assert (bundle.spatial_dims, bundle.in_channels, bundle.out_channels) == (3, 1, 2)
    assert bundle.class_names == {0: "background", 1: "spleen"}
    assert bundle.input_spatial_shape == [16, 16, 16]
    assert bundle.weights_file == root.resolve() / "models" / "model.pt"


def test_network_def_is_looked_for_in_inference_then_train_configs(tmp_path):
    root = make_bundle(tmp_path / "b", config={"network_def": UNET3D, "epochs": 3}, config_name="train.json")
    (root / "configs" / "inference.json").write_text(json.dumps({"network": "$@network_def"}))  # no network_def
    bundle = load_bundle(root)
    assert bundle.config_file.name == "train.json" and bundle.config["epochs"] == 3


def test_yaml_config_with_references(tmp_path):
    config = {
        "imports": ["$import math"],
        "bundle_root": ".",
        "num_classes": 2,
        "levels": [4, 8, 16],
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes",
                        "channels": "@levels", "strides": "$[int(math.sqrt(4))] * (len(@levels) - 1)"},
        "network": "$@network_def.to(torch.device('cpu'))",
    }
    root = make_bundle(tmp_path / "b", config=config, config_name="inference.yaml")
    bundle = load_bundle(root)
    assert bundle.config_file.name == "inference.yaml"
    assert bundle.out_channels == 2  # resolved from @num_classes
    network, report = adapt_network(bundle, out_channels=3)
    assert report.head == ["model.2.conv.bias", "model.2.conv.weight"] == sorted(report.new)
    assert len(report.loaded) == report.total_pretrained - 2
    assert network(torch.zeros(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


def test_macros_take_their_files_from_the_bundle_folder(tmp_path, monkeypatch):
    """``%file#id`` copies a part of another config (MONAI reads the file from the working folder,
    which is the bundle's when the bundle runs): medft reads it from the bundle folder, wherever it runs."""
    root = make_bundle(tmp_path / "b", config={"network_def": UNET3D}, config_name="train.json")
    (root / "configs" / "common.yaml").write_text("levels: [4, 8, 16]\n")
    (root / "configs" / "inference.json").write_text(json.dumps({
        "base": "%configs/train.json#network_def",
        "network_def": {"_target_": "UNet", "spatial_dims": "%base#spatial_dims", "in_channels": 1, "out_channels": 2,
                        "channels": "%configs/common.yaml#levels", "strides": [2, 2], "num_res_units": "@##base#num_res_units"},
    }))
    monkeypatch.chdir(tmp_path)
    bundle = load_bundle(root)
    assert bundle.config_file.name == "inference.json" and bundle.config["base"] == UNET3D
    assert bundle.network_def == {**UNET3D, "num_res_units": "@base::num_res_units"}
    _network, report = adapt_network(bundle, out_channels=3)
    assert len(report.loaded) == report.total_pretrained - 4


def test_a_macro_naming_a_missing_file_or_network_def_of_no_component_fails_clearly(tmp_path):
    root = make_bundle(tmp_path / "b", UNET3D)
    (root / "configs" / "inference.json").write_text(json.dumps({"network_def": "%configs/net.json#network_def"}))
    with pytest.raises(MedftError, match=r"inference.json: cannot replace its % macros \(FileNotFoundError: .*net.json'\)\. "
                                         r"Fix: .*%configs/train.json#network_def"):
        load_bundle(root)
    (root / "configs" / "inference.json").write_text(json.dumps({"base": UNET3D, "network_def": "@base"}))
    with pytest.raises(MedftError, match=r"inference.json: network_def is not a component with a _target_ \(got '@base'\)"):
        load_bundle(root)


def test_a_broken_macro_outside_the_network_does_not_stop_it(tmp_path):
    """An entry for another workflow may name a file the bundle does not ship."""
    root = make_bundle(tmp_path / "b", UNET3D)
    (root / "configs" / "inference.json").write_text(json.dumps({
        "network_def": UNET3D, "validate": {"dataset": "%configs/missing.json#dataset"}}))
    assert load_bundle(root).network_def == UNET3D


def test_scripts_packages_of_two_bundles_in_one_process(tmp_path):
    sources = {"a": tiny_net_source(width=4, head="head"), "b": tiny_net_source(width=6, head="final")}
    roots = {}
    for name, source in sources.items():
        roots[name] = make_bundle(
            tmp_path / name,
            {"_target_": "scripts.net.TinyNet", "in_channels": 1, "out_channels": 2},
            network=tiny_net(source, in_channels=1, out_channels=2),
            scripts={"net.py": source},
        )
    networks = {}
    for name, root in roots.items():
        networks[name], report = adapt_network(load_bundle(root), out_channels=3)
        assert report.loaded_fraction == 0.5  # the body, not the head
        assert all(torch.equal(networks[name].state_dict()[k], pretrained(root)[k]) for k in report.loaded)
    assert networks["a"].head.weight.shape == (3, 4, 1, 1, 1)
    assert networks["b"].final.weight.shape == (3, 6, 1, 1, 1)  # bundle b's own TinyNet, not a's cached one
    assert "scripts" not in sys.modules
    assert not any(str(tmp_path) in p for p in sys.path)


def test_a_scripts_module_imported_before_does_not_shadow_the_bundles(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "scripts", types.ModuleType("scripts"))  # some other "scripts"
    source = tiny_net_source()
    root = make_bundle(tmp_path / "b", {"_target_": "scripts.net.TinyNet", "in_channels": 1, "out_channels": 2},
                       network=tiny_net(source, in_channels=1, out_channels=2), scripts={"net.py": source})
    assert load_bundle(root).build_network().head.weight.shape == (2, 4, 1, 1, 1)


def test_scripts_network_of_a_bundle_without_scripts_fails_clearly(tmp_path):
    root = make_bundle(tmp_path / "b", {"_target_": "scripts.net.TinyNet", "in_channels": 1, "out_channels": 2},
                       network=tiny_net(tiny_net_source(), in_channels=1, out_channels=2))
    expected = r"inference.json: cannot build the network TinyNet .*'scripts.net.TinyNet'\. Fix: .*scripts/ package"
    with pytest.raises(MedftError, match=expected):
        load_bundle(root).build_network()


def test_overrides_set_and_drop_network_def_keys():
    network = build_network(UNET3D, overrides={"num_res_units": None, "channels": [2, 4, 8]})
    assert network.model[0].conv.weight.shape == (2, 1, 3, 3, 3)
    assert not hasattr(network.model[0], "residual")  # num_res_units dropped: back to the default 0


def test_an_argument_newer_monai_removed_names_the_override(tmp_path):
    root = make_bundle(tmp_path / "b", SWIN_OLD, network=torch.nn.Linear(1, 1))
    with pytest.raises(MedftError) as raised:
        load_bundle(root).build_network()
    message = str(raised.value)
    assert "inference.json: SwinUNETR does not accept the argument 'img_size'" in message
    assert "model.network_overrides: {img_size: null}" in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no library traceback


def test_dropping_the_removed_argument_builds_and_adapts(tmp_path):
    current = {k: v for k, v in SWIN_OLD.items() if k != "img_size"}
    root = make_bundle(tmp_path / "b", SWIN_OLD, network=build_network(current))
    _network, report = adapt_network(load_bundle(root), out_channels=3, overrides={"img_size": None})
    assert sorted(report.new) == ["out.conv.conv.bias", "out.conv.conv.weight"]
    assert len(report.loaded) == report.total_pretrained - 2


def test_other_build_failures_give_the_underlying_message(tmp_path):
    with pytest.raises(MedftError, match=r"net.json: cannot build the network UNet from network_def: .*strides"):
        build_network({**UNET3D, "strides": [2]}, source="net.json")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_model_ts_only(tmp_path):
    root = make_bundle(tmp_path / "b", UNET2D)
    traced = torch.jit.trace(build_network(UNET2D).eval(), torch.zeros(1, 1, 16, 16))
    traced.save(str(root / "models" / "model.ts"))
    (root / "models" / "model.pt").unlink()
    bundle = load_bundle(root)
    assert bundle.weights_file.name == "model.ts"
    network, report = adapt_network(bundle)
    assert report.loaded_fraction == 1.0
    assert all(torch.equal(network.state_dict()[k], v) for k, v in traced.state_dict().items())


def test_weight_files_that_are_missing_or_not_state_dicts(tmp_path):
    root = make_bundle(tmp_path / "b", UNET2D)
    weights = root / "models" / "model.pt"
    bundle = load_bundle(root)
    torch.save({"epoch": 3, "optimizer": {}}, weights)
    with pytest.raises(MedftError, match=r"model.pt: not a state dict \(found a dict with keys epoch, optimizer\)"):
        bundle.pretrained_state_dict()
    torch.save(build_network(UNET2D), weights)  # a whole pickled module: refused by weights_only
    with pytest.raises(MedftError, match=r"model.pt: cannot read the weights as a state dict .*state_dict\(\)"):
        bundle.pretrained_state_dict()
    weights.unlink()
    with pytest.raises(MedftError, match=r"models: the bundle has no pretrained weights"):
        bundle.pretrained_state_dict()


@pytest.mark.parametrize("key", [None, "model"])
def test_weights_saved_from_ddp_read_without_the_module_prefix(tmp_path, key):
    """Every reader of the weights gets plain names: fine-tuning and evaluating the bundle as it is."""
    from medft.evaluate.inference import load_model

    root = make_bundle(tmp_path / "b", UNET3D, key=key, prefix="module.")
    saved = pretrained(root)[key] if key else pretrained(root)
    weights = load_bundle(root).pretrained_state_dict()
    assert list(weights) == [name.removeprefix("module.") for name in saved]
    model = load_model(root, torch.device("cpu"))
    assert all(torch.equal(model.network.state_dict()[name], tensor) for name, tensor in weights.items())

def test_folders_that_are_not_bundles(tmp_path):
    root = make_bundle(tmp_path / "b", UNET2D)
    (root / "configs" / "metadata.json").unlink()
    with pytest.raises(MedftError, match=r"/b: configs/metadata.json is missing"):
        load_bundle(root)
    root = make_bundle(tmp_path / "c", config={"network_def": UNET2D})
    (root / "configs" / "inference.json").write_text(json.dumps({"net": UNET2D}))
    with pytest.raises(MedftError, match=r"/c/configs: no config with a network_def"):
        load_bundle(root)
    (root / "configs" / "inference.json").write_text('{"network_def": ')
    with pytest.raises(MedftError, match=r"inference.json: cannot read it"):
        load_bundle(root)
    with pytest.raises(MedftError, match=r"no such bundle folder"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(MedftError, match=r"model.pt: a file, not a bundle folder"):
        load_bundle(root / "models" / "model.pt")


def test_a_zoo_name_offline_fails_clearly(tmp_path, capfd):
    expected = (r"cannot download bundle medft_no_such_bundle from the MONAI Model Zoo \(no network\?\).*Fix: download it "
                r"on a machine with a network \(python -c \"from monai.bundle import download; download\("
                r"name='medft_no_such_bundle', bundle_dir='DIR'\)\"\), copy the folder DIR/medft_no_such_bundle here")
    with pytest.raises(MedftError, match=expected):
        load_bundle("medft_no_such_bundle", cache_dir=tmp_path)
    assert "input summary" not in capfd.readouterr().err  # MONAI's argument log, noise before the error


def test_a_zoo_name_already_in_the_cache_needs_no_network(tmp_path):
    make_bundle(tmp_path / "tiny_zoo_bundle", UNET2D)
    assert load_bundle("tiny_zoo_bundle", cache_dir=tmp_path).root == (tmp_path / "tiny_zoo_bundle").resolve()
    assert load_bundle("tiny_zoo_bundle", version="0.1.0", cache_dir=tmp_path).version == "0.1.0"
    with pytest.raises(MedftError, match="cannot download bundle tiny_zoo_bundle"):
        load_bundle("tiny_zoo_bundle", version="9.9.9", cache_dir=tmp_path)
