"""Export: the bundle's metadata, LICENSE and README describe the fine-tuned model, not its parent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from medft.bundle.export import _inference_config, _network_data_format, _parent_entry, export_run
from medft.bundle.reader import load_bundle
from medft.config import load_config
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError
from medft.train.early_stopping import EarlyStopping
from medft.train.recipe import run_training
from tests.conftest import REPO
from tests.train.helpers import TRAIN_IDS, VAL_IDS, make_config

PARENT = REPO / "bundles" / "hippocampus_demo"  # pretrained on MSD cases, with their licence


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A one-epoch fine-tune of the shipped demo bundle on six sample cases, exported."""
    root = tmp_path_factory.mktemp("export")
    run_training(load_config(make_config(root, **{"model.bundle": str(PARENT), "train.epochs": 1})), root / "run")
    return root, export_run(root / "run", root / "exported")


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def _strings(node: object) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_the_metadata_states_the_fine_tuning_data_and_terms_not_the_parents(exported):
    _, bundle = exported
    metadata, parent = _metadata(bundle), json.loads((PARENT / "configs" / "metadata.json").read_text())
    assert "Medical Segmentation Decathlon" not in metadata["data_source"] + metadata["copyright"] + metadata["authors"]
    assert metadata["data_source"].startswith("Fine-tuned on 4 training and 2 validation cases of the manifest manifest.csv.")
    assert "FILL IN" in metadata["data_source"] and "FILL IN" in metadata["copyright"]
    assert "hippocampus_demo 1.0.0" in metadata["copyright"] and "licence" in metadata["copyright"]
    assert "pretraining_cases" not in metadata and "data_type" not in metadata
    assert metadata["changelog"] == {"0.1.0": "fine-tuned with medft 0.1.0 from hippocampus_demo 1.0.0"}
    assert parent["intended_use"] in metadata["intended_use"] and metadata["intended_use"].startswith("FILL IN")
    assert metadata["eval_metrics"]["val_mean_dice"] == metadata["medft"]["evaluation"]["val_dice"]


def test_the_parent_entry_carries_the_parents_metadata_verbatim(exported):
    _, bundle = exported
    entry = _metadata(bundle)["medft"]["parent_bundle"]
    parent = json.loads((PARENT / "configs" / "metadata.json").read_text())
    assert (entry["name"], entry["version"]) == ("hippocampus_demo", "1.0.0")
    for key in ("data_source", "copyright", "authors", "changelog", "intended_use", "pretraining_cases"):
        assert entry[key] == parent[key], key


def test_the_bundle_holds_no_local_path_and_no_case_id(exported):
    root, bundle = exported
    assert str(PARENT) in (root / "run" / "config.yaml").read_text()  # the run itself records where things were
    metadata = _metadata(bundle)
    assert metadata["medft"]["parent_bundle"]["source"] == "a local bundle folder"
    assert not [s for s in _strings(metadata) if s.startswith(("/", "~")) or str(REPO) in s or str(root) in s]
    written = "\n".join((bundle / name).read_text() for name in ("configs/metadata.json", "LICENSE", "docs/README.md"))
    assert str(root) not in written and str(REPO) not in written
    assert not [case for case in TRAIN_IDS + VAL_IDS if case in written]


def test_a_model_zoo_parent_is_recorded_by_name(tmp_path):
    parent = load_bundle(PARENT)
    config = SimpleNamespace(model=SimpleNamespace(bundle="hippocampus_demo"))  # a Model Zoo name, no folder here
    assert _parent_entry(config, parent)["source"] == "MONAI Model Zoo bundle hippocampus_demo"


def test_the_license_names_the_parent_then_quotes_its_licence(exported):
    _, bundle = exported
    licence, parents = (bundle / "LICENSE").read_text(), (PARENT / "LICENSE").read_text()
    origin, quoted = licence.split("----- Licence of hippocampus_demo 1.0.0 (verbatim) -----\n")
    assert quoted == parents
    assert "from the MONAI bundle hippocampus_demo, version 1.0.0" in " ".join(origin.split())
    assert "FILL IN: the terms of the data" in origin and "Decathlon" not in origin


