import re
from pathlib import Path

import pytest
import yaml

from medft.cli import main
from medft.config import dump_config, load_config, validate_config
from medft.errors import MedftError
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid_and_says_how_to_run_it(path):
    config = load_config(path)
    assert path.read_text().startswith("# Run: ")
    assert Path(config.data.manifest).is_absolute()
    assert Path(config.data.manifest).exists() or "shared" in config.data.manifest


@pytest.mark.parametrize("path", [p for p in CONFIGS if "network_def:" in p.read_text()],
                         ids=lambda p: p.name)
def test_every_shipped_network_builds_and_segments_its_patch(path):
    import torch

    from medft.train.network import prepare_network

    config = load_config(path)
    prepared = prepare_network(config.model, num_classes=3)
    x = torch.zeros(1, prepared.in_channels, *config.data.spatial_size)
    prepared.network.eval()
    with torch.no_grad():
        assert prepared.network(x).shape == (1, 3, *config.data.spatial_size)


def test_the_hippocampus_step_cap_is_a_whole_epoch_of_its_own_split():
    """The recipe was measured with whole epochs of fold 0 (160 cases, batch 2); its cap only
    keeps the budget fixed when a manifest brings more training cases."""
    import csv

    config = load_config(REPO / "configs" / "hippocampus.yaml")
    with open(config.data.manifest, newline="") as f:
        n_train = sum(row["split"] == "train" for row in csv.DictReader(f))
    per_epoch = n_train * config.data.samples_per_volume // config.train.batch_size
    assert config.train.max_steps_per_epoch == per_epoch == 80


def test_every_key_is_listed_with_a_description_sections_lists_and_mappings_included():
    from medft.config import describe_keys
    from medft.tune.space import RunConfigWithSearch

    rows = {key: (kind, description) for key, kind, description in describe_keys(RunConfigWithSearch)}
    assert all(description for _, description in rows.values()), [k for k, (_, d) in rows.items() if not d]
    assert rows["data.spatial_size"][0] == "list[int], required"
    assert rows["optim.lr"][0] == "float, default 0.001"
    assert rows["train.loss"][0] == "dice_ce | dice | ce, default dice_ce"
    assert rows["freeze"][0].startswith("list") and rows["freeze.N.preset"][0].startswith("none | all_but_head | encoder")
    assert rows["search.params"][0].startswith("mapping") and "search.params.NAME.low" in rows


def test_validate_keys_lists_them_and_unknown_keys_point_there(capsys):
    assert main(["validate", "--keys"]) == 0
    out = capsys.readouterr().out
    assert "train.max_steps_per_epoch  (int | None, default none)\n    Cap on steps per epoch" in out
    with pytest.raises(MedftError, match=r"data.bogus: unknown key \(check its spelling; `medft validate --keys`"):
        load_config(REPO / "configs" / "demo.yaml", ["data.bogus=1"])


def test_all_errors_are_reported_at_once_with_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "model": {"bundle": "x", "netwrok_overrides": {}},
        "data": {"manifest": "m.csv", "spatial_size": [48, 64, 48], "sampling": "slices"},
        "train": {"epochs": 0, "batch_size": "two"},
        "freeze": [{"epoch": 3, "preset": "all_but_head"}, {"epoch": 1, "preset": "none"}],
    }))
    with pytest.raises(MedftError) as err:
        load_config(bad)
    message = str(err.value)
    assert message.startswith(f"{bad}: ")
    for expected in (
        "model.netwrok_overrides: unknown key",
        "data.sampling: Input should be 'whole' or 'patch' (got 'slices')",
        "train.epochs: Input should be greater than or equal to 1 (got 0)",
        "train.batch_size: Input should be a valid integer",
    ):
        assert expected in message
    assert "5 problem(s)" in message  # the freeze order is checked once the fields are valid


def test_set_overrides_are_typed_and_checked(tmp_path):
    config = load_config(REPO / "configs" / "demo.yaml", ["train.epochs=3", "optim.lr=3e-4", "data.augmentation=none"])
    assert (config.train.epochs, config.optim.lr, config.data.augmentation) == (3, 3e-4, "none")
    with pytest.raises(MedftError, match="train.epoch: unknown key"):
        load_config(REPO / "configs" / "demo.yaml", ["train.epoch=3"])
    with pytest.raises(MedftError, match="expected dotted.key=value"):
        load_config(REPO / "configs" / "demo.yaml", ["train.epochs"])


