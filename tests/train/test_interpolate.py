"""WiSE-FT (medft interpolate): alpha 0 and 1 reproduce the bundle and the run, alpha 0.5 is the midpoint,
the new head keeps the run's weights, and each folder evaluates and exports like a run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from medft.bundle.reader import load_bundle
from medft.cli import main
from medft.config import load_config
from medft.errors import MedftError
from medft.evaluate.inference import load_model, predict
from medft.formats import run as run_folder
from medft.formats.checkpoint import BEST, FOLDER, read_checkpoint
from medft.train.interpolate import interpolate_run, interpolate_state
from medft.train.recipe import run_training
from tests.bundle.helpers import UNET3D, make_bundle
from tests.train.helpers import VAL_IDS, make_config

CPU = torch.device("cpu")


def _train(root: Path, **changes) -> Path:
    torch.set_num_threads(1)
    run_training(load_config(make_config(root, **{"train.epochs": 1, "freeze": [], **changes})), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def same_classes(tmp_path_factory) -> Path:
    """A run that kept the bundle's three classes: no new head."""
    root = tmp_path_factory.mktemp("same")
    make_bundle(root / "bundle", {**UNET3D, "out_channels": 3})
    return _train(root)


@pytest.fixture(scope="module")
def new_head(tmp_path_factory) -> Path:
    """A run with three classes from a bundle of two: a new head."""
    return _train(tmp_path_factory.mktemp("head"))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(folder / FOLDER / BEST).model


def _bundle_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_bundle(run_folder.read_config(run).model.bundle).pretrained_state_dict()


def _val_image(model):
    return model.preprocess()({"case_id": VAL_IDS[0], "image": [_case(VAL_IDS[0])]})["image"]


def _case(case_id: str) -> Path:
    from tests.conftest import sample_case

    return sample_case(case_id)[0]


def test_alpha_1_is_the_run_and_alpha_0_the_bundle(same_classes, tmp_path):
    result = interpolate_run(same_classes, [1, 0], tmp_path / "wise")
    assert sorted(result.folders) == [0.0, 1.0] and not [n for n in result.kept if "num_batches" not in n]
    run, bundle = _weights(same_classes), _bundle_weights(same_classes)
    one, zero = _weights(result.folders[1.0]), _weights(result.folders[0.0])
    assert one.keys() == run.keys() and all(torch.equal(one[k], run[k]) for k in run)
    assert all(torch.equal(zero[k], bundle[k]) for k in result.interpolated)

    run_model = load_model(same_classes, CPU)
    image = _val_image(run_model)
    assert torch.equal(predict(load_model(result.folders[1.0], CPU), image), predict(run_model, image))

    bundle_model = load_model(run_folder.read_config(same_classes).model.bundle, CPU)
    alpha0 = load_model(result.folders[0.0], CPU)
    for key in ("roi_size", "overlap", "blend_mode", "sw_batch_size"):  # the bundle's own sliding window
        setattr(alpha0, key, getattr(bundle_model, key))
    image = _val_image(bundle_model)
    assert torch.equal(predict(alpha0, image), predict(bundle_model, image))
    assert run_folder.read_interpolation(result.folders[0.0]).alpha == 0
    assert run_folder.read_summary(result.folders[0.0]).best_val_dice is None