def test_the_readme_says_what_the_bundle_is_and_where_it_comes_from(exported):
    _, bundle = exported
    readme, metadata = (bundle / "docs" / "README.md").read_text(), _metadata(bundle)
    assert readme.startswith("# hippocampus_demo (fine-tuned)\n")
    assert f"- Data: {metadata['data_source']}" in readme and f"- Licence: {metadata['copyright']}" in readme
    assert "- Parent: hippocampus_demo 1.0.0 (a local bundle folder)" in readme


def test_the_printed_notice_names_every_file_that_holds_a_fill_in(exported, tmp_path, caplog):
    root, _ = exported
    bundle = export_run(root / "run", tmp_path / "bundle")
    notice = next(r.getMessage() for r in caplog.records if "FILL IN" in r.getMessage())
    for name in ("configs/metadata.json", "LICENSE", "docs/README.md"):
        assert "FILL IN" in (bundle / name).read_text() and name in notice, name


def test_an_unreadable_manifest_leaves_a_data_source_without_counts(exported, tmp_path):
    root, _ = exported
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["manifest"] = str(tmp_path / "moved" / "manifest.csv")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    metadata = _metadata(export_run(run, tmp_path / "bundle"))
    assert metadata["data_source"].startswith("Fine-tuned on the cases of the manifest manifest.csv (not readable at export).")
    assert str(tmp_path) not in json.dumps(metadata)


def test_the_input_channels_are_described_one_by_one():
    config = SimpleNamespace(data=SimpleNamespace(spatial_size=[16, 16, 16]))
    checkpoint = SimpleNamespace(class_names=["background", "tumour"], network_def={"in_channels": 2})
    inputs = _network_data_format(config, checkpoint, {})["inputs"]["image"]
    assert inputs["num_channels"] == 2 and inputs["channel_def"] == {"0": "image channel 0", "1": "image channel 1"}


def test_a_folder_that_is_no_run_is_named_as_such(tmp_path):
    with pytest.raises(MedftError, match=r"nothere: no such folder. Fix: give the folder that `medft train --out` wrote"):
        export_run(tmp_path / "nothere", tmp_path / "bundle")
    (tmp_path / "notarun").mkdir()
    with pytest.raises(MedftError, match=r"notarun: not a run folder \(no config.yaml\)"):
        export_run(tmp_path / "notarun", tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_an_interrupted_export_leaves_no_bundle_folder(exported, tmp_path, monkeypatch):
    root, _ = exported
    out, seen = tmp_path / "bundle", []

    def interrupt(parent):  # LICENSE: models/model.pt and configs/ are written by then
        seen.append(out.exists())
        raise KeyboardInterrupt

    monkeypatch.setattr("medft.bundle.export._license", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export_run(root / "run", out)
    assert seen == [False], "the bundle folder appeared before it was complete"
    assert list(tmp_path.iterdir()) == [], "no bundle folder, and no partial one, is left"
    monkeypatch.undo()
    assert (export_run(root / "run", out) / "LICENSE").is_file()


def _run_copy(root: Path, tmp_path: Path, edit_metrics) -> Path:
    run = Path(shutil.copytree(root / "run", tmp_path / "run", ignore=shutil.ignore_patterns("tensorboard")))
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(edit_metrics(lines)))
    return run


CUT_LINE = '{"epoch": 1, "train_loss": 0.5, "val_di'  # a kill while the epoch's line was appended


def test_a_metrics_line_cut_short_by_a_kill_is_left_out(exported, tmp_path):
    root, bundle = exported
    run = _run_copy(root, tmp_path, lambda lines: [*lines, CUT_LINE])
    per_class = _metadata(export_run(run, tmp_path / "bundle"))["medft"]["evaluation"]["val_dice_per_class"]
    assert per_class == _metadata(bundle)["medft"]["evaluation"]["val_dice_per_class"] and set(per_class) == {"anterior", "posterior"}


def test_a_run_never_validated_exports_valid_json_that_says_so(exported, tmp_path):
    """last.pt only, with no best epoch (a run killed before its first validation, its last metrics line cut)."""
    root, _ = exported
    run = _run_copy(root, tmp_path, lambda lines: [*lines, CUT_LINE])
    (run / "checkpoints" / "best.pt").unlink()
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    last["early_stopping"] = EarlyStopping(patience=5, min_delta=0.0).state_dict()  # no validation yet
    torch.save(last, run / "checkpoints" / "last.pt")
    bundle = export_run(run, tmp_path / "bundle")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(), parse_constant=refuse)
    assert metadata["eval_metrics"] == {} and metadata["medft"]["evaluation"] is None
    readme = (bundle / "docs" / "README.md").read_text()
    assert "## Validation\nNone: the run never validated" in readme and "epoch -1" not in readme