def test_set_reaches_into_a_list_by_index_and_names_a_wrong_one():
    config = load_config(REPO / "configs" / "demo.yaml", ["freeze.1.preset=none", "freeze.0.epoch=0"])
    assert [stage.preset for stage in config.freeze][:2] == [load_config(REPO / "configs" / "demo.yaml").freeze[0].preset, "none"]
    with pytest.raises(MedftError, match=r"freeze is a list of 3; '3' is not one of its indices \(0 to 2\)"):
        load_config(REPO / "configs" / "demo.yaml", ["freeze.3.preset=none"])
    with pytest.raises(MedftError, match="seed is a value, not a section. Fix: --set seed=VALUE"):
        load_config(REPO / "configs" / "demo.yaml", ["seed.x=1"])


def test_model_needs_exactly_one_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {}\ndata: {manifest: m.csv, spatial_size: [8, 8, 8]}\n")
    with pytest.raises(MedftError, match="give exactly one of model.bundle"):
        load_config(path)


def test_flip_axes_are_spatial_axes_each_once():
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo).data.flip_axes == [0]
    assert load_config(demo, ["data.flip_axes=[0, 1, 2]"]).data.flip_axes == [0, 1, 2]
    for bad in ("[3]", "[0, 0]", "[-1]"):
        with pytest.raises(MedftError, match=r"data.flip_axes .*each axis once, from 0 to 2 .*Fix: e.g. \[0\]"):
            load_config(demo, [f"data.flip_axes={bad}"])


def test_patch_options_with_whole_volume_sampling_are_refused_not_ignored():
    """A CT config with samples_per_volume and foreground_ratio but no sampling: patch trained on one random
    crop of each volume, mostly background, without a word (benchmarks/ct_scale.py did)."""
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo).data.sampling == "whole"
    with pytest.raises(MedftError, match=r"data.samples_per_volume and data.foreground_ratio apply to data.sampling: "
                                         r"patch, and sampling is whole: .*Fix: set data.sampling: patch"):
        load_config(demo, ["data.samples_per_volume=3", "data.foreground_ratio=0.9"])
    with pytest.raises(MedftError, match=r"data.foreground_ratio applies to data.sampling: patch"):
        load_config(demo, ["data.foreground_ratio=0.9"])
    saved = load_config(demo).model_dump(mode="json")  # as a run's config.yaml: every key, the defaults included
    assert validate_config(saved, source="config.yaml").data.sampling == "whole"
    patch = load_config(demo, ["data.sampling=patch", "data.samples_per_volume=2", "data.foreground_ratio=0.9"]).data
    assert (patch.samples_per_volume, patch.foreground_ratio) == (2, 0.9)


def test_elastic_is_a_probability_for_3d_volumes():
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo).data.elastic == 0
    assert load_config(demo, ["data.elastic=0.3"]).data.elastic == 0.3
    with pytest.raises(MedftError, match=r"data.elastic"):
        load_config(demo, ["data.elastic=1.5"])
    with pytest.raises(MedftError, match=r"data.elastic 0.3: elastic deformation is for 3D volumes .*Fix: set data.elastic to 0"):
        load_config(demo, ["data.elastic=0.3", "data.spatial_size=[48, 64]"])


def test_mirrored_axes_are_the_flip_axes_unless_augmentation_is_off():
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo, ["data.flip_axes=[0, 2]"]).data.mirrored_axes == [0, 2]
    assert load_config(demo, ["data.augmentation=light"]).data.mirrored_axes == [0]
    assert load_config(demo, ["data.augmentation=none", "data.flip_axes=[0, 2]"]).data.mirrored_axes == []


def test_validate_command(capsys):
    assert main(["validate", str(REPO / "configs" / "demo.yaml")]) == 0
    assert capsys.readouterr().out.strip().endswith("demo.yaml: valid")
    assert main(["validate", str(REPO / "configs" / "demo.yaml"), "--set", "train.epochs=-1"]) == 1
    capsys.readouterr()
    missing = ["--set", "data.manifest=/no/such.csv", "--set", "model.bundle=/no/bundle"]
    assert main(["validate", str(REPO / "configs" / "demo.yaml"), *missing]) == 1
    out = capsys.readouterr().out
    assert "data.manifest: /no/such.csv: no such file or folder" in out
    assert "model.bundle: /no/bundle: no such bundle folder" in out and out.strip().endswith("2 missing path(s)")