def test_the_new_head_keeps_the_runs_weights_and_the_body_is_mixed(new_head, tmp_path):
    result = interpolate_run(new_head, [0, 0.5], tmp_path / "wise")
    run, bundle = _weights(new_head), _bundle_weights(new_head)
    head = [k for k in run if k in bundle and run[k].shape != bundle[k].shape]
    assert head and set(head) <= set(result.kept)
    zero, half = _weights(result.folders[0.0]), _weights(result.folders[0.5])
    for name in head:
        assert torch.equal(zero[name], run[name]) and torch.equal(half[name], run[name])
    for name in result.interpolated:
        assert torch.equal(zero[name], bundle[name])
        torch.testing.assert_close(half[name], (bundle[name] + run[name]) / 2)
    assert any(not torch.equal(run[n], bundle[n]) for n in result.interpolated)  # training moved the body
    record = run_folder.read_interpolation(result.folders[0.5])
    assert record.kept == result.kept and record.parent_checkpoint == BEST
    # one set of weights and no training state: said as such, not as a run that has not finished an epoch
    with pytest.raises(MedftError, match=r"written by `medft interpolate`, it holds one set of weights .*Fix: leave out "
                                         r"--checkpoint last"):
        load_model(result.folders[0.5], CPU, checkpoint="last")
    folder = result.folders[0.5]
    with pytest.raises(MedftError, match=r"written by `medft interpolate`.*no training state to continue. Fix: resume "
                                         r"the parent run"):
        run_training(load_config(folder / run_folder.CONFIG), folder, resume=True)


def test_integer_buffers_and_unshared_tensors_keep_the_runs():
    run = {"w": torch.ones(2), "n": torch.tensor(5), "extra": torch.ones(1)}
    bundle = {"w": torch.zeros(2, dtype=torch.float16), "n": torch.tensor(1), "gone": torch.ones(1)}
    state, interpolated, kept = interpolate_state(run, bundle, 0.25)
    assert interpolated == ["w"] and kept == ["n", "extra"]
    assert state["w"].dtype == torch.float32 and torch.equal(state["w"], torch.full((2,), 0.25))
    assert int(state["n"]) == 5


def test_refusals(new_head, tmp_path):
    with pytest.raises(MedftError, match="from 0 to 1"):
        interpolate_run(new_head, [1.5], tmp_path / "a")
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(MedftError, match="not an empty folder"):
        interpolate_run(new_head, [0.5], full)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    config = yaml.safe_load((new_head / run_folder.CONFIG).read_text())
    config["model"], config["data"]["preprocessing"] = {"network_def": UNET3D}, "medft"
    (scratch / run_folder.CONFIG).write_text(yaml.safe_dump(config))
    with pytest.raises(MedftError, match="no pretrained weights to interpolate with"):
        interpolate_run(scratch, [0.5], tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(SystemExit) as exit:  # argparse's refusal, before anything is read
        main(["interpolate", str(new_head), "--alpha", "2", "--out", str(tmp_path / "c")])
    assert exit.value.code == 2


def test_the_command_evaluates_each_alpha_and_exports(new_head, tmp_path, capsys):
    out = tmp_path / "wise"
    manifest = new_head.parent / "manifest.csv"
    assert main(["interpolate", str(new_head), "--alpha", "0.5", "--out", str(out), "--manifest", str(manifest),
                 "--split", "test"]) == 1
    assert "no cases in split 'test' to choose alpha on" in capsys.readouterr().err and not out.exists()
    assert main(["interpolate", str(new_head), "--alpha", "0.5", "1", "--out", str(out), "--manifest", str(manifest)]) == 0
    printed = capsys.readouterr().out
    assert "tensors interpolated" in printed and str(out / "alpha_0.5") in printed
    assert "mean Dice on split val" in printed and "<- best mean" in printed
    assert len([line for line in printed.splitlines() if line.strip().startswith(("0.5 ", "1 "))]) == 2
    evaluation = json.loads((out / "alpha_1" / "eval_val" / "summary.json").read_text())
    assert evaluation["n_cases"] == len(VAL_IDS)
    assert main(["export", str(out / "alpha_0.5"), "--out", str(tmp_path / "bundle")]) == 0
    exported = json.loads((tmp_path / "bundle" / "configs" / "metadata.json").read_text())
    assert exported["eval_metrics"] == {}  # the parent's validation Dice is not this model's
    assert exported["medft"]["interpolation"]["alpha"] == 0.5 and "WiSE-FT" in exported["description"]
