"""medft export --adapter: a run's adapter alone, and evaluation and prediction on it with its parent bundle."""
import csv
import json
import shutil

import pytest
import torch

from medft import cli
from medft.config import load_config
from medft.errors import MedftError
from medft.evaluate.inference import load_model
from medft.evaluate.run import evaluate
from medft.formats.adapter import INFO, WEIGHTS, read_adapter
from medft.formats.evaluation import read_evaluation_file
from medft.train.adapter_export import export_adapter
from medft.train.lora import add_lora, is_adapter
from medft.train.network import prepare_network
from medft.train.recipe import run_training
from tests.bundle.helpers import pretrained
from tests.train.helpers import lora_config, make_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A LoRA run (rank 2, 2 epochs) and a BitFit run (1 epoch) on the tiny test bundle."""
    torch.set_num_threads(1)  # as every test runs (conftest): a module fixture runs before the test's own fixtures
    root = tmp_path_factory.mktemp("adapter")
    lora = lora_config(root)
    run_training(lora, root / "lora")
    bitfit = load_config(make_config(root, freeze=[], **{"finetune.method": "bitfit", "train.epochs": 1}))
    run_training(bitfit, root / "bitfit")
    return root, lora


@pytest.fixture(scope="module")
def lora_adapter(runs, tmp_path_factory):
    root, _ = runs
    out = tmp_path_factory.mktemp("exported") / "adapter"
    assert cli.main(["export", str(root / "lora"), "--out", str(out), "--adapter"]) == 0
    return out


def _outputs(folder, **options) -> torch.Tensor:
    model = load_model(folder, device=torch.device("cpu"), **options)
    image = torch.randn(1, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.network(image)


def test_the_adapter_holds_the_adapters_and_the_head_only_and_predicts_what_the_run_predicts(runs, lora_adapter):
    root, config = runs
    prepared = prepare_network(config.model, 3)
    add_lora(prepared.network, prepared.head, config.finetune.lora)
    adapters = {name for name, _ in prepared.network.named_parameters() if is_adapter(name)}
    info, tensors = read_adapter(lora_adapter)
    assert adapters and prepared.head and set(tensors) == adapters | prepared.head
    assert sorted(p.name for p in lora_adapter.iterdir()) == sorted([INFO, WEIGHTS, "config.yaml", "preprocessing.json"])

    parent = pretrained(root / "bundle")
    parent_bytes = sum(t.numel() * t.element_size() for t in parent.values())
    stored_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    parameters = sum(t.numel() for t in tensors.values())
    assert (info.method, info.lora.rank, info.checkpoint, info.parent.bundle) == ("lora", 2, "best.pt", str(root / "bundle"))
    assert (info.stored.tensors, info.stored.parameters, info.stored.bytes) == (len(tensors), parameters, stored_bytes)
    assert (info.parent.tensors, info.parent.bytes) == (len(parent), parent_bytes)
    assert info.class_names == ["background", "anterior", "posterior"]
    assert stored_bytes < parent_bytes / 2

    expected = _outputs(root / "lora")
    got = _outputs(lora_adapter)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert load_model(lora_adapter, device=torch.device("cpu")).info.kind == "adapter"


def test_the_export_prints_the_adapters_size_against_the_parents(runs, tmp_path, capsys):
    root, _ = runs
    out = tmp_path / "adapter"
    assert cli.main(["export", str(root / "lora"), "--out", str(out), "--adapter"]) == 0
    info, _ = read_adapter(out)
    share = info.stored.bytes / info.parent.bytes
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported the adapter of {root / 'lora'}: {info.stored.parameters:,} parameters in "
                              f"{info.stored.tensors} tensors, ")
    assert f"({share:.1%} of the " in printed and f"-> {out}; it runs on the parent bundle {root / 'bundle'}" in printed
    assert "whole network" not in printed


def test_evaluating_the_adapter_gives_the_runs_dice(runs, lora_adapter, tmp_path):
    root, _ = runs
    manifest = root / "manifest.csv"
    evaluate(root / "lora", manifest, tmp_path / "run_eval", split="val")
    evaluate(lora_adapter, manifest, tmp_path / "adapter_eval", split="val")

    def dice(folder):
        with open(folder / "per_case.csv") as file:
            return {(r["case_id"], r["class_name"]): float(r["dice"]) for r in csv.DictReader(file)}

    expected = dice(tmp_path / "run_eval")
    assert len({case for case, _ in expected}) == 2 and len(expected) == 6  # two cases, three classes
    assert dice(tmp_path / "adapter_eval") == pytest.approx(expected, abs=1e-6, nan_ok=True)
    model = read_evaluation_file(tmp_path / "adapter_eval").model
    assert (model.kind, model.parent, model.checkpoint) == ("adapter", "bundle", "best.pt")
    assert "adapter (medft) on the bundle bundle 0.1.0" in (tmp_path / "adapter_eval" / "report.html").read_text()


def test_the_parent_can_be_given_elsewhere_and_must_hold_the_same_weights(runs, lora_adapter, tmp_path, capsys):
    root, _ = runs
    away = tmp_path / "away"  # the adapter on another machine: the parent is not where adapter.json says
    shutil.copytree(lora_adapter, away)
    info = json.loads((away / INFO).read_text())
    info["parent"]["bundle"] = str(tmp_path / "elsewhere" / "bundle")
    (away / INFO).write_text(json.dumps(info))
    with pytest.raises(MedftError, match=r"away: the adapter's parent bundle .*elsewhere/bundle cannot be loaded .* "
                                         r"Fix: give the parent bundle's folder with --parent PARENT_DIR"):
        load_model(away, device=torch.device("cpu"))

    moved = tmp_path / "moved"
    shutil.copytree(root / "bundle", moved)
    assert torch.allclose(_outputs(away, parent=moved), _outputs(root / "lora"), rtol=1e-5, atol=1e-5)
    out = tmp_path / "predictions"
    image = str(root / "manifest.csv")  # any sample image: the first of the manifest
    with open(image) as file:
        image = next(csv.DictReader(file))["image"]
    assert cli.main(["predict", str(away), image, "--parent", str(moved), "--out", str(out)]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 1

    other = tmp_path / "other"
    shutil.copytree(root / "bundle", other)
    weights = pretrained(other)
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    torch.save(weights, other / "models" / "model.pt")
    with pytest.raises(MedftError, match=r"away: its parent bundle .*other holds other pretrained weights than the adapter "
                                         r"was trained on .* Fix: give the parent bundle's folder with --parent"):
        load_model(away, device=torch.device("cpu"), parent=other)
    with pytest.raises(MedftError, match=r"--parent names the parent bundle of an adapter folder .* Fix: leave out --parent"):
        load_model(root / "lora", device=torch.device("cpu"), parent=moved)


def test_a_bitfit_runs_adapter_holds_its_biases_and_head(runs, tmp_path):
    root, config = runs
    exported = export_adapter(root / "bitfit", tmp_path / "bitfit_adapter")
    _, tensors = read_adapter(tmp_path / "bitfit_adapter")
    head = prepare_network(config.model, 3).head
    parent = pretrained(root / "bundle")
    assert head <= set(tensors)
    biases = [name for name in tensors if name not in head]
    assert biases and all(name.endswith("bias") for name in biases)
    for name, tensor in tensors.items():  # only what differs from the parent
        assert name in head or not torch.equal(tensor, parent[name]), name
    assert exported.info.method == "bitfit" and exported.info.lora is None
    assert torch.allclose(_outputs(tmp_path / "bitfit_adapter"), _outputs(root / "bitfit"), rtol=1e-5, atol=1e-5)


def test_a_full_fine_tuning_is_exported_whole_with_a_note(runs, tmp_path):
    root, _ = runs
    config = load_config(make_config(root, freeze=[], **{"train.epochs": 1}))
    run_training(config, tmp_path / "full")
    text = export_adapter(tmp_path / "full", tmp_path / "full_adapter").describe(tmp_path / "full")
    assert "the adapter is the whole network: the bundle export" in text