def test_set_paths_start_at_the_working_directory_as_the_hippocampus_config_says(monkeypatch, tmp_path):
    """configs/hippocampus.yaml: `--set data.manifest=data_manifests/hippocampus_fold1.csv`, run from
    the repository, used to resolve against configs/ and name configs/data_manifests/... (no such file)."""
    monkeypatch.chdir(REPO)
    config = load_config(REPO / "configs" / "hippocampus.yaml", ["data.manifest=data_manifests/hippocampus_fold1.csv"])
    assert config.data.manifest == str(REPO / "data_manifests" / "hippocampus_fold1.csv")
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo).data.manifest == str(REPO / "data_manifests" / "hippocampus_sample.csv")  # the file's folder
    assert load_config(demo, ["model.bundle=bundles/hippocampus_demo"]).model.bundle == str(REPO / "bundles" / "hippocampus_demo")
    assert load_config(demo, ["model={bundle: ./bundles/hippocampus_demo}"]).model.bundle == str(REPO / "bundles" / "hippocampus_demo")
    assert load_config(demo, ["model.bundle=spleen_ct_segmentation"]).model.bundle == "spleen_ct_segmentation"  # a Model Zoo name
    monkeypatch.chdir(tmp_path)
    assert load_config(demo, ["data.manifest=m.csv"]).data.manifest == str(tmp_path.resolve() / "m.csv")


SET_EXAMPLE = re.compile(r"--set\s+([\w.]+=[^\s`)]*[^\s`).,;])")  # not the full stop after one


DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc, config", [*((doc, "demo.yaml") for doc in DOCS), *((f"configs/{p.name}", p.name) for p in CONFIGS)])
def test_every_set_example_of_the_docs_loads(monkeypatch, doc, config):
    """README's `--set freeze.1.epoch=4` made the epochs of configs/demo.yaml's stages 0, 4, 4: an error."""
    monkeypatch.chdir(REPO)  # the examples run from the repository
    examples = [e for e in SET_EXAMPLE.findall((REPO / doc).read_text()) if not e.startswith("KEY=")]  # not a usage line
    assert examples or doc != "docs/fine-tuning.md"
    for example in examples:
        loaded = load_config(REPO / "configs" / config, [example])
        if example.startswith("data.manifest="):
            assert Path(loaded.data.manifest).is_file(), example


@pytest.mark.parametrize("size", ["[0, 64, 48]", "[-4, 64, 48]", "[]", "[48]", "[8, 8, 8, 8]"])
def test_spatial_size_needs_a_positive_size_per_axis(size):
    """[0, 64, 48] used to pass `medft validate` ("valid") and fail in the network's first convolution."""
    with pytest.raises(MedftError, match=r"data.spatial_size: one size of at least 1 voxel per spatial axis .*Fix"):
        load_config(REPO / "configs" / "demo.yaml", [f"data.spatial_size={size}"])


@pytest.mark.parametrize("pattern, message", [
    ("(encoder", r"freeze pattern '\(encoder' is not a valid regular expression"),
    ("", "an empty freeze pattern matches every parameter name"),
])
def test_freeze_patterns_are_checked_by_validate(pattern, message):
    """An invalid regular expression used to pass `medft validate` and stop `medft train` only at setup."""
    with pytest.raises(MedftError, match=rf"freeze.0.patterns: {message}"):
        load_config(REPO / "configs" / "demo.yaml", [f"freeze.0.patterns={[pattern]!r}"])


def test_a_key_given_twice_is_an_error_naming_it_and_its_line(tmp_path):
    """PyYAML keeps the last of two `train:` sections silently: the first one's keys were lost."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {bundle: b}\ndata: {manifest: m.csv, spatial_size: [8, 8, 8]}\n"
                    "train:\n  epochs: 3\ntrain:\n  batch_size: 4\n")
    with pytest.raises(MedftError, match=r"(?s)c.yaml: not valid YAML.*the key 'train' twice.*c.yaml\", line 5"):
        load_config(path)


def test_an_empty_section_takes_its_defaults_and_set_reaches_into_it(tmp_path):
    """`optim:` with every key commented out reads as null: it used to be "Input should be a valid
    dictionary", and --set optim.lr=... said "optim is a value, not a section"."""
    path = tmp_path / "c.yaml"
    path.write_text("model: {bundle: b}\ndata: {manifest: m.csv, spatial_size: [8, 8, 8]}\noptim:\nfreeze:\n"
                    "early_stopping:\n  # patience: 3\n")
    config = load_config(path)
    assert (config.optim.lr, config.freeze, config.early_stopping.patience) == (1e-3, [], 10)
    assert load_config(path, ["optim.lr=0.1"]).optim.lr == 0.1
    path.write_text("model:\ndata: {manifest: m.csv, spatial_size: [8, 8, 8]}\n")
    with pytest.raises(MedftError, match="model: Input should be a valid dictionary"):  # required: still an error
        load_config(path)