def test_a_damaged_metrics_line_before_the_last_is_named_with_the_fix(exported, tmp_path):
    root, _ = exported
    run = _run_copy(root, tmp_path, lambda lines: ["{not json\n", *lines])
    with pytest.raises(MedftError, match=r"metrics\.jsonl, line 1: not an epoch's record as `medft train` writes it: "
                                         r"'\{not json'\. Fix: repair or delete that line"):
        export_run(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_a_class_without_validation_dice_exports_as_null(exported, tmp_path):
    """A class in no validation label map and never predicted has a NaN Dice in metrics.jsonl;
    metadata.json is strict JSON, so it holds null there (the export used to stop with an internal error)."""
    root, _ = exported

    def posterior_nan(lines):
        records = [json.loads(line) for line in lines]
        for record in records:
            if "val_dice_per_class" in record:
                record["val_dice_per_class"]["posterior"] = float("nan")
        return [json.dumps(record) + "\n" for record in records]

    bundle = export_run(_run_copy(root, tmp_path, posterior_nan), tmp_path / "bundle")

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    metadata = json.loads((bundle / "configs" / "metadata.json").read_text(), parse_constant=refuse)
    per_class = metadata["medft"]["evaluation"]["val_dice_per_class"]
    assert per_class["posterior"] is None and isinstance(per_class["anterior"], float)
    assert "| posterior | n/a (in no validation case, never predicted) |" in (bundle / "docs" / "README.md").read_text()


def test_the_exported_bundle_runs_with_plain_monai_as_medft_predicts(exported):
    """Every entry of inference.json parses with MONAI's ConfigParser, and its preprocessing, network,
    inferer and postprocessing give the labels that medft gives from the same bundle."""
    from monai.bundle import ConfigParser

    from medft.evaluate.inference import load_model, predict
    from tests.conftest import sample_case

    _, bundle = exported
    image = str(sample_case("hippocampus_340")[0])
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    network = parser.get_parsed_content("network")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": image})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    plain = parser.get_parsed_content("postprocessing")(data)["pred"]

    model = load_model(bundle, device=torch.device("cpu"))
    ours = predict(model, model.preprocess()({"case_id": "a", "image": [image]})["image"]).argmax(0)
    assert tuple(plain.shape) == (1, *ours.shape)
    assert torch.equal(plain[0].long(), ours)
    metadata = _metadata(bundle)
    assert metadata["medft"]["preprocessing"]["label_map"] == {}


def test_the_exported_inferer_gets_the_configured_windows_per_pass_else_four(tmp_path):
    """Plain MONAI runs the inferer as written: automatic (picked by medft for the device) becomes 4."""
    def windows(**changes) -> int:
        config = load_config(make_config(tmp_path, **changes))
        return _inference_config(config, {}, Preprocessing.medft(), {})["inferer"]["sw_batch_size"]

    assert windows() == 4
    assert windows(**{"validation.sw_batch_size": 2}) == 2