def test_a_file_that_is_no_text_is_a_clear_error(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x02\xff\xfe binary")
    with pytest.raises(MedftError, match="model.pt: not a text file, so not a YAML run config. Fix"):
        load_config(path)


def test_network_overrides_without_a_bundle_are_refused_not_ignored():
    """prepare_network applies model.network_overrides to a bundle's network_def only: with
    model.network_def they were silently ignored (a run with another network than asked)."""
    with pytest.raises(MedftError, match=r"model.network_overrides \['dropout'\] set arguments of a bundle's "
                                         r"network_def; without a bundle they would be ignored. Fix: give them in model.network_def"):
        load_config(REPO / "configs" / "hippocampus.yaml", ["model.network_overrides={dropout: 0.2}"])
    assert load_config(REPO / "configs" / "demo.yaml", ["model.network_overrides={dropout: 0.2}"]).model.network_overrides


def test_an_empty_plain_value_is_still_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed:\nmodel: {bundle: b}\ndata: {manifest: m.csv, spatial_size: [8, 8, 8]}\n")
    with pytest.raises(MedftError, match="seed: Input should be a valid integer"):
        load_config(path)


def test_the_preprocessing_follows_the_model_and_takes_only_its_own_keys():
    bundle = load_config(REPO / "configs" / "demo.yaml")
    assert (bundle.data.preprocessing, bundle.data.intensity) == ("bundle", None)
    scratch = load_config(REPO / "configs" / "hippocampus.yaml")
    assert (scratch.data.preprocessing, scratch.data.intensity, scratch.data.spacing) == ("medft", "zscore", None)
    with pytest.raises(MedftError, match=r"\n  data.spacing, data.intensity choose medft's own preprocessing.*Fix: remove "
                                         r"data.spacing, data.intensity, or set data.preprocessing: medft"):
        load_config(REPO / "configs" / "demo.yaml", ["data.intensity=zscore", "data.spacing=auto"])
    own = load_config(REPO / "configs" / "demo.yaml", ["data.preprocessing=medft", "data.spacing=[1, 1, 2]",
                                                       "data.intensity=percentiles", "data.intensity_range=[1, 99]"])
    assert (own.data.spacing, own.data.intensity_range) == ([1.0, 1.0, 2.0], [1.0, 99.0])
    with pytest.raises(MedftError, match="has no model.bundle. Fix: set data.preprocessing: medft"):
        load_config(REPO / "configs" / "hippocampus.yaml", ["data.preprocessing=bundle"])


@pytest.mark.parametrize("settings, message", [
    (["data.intensity=ct_window"], "needs the window. Fix: set data.intensity_range: [low, high] in HU"),
    (["data.intensity=zscore", "data.intensity_range=[0, 1]"], "applies to data.intensity ct_window and percentiles"),
    (["data.intensity=percentiles", "data.intensity_range=[5, 120]"], "percentiles lie from 0 to 100"),
    (["data.intensity=ct_window", "data.intensity_range=[100, -100]"], "give [low, high] with low below high"),
    (["data.spacing=[1, 1]"], "data.spacing [1.0, 1.0] has 2 axes, data.spatial_size 3"),
    (["data.spacing=[1, 0, 1]"], "one voxel size in mm above 0 per spatial axis, or auto"),
])
def test_medft_preprocessing_values_are_checked(settings, message):
    with pytest.raises(MedftError, match=re.escape(message)):
        load_config(REPO / "configs" / "hippocampus.yaml", settings)



def test_the_finetune_method_is_checked_and_a_full_one_dumps_as_before_it_existed():
    demo = REPO / "configs" / "demo.yaml"
    with pytest.raises(MedftError, match=r"finetune.method: Input should be 'full', 'bitfit' or 'lora' \(got 'adapters'\)"):
        load_config(demo, ["finetune.method=adapters"])
    assert load_config(demo).finetune.method == "full"
    assert "finetune" not in dump_config(load_config(demo))  # an older run's config.yaml still compares equal on resume
    bitfit = load_config(demo, ["finetune.method=bitfit"])
    dumped = yaml.safe_load(dump_config(bitfit))
    assert dumped["finetune"] == {"method": "bitfit"}
    assert validate_config(dumped, source="config.yaml").finetune.method == "bitfit"
    lora = yaml.safe_load(dump_config(load_config(demo, ["finetune.method=lora"])))  # the adapters' settings, all of them
    assert lora["finetune"] == {"method": "lora", "lora": {"rank": 8, "alpha": None, "dropout": 0.0, "target_modules": None}}
    assert validate_config(lora, source="config.yaml").finetune.lora.rank == 8


def test_linear_probe_epochs_is_the_lp_ft_freezing_schedule_and_refuses_a_freeze_list():
    demo = REPO / "configs" / "demo.yaml"
    lp_ft = load_config(demo, ["freeze=[]", "finetune.linear_probe_epochs=3"])
    assert [(s.epoch, s.preset, s.patterns) for s in lp_ft.freeze_stages] == [(0, "all_but_head", []), (3, "none", [])]
    dumped = yaml.safe_load(dump_config(lp_ft))
    assert dumped["finetune"] == {"method": "full", "linear_probe_epochs": 3}
    assert validate_config(dumped, source="config.yaml").freeze_stages == lp_ft.freeze_stages
    assert load_config(demo).freeze_stages == load_config(demo).freeze  # without it, the freeze list
    with pytest.raises(MedftError, match=r"finetune.linear_probe_epochs 3 is the freezing schedule .* also gives a freeze "
                                         r"list. Fix: remove freeze \(or set it to \[\]\), or remove finetune.linear_probe_epochs"):
        load_config(demo, ["finetune.linear_probe_epochs=3"])
    with pytest.raises(MedftError, match="linear_probe_epochs"):
        load_config(demo, ["freeze=[]", "finetune.linear_probe_epochs=0"])
    with pytest.raises(MedftError, match=r"finetune.linear_probe_epochs 4 is not below train.epochs 4: the body would never "
                                         r"train .*Fix: give fewer probe epochs"):
        load_config(demo, ["freeze=[]", "train.epochs=4", "finetune.linear_probe_epochs=4"])


def test_linear_probe_epochs_auto_is_checked_and_dumps_as_given():
    demo = REPO / "configs" / "demo.yaml"
    auto = load_config(demo, ["freeze=[]", "train.epochs=10", "train.val_every=2", "finetune.linear_probe_epochs=auto"])
    assert auto.finetune.linear_probe_epochs == "auto"
    assert [(s.epoch, s.preset) for s in auto.freeze_stages] == [(0, "all_but_head"), (5, "none")]  # the latest switch
    dumped = yaml.safe_load(dump_config(auto))
    assert dumped["finetune"] == {"method": "full", "linear_probe_epochs": "auto"}
    assert validate_config(dumped, source="config.yaml") == auto  # a resumed run's config.yaml compares equal
    assert load_config(demo, ["freeze=[]", "finetune.linear_probe_epochs=2.0"]).finetune.linear_probe_epochs == 2
    with pytest.raises(MedftError, match=r"finetune.linear_probe_epochs auto is the freezing schedule \[\{epoch: 0, preset: "
                                         r"all_but_head\}, \{epoch: the epoch its head's validation Dice stops rising, preset: "
                                         r"none\}\], and this config also gives a freeze list. Fix: remove freeze"):
        load_config(demo, ["train.epochs=10", "finetune.linear_probe_epochs=auto"])
    no_validation_in_time = (r"finetune.linear_probe_epochs auto switches at the first validation whose Dice does not rise "
                             r"\(the second validation at the earliest, at the end of epoch {first} with train.val_every "
                             r"{every}\) and at the latest at epoch train.epochs // 2 = {cap} \(train.epochs {epochs}\): no "
                             r"validation could stop the probe before that. Fix: raise train.epochs to at least {least}, "
                             r"or lower train.val_every, or give finetune.linear_probe_epochs as a number of epochs")
    for epochs, every, least in ((1, 1, 6), (5, 1, 6), (9, 2, 10), (50, 50, 202)):
        with pytest.raises(MedftError, match=no_validation_in_time.format(first=2 * every - 1, every=every, cap=epochs // 2,
                                                                          epochs=epochs, least=least)):
            load_config(demo, ["freeze=[]", f"train.epochs={epochs}", f"train.val_every={every}",
                               "finetune.linear_probe_epochs=auto"])
        load_config(demo, ["freeze=[]", f"train.epochs={least}", f"train.val_every={every}", "finetune.linear_probe_epochs=auto"])
    for wrong in ("often", "0", "2.5", "true"):
        with pytest.raises(MedftError, match=r"finetune.linear_probe_epochs: .* is neither a number of epochs \(1 or more\) "
                                             r"nor auto. Fix: give the probe's epochs, or auto"):
            load_config(demo, ["freeze=[]", f"finetune.linear_probe_epochs={wrong}"])
