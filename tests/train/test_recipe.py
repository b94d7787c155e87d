"""The training recipe end to end, with a tiny bundle on real sample cases."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.transforms import Compose, LoadImaged, NormalizeIntensityd, Orientationd, ResizeWithPadOrCrop

from medft.bundle.export import export_run
from medft.config import TrainConfig, load_config
from medft.data.loading import LoadCased
from medft.errors import MedftError
from medft.train.freezing import frozen_parameter_names, is_bias
from medft.train.network import prepare_network
from medft.train.recipe import TrainingInterrupted, run_training
from tests.bundle.helpers import UNET3D, make_bundle, pretrained
from tests.conftest import REPO, sample_case, write_csv
from tests.train.helpers import TRAIN_IDS, VAL_IDS, make_config, two_series_image


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("run")
    config_path = make_config(root)
    run_dir = root / "out"
    run_training(load_config(config_path), run_dir)
    return root, run_dir


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_run_folder_holds_the_contract_files(finished_run):
    _, run_dir = finished_run
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt", "train.log",
                 "head_adaptation.txt", "summary.json"):
        assert (run_dir / name).is_file(), name
    records = _metrics(run_dir)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert [r["frozen_tensors"] > 0 for r in records] == [True, True, False, False]
    assert records[0]["frozen_tensors"] > records[1]["frozen_tensors"]
    log = (run_dir / "train.log").read_text()
    assert "medft" in log and "epoch 3" in log
    assert f"{len(TRAIN_IDS)} training and {len(VAL_IDS)} validation cases" in log
    assert "epoch 1: freezing stage encoder" in log and "epoch 2: freezing stage none, 0 of" in log
    assert "loaded" in (run_dir / "head_adaptation.txt").read_text()


def test_the_validation_dice_matches_an_independent_monai_computation(finished_run):
    """Recompute the best epoch's validation Dice from best.pt with MONAI's DiceMetric."""
    _, run_dir = finished_run
    best = json.loads((run_dir / "summary.json").read_text())
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    network = ConfigParser({"net": checkpoint["network_def"]}).get_parsed_content("net")
    network.load_state_dict(checkpoint["model"])
    network.eval()
    inferer = SlidingWindowInferer(roi_size=[32, 48, 32], sw_batch_size=4, overlap=0.25, mode="gaussian")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    keys = ["image", "label"]
    prep = Compose([LoadImaged(keys, image_only=True, ensure_channel_first=True),
                    Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                    NormalizeIntensityd("image", channel_wise=True)])  # the test bundle's preprocessing, in plain MONAI
    with torch.no_grad():
        for case in VAL_IDS:
            image, label = sample_case(case)
            record = prep({"image": str(image), "label": str(label)})
            pred = inferer(record["image"][None], network).argmax(1, keepdim=True)
            metric(one_hot(pred, 3), one_hot(record["label"][None], 3))
    per_class = metric.aggregate().nanmean(0)
    assert best["best_val_dice"] == pytest.approx(float(per_class.nanmean()), abs=1e-6)
    best_line = next(r for r in _metrics(run_dir) if r["epoch"] == best["best_epoch"])
    assert list(best_line["val_dice_per_class"].values()) == pytest.approx(per_class.tolist(), abs=1e-6)


def test_frozen_tensors_stay_bit_identical(tmp_path):
    config = make_config(tmp_path, freeze=[{"epoch": 0, "preset": "all_but_head"}], **{"train.epochs": 2})
    run_training(load_config(config), tmp_path / "out")
    before = pretrained(tmp_path / "bundle")
    after = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["model"]
    head = {n for n in after if n.startswith("model.2.")}  # the top up-layer of MONAI's UNet
    assert head
    for name, tensor in after.items():
        if name in head:
            continue
        assert torch.equal(tensor, before[name]), name
    assert any(not torch.equal(after[n], before[n]) for n in head if before[n].shape == after[n].shape) or \
        any(before[n].shape != after[n].shape for n in head)


def test_the_lp_ft_preset_trains_the_head_alone_first(tmp_path):
    """finetune.linear_probe_epochs 1: epoch 0 changes only the head, epoch 1 the body too; train.log names the phases."""
    config = make_config(tmp_path, freeze=[], **{"finetune.linear_probe_epochs": 1, "train.epochs": 2})
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    after = {}

    def snapshot(epoch, value):  # the checkpoint of each epoch is written before its validation is reported
        after[epoch] = torch.load(last, weights_only=False)["model"]

    run_training(load_config(config), tmp_path / "out", on_validation=snapshot)
    before = pretrained(tmp_path / "bundle")
    head = {n for n in after[0] if n.startswith("model.2.")}  # the top up-layer of MONAI's UNet
    body = [n for n in after[0] if n not in head and n in before and n.endswith((".weight", ".bias"))]
    assert head and body
    assert all(torch.equal(after[0][n], before[n]) for n in after[0] if n not in head), "the body moved in the linear probe"
    assert any(not torch.equal(after[0][n], after[1][n]) for n in head)
    changed = [n for n in body if not torch.equal(after[1][n], before[n])]
    assert len(changed) == len(body), sorted(set(body) - set(changed))
    text = (tmp_path / "out" / "train.log").read_text()
    assert "epoch 0: freezing stage all_but_head (LP-FT: linear probe, the head alone until epoch 1)," in text
    assert "epoch 1: freezing stage none (LP-FT: fine-tuning everything, the body at optim.lr)," in text


def _scripted_validation(monkeypatch, dices: list[float]) -> list[int]:
    """Each epoch's validation Dice (both classes) from ``dices``, by epoch, resumed runs included; the
    epochs validated are returned."""
    from medft.train.recipe import FineTuneRecipe

    validated: list[int] = []
    train_epoch = FineTuneRecipe._train_epoch

    def recording_train_epoch(self, epoch, frozen):
        self.scripted_epoch, self.scripted_step = epoch, self.start_step if epoch == self.start_epoch else 0
        return train_epoch(self, epoch, frozen)

    def scripted(self):
        validated.append(self.scripted_epoch)
        return torch.full((2,), dices[self.scripted_epoch], dtype=torch.float64)

    monkeypatch.setattr(FineTuneRecipe, "_train_epoch", recording_train_epoch)
    monkeypatch.setattr(FineTuneRecipe, "_validate", scripted)
    return validated


def _auto_probe_config(tmp_path: Path, **changes) -> Path:
    return make_config(tmp_path, freeze=[], **{"finetune.linear_probe_epochs": "auto", "train.max_steps_per_epoch": 1,
                                               "optim.warmup_epochs": 0, **changes})


def test_lp_ft_auto_switches_after_the_first_validation_that_does_not_rise(tmp_path, monkeypatch):
    """Dice 0.5, then 0.5005 (a best, but not above 0.5 by min_delta 0.001): the head trains alone in epochs 0-1,
    everything from epoch 2 (before the latest switch, 8 // 2 = 4). With patience 1, early stopping would end the run
    at epoch 1 without the reset at the switch; it counts afresh and stops after epoch 3 (0.4, then 0.3)."""
    _scripted_validation(monkeypatch, [0.5, 0.5005, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1])
    config = _auto_probe_config(tmp_path, **{"train.epochs": 8, "early_stopping.patience": 1})
    last = tmp_path / "out" / "checkpoints" / "last.pt"
    after, switch = {}, {}

    def snapshot(epoch, value):  # the checkpoint of each epoch is written before its validation is reported
        state = torch.load(last, weights_only=False)
        after[epoch], switch[epoch] = state["model"], state["linear_probe_switch"]

    summary = run_training(load_config(config), tmp_path / "out", on_validation=snapshot)
    before = pretrained(tmp_path / "bundle")
    head = {n for n in after[0] if n.startswith("model.2.")}  # the top up-layer of MONAI's UNet
    body = [n for n in after[0] if n not in head and n in before and n.endswith((".weight", ".bias"))]
    assert head and body
    for epoch in (0, 1):
        assert all(torch.equal(after[epoch][n], before[n]) for n in body), f"the body moved in probe epoch {epoch}"
    assert any(not torch.equal(after[0][n], after[1][n]) for n in head)
    changed = [n for n in body if not torch.equal(after[2][n], before[n])]
    assert len(changed) == len(body), sorted(set(body) - set(changed))
    assert switch == {0: None, 1: 2, 2: 2, 3: 2}
    records = _metrics(tmp_path / "out")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]  # early stopping: 0.4 sets the new baseline, 0.3 does not rise
    assert [r["frozen_tensors"] > 0 for r in records] == [True, True, False, False]
    assert (summary.best_epoch, summary.best_val_dice) == (1, 0.5005)  # best.pt follows the probe's best too
    assert torch.load(tmp_path / "out" / "checkpoints" / "best.pt", weights_only=False)["epoch"] == 2
    text = (tmp_path / "out" / "train.log").read_text()
    assert ("epoch 0: freezing stage all_but_head (LP-FT: linear probe, the head alone until its validation Dice stops "
            "rising, at the latest epoch 4),") in text
    assert ("LP-FT: the head's validation Dice stopped rising at epoch 1 (0.5005, best 0.5000, early_stopping.min_delta "
            "0.001): fine-tuning everything from epoch 2, the body at optim.lr; early stopping counts its patience "
            "afresh from there") in text
    assert "epoch 2: freezing stage none (LP-FT: fine-tuning everything, the body at optim.lr)," in text
    assert text.index("epoch 1: loss") < text.index("LP-FT: the head's") < text.index("epoch 2: freezing stage none")


def test_lp_ft_auto_switches_at_half_the_run_at_the_latest(tmp_path, monkeypatch):
    """A Dice that keeps rising: the head trains alone until epoch 6 // 2 = 3, decided at the end of epoch 2."""
    _scripted_validation(monkeypatch, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    config = _auto_probe_config(tmp_path, **{"train.epochs": 6})
    run_training(load_config(config), tmp_path / "out")
    records = _metrics(tmp_path / "out")
    assert [r["frozen_tensors"] > 0 for r in records] == [True, True, True, False, False, False]
    assert torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["linear_probe_switch"] == 3
    text = (tmp_path / "out" / "train.log").read_text()
    assert ("LP-FT: the probe reached its latest epoch, train.epochs // 2 = 3: fine-tuning everything from epoch 3, "
            "the body at optim.lr") in text


def test_lp_ft_auto_resumes_exactly_from_before_and_after_the_switch(tmp_path, monkeypatch):
    """Stopped at the end of epoch 0 and mid-epoch 1 (probing, switch undecided), at the end of epoch 2 and mid-epoch 3
    (after the switch, decided at the end of epoch 1): each resume continues as the uninterrupted run."""
    from medft.train.recipe import FineTuneRecipe

    validated = _scripted_validation(monkeypatch, [0.5, 0.5005, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65])
    config = load_config(_auto_probe_config(tmp_path, **{"train.epochs": 8, "train.max_steps_per_epoch": 2}))
    run_training(config, tmp_path / "reference")
    assert validated == list(range(8))

    class Stop(Exception):
        pass

    def stop_after(epochs):
        def report(epoch, value):
            if epoch in epochs:
                epochs.discard(epoch)
                raise Stop
        return report

    ctrl_c = {(1, 0), (3, 0)}  # (epoch, step) after which Ctrl-C is pressed
    step = FineTuneRecipe._step

    def stepping(self, batch):
        here = (self.scripted_epoch, self.scripted_step)
        self.scripted_step += 1
        if here in ctrl_c:  # as the SIGINT handler does: the recipe saves after this step and stops
            ctrl_c.discard(here)
            self._stop_requested = True
        return step(self, batch)

    monkeypatch.setattr(FineTuneRecipe, "_step", stepping)
    out, stops, report = tmp_path / "stopped", [], stop_after({0, 2})
    for _ in range(6):
        try:
            run_training(config, out, resume=out.exists(), on_validation=report)
            break
        except (Stop, TrainingInterrupted):
            state = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
            stops.append((state["epoch"], state["step"], state["linear_probe_switch"]))
    assert stops == [(1, 0, None), (1, 1, None), (3, 0, 2), (3, 1, 2)]
    expected, got = _final_weights(tmp_path / "reference"), _final_weights(out)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(_metrics(out)) == strip(_metrics(tmp_path / "reference"))


def test_bitfit_under_an_encoder_stage_changes_only_the_decoders_biases_and_the_head(tmp_path):
    config = load_config(make_config(tmp_path, freeze=[{"epoch": 0, "preset": "encoder"}],
                                     **{"finetune.method": "bitfit", "train.epochs": 2}))
    run_training(config, tmp_path / "out")
    prepared = prepare_network(config.model, 3)  # the run's network and head, as the recipe built them
    network, head = prepared.network, prepared.head
    encoder = frozen_parameter_names(network, head, "encoder")
    trainable = {n for n, _ in network.named_parameters() if n in head or (is_bias(n) and n not in encoder)}
    before = pretrained(tmp_path / "bundle")
    after = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["model"]
    head_norm_stats = {n for n in after if n.startswith("model.2.") and ("running" in n or "num_batches" in n)}
    for name, tensor in after.items():  # parameters and batch-norm statistics alike
        if name not in trainable and name not in head_norm_stats:
            assert torch.equal(tensor, before[name]), name
    assert trainable - head and {n for n in trainable - head if not torch.equal(after[n], before[n])} == trainable - head
    assert all(is_bias(n) and not n.startswith(("model.0.", "model.1.submodule.0.")) for n in trainable - head)

    sizes = {n: p.numel() for n, p in network.named_parameters()}
    count = sum(sizes[n] for n in trainable)
    share = f"{100 * count / sum(sizes.values()):.1f}%"
    line = (f"epoch 0: freezing stage encoder with finetune.method bitfit, {len(sizes) - len(trainable)} of {len(sizes)} "
            f"parameter tensors frozen; trainable: {count:,} of {sum(sizes.values()):,} parameters ({share}) "
            f"in {len(trainable)} of {len(sizes)} tensors")
    assert line in (tmp_path / "out" / "train.log").read_text(), line
    records = _metrics(tmp_path / "out")
    assert [(r["trainable_parameters"], r["total_parameters"]) for r in records] == [(count, sum(sizes.values()))] * 2


def test_a_step_cap_fixes_the_budget_and_epochs_draw_different_cases(tmp_path, monkeypatch):
    """4 training cases, batch 1, at most 2 steps an epoch: 2 steps each epoch, the schedule spans
    the 6 steps taken (its cosine ends at 0), and the epochs draw different cases."""
    from medft.train.recipe import FineTuneRecipe

    seen: list[list[str]] = []
    original = FineTuneRecipe._step

    def recording_step(self, batch):
        seen.append(list(batch["case_id"]))
        return original(self, batch)

    monkeypatch.setattr(FineTuneRecipe, "_step", recording_step)
    config = make_config(tmp_path, freeze=[], **{"train.epochs": 3, "train.batch_size": 1, "train.max_steps_per_epoch": 2,
                                                 "optim.warmup_epochs": 0})
    run_training(load_config(config), tmp_path / "out")
    assert len(seen) == 6
    epochs = [sorted(c for batch in seen[i:i + 2] for c in batch) for i in (0, 2, 4)]
    assert len(set(map(tuple, epochs))) > 1 and len({c for e in epochs for c in e}) > 2
    assert set().union(*epochs) <= set(TRAIN_IDS)
    assert max(_metrics(tmp_path / "out")[-1]["lr"]) < 1e-6  # uncapped (12 steps) it would end at half the peak


def test_early_stopping_stops_after_patience(tmp_path):
    config = make_config(tmp_path, **{"train.epochs": 10, "early_stopping.patience": 2, "early_stopping.min_delta": 1.0})
    summary = run_training(load_config(config), tmp_path / "out")
    assert [r["epoch"] for r in _metrics(tmp_path / "out")] == [0, 1, 2]  # a first result, then 2 without a rise of 1.0
    assert summary.best_epoch >= 0
    assert "early stopping" in (tmp_path / "out" / "train.log").read_text()


def _medft(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "medft", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for_checkpoint(run_dir: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (run_dir / "checkpoints" / "last.pt").exists():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError("the run wrote no checkpoint in time")


def _final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


def test_a_sigkilled_demo_run_resumes_to_the_same_weights(tmp_path):
    """The shipped demo config and bundle (shortened), killed with SIGKILL after its first checkpoint."""
    demo = [str(REPO / "configs" / "demo.yaml"), "--set", "train.epochs=4", "--set", "train.max_steps_per_epoch=3"]
    reference = _medft("train", *demo, "--out", str(tmp_path / "reference"))
    assert reference.wait() == 0, reference.communicate()
    killed = _medft("train", *demo, "--out", str(tmp_path / "killed"))
    _wait_for_checkpoint(tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert len(_metrics(tmp_path / "killed")) < 4
    resumed = _medft("train", *demo, "--out", str(tmp_path / "killed"), "--resume")
    assert resumed.wait() == 0, resumed.communicate()
    expected, got = _final_weights(tmp_path / "reference"), _final_weights(tmp_path / "killed")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(_metrics(tmp_path / "killed")) == strip(_metrics(tmp_path / "reference"))


def test_ctrl_c_saves_and_the_run_resumes_exactly(tmp_path):
    config = make_config(tmp_path, **{"train.epochs": 5})
    reference = _medft("train", str(config), "--out", str(tmp_path / "reference"))
    assert reference.wait() == 0, reference.communicate()
    stopped = _medft("train", str(config), "--out", str(tmp_path / "stopped"))
    _wait_for_checkpoint(tmp_path / "stopped", stopped)
    stopped.send_signal(signal.SIGINT)
    _, err = stopped.communicate()
    assert stopped.returncode == 130, err
    assert "--resume" in err and "state saved" in err
    state = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] > 0 and state["epoch_loss"][1] == state["step"]
    resumed = _medft("train", str(config), "--out", str(tmp_path / "stopped"), "--resume")
    assert resumed.wait() == 0, resumed.communicate()
    expected, got = _final_weights(tmp_path / "reference"), _final_weights(tmp_path / "stopped")
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    losses = lambda run: [r["train_loss"] for r in _metrics(tmp_path / run)]  # noqa: E731
    assert losses("stopped") == pytest.approx(losses("reference"), rel=1e-9)  # the interrupted epoch's loss too


def test_a_run_stopped_before_its_first_checkpoint_starts_again_without_its_old_epoch_lines(tmp_path):
    config = make_config(tmp_path, **{"train.epochs": 1})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 9.0}\n')
    run_training(load_config(config), tmp_path / "out")
    assert [r["epoch"] for r in _metrics(tmp_path / "out")] == [0]


def test_export_loads_with_plain_monai_and_gives_the_same_outputs(finished_run, tmp_path):
    root, run_dir = finished_run
    bundle = export_run(run_dir, tmp_path / "exported")
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "anterior", "2": "posterior"}
    assert metadata["medft"]["parent_bundle"]["name"] == "bundle"
    assert metadata["medft"]["evaluation"]["val_dice"] == json.loads((run_dir / "summary.json").read_text())["best_val_dice"]
    assert (bundle / "LICENSE").read_text().endswith("(verbatim) -----\n" + (root / "bundle" / "LICENSE").read_text())

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    plain = parser.get_parsed_content("network_def")
    plain.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
    checkpoint = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    from medft.bundle.reader import load_bundle

    ours = load_bundle(bundle).build_network()
    ours.load_state_dict(checkpoint["model"])
    record = LoadCased()({"image": [str(sample_case("hippocampus_340")[0])]})
    image = ResizeWithPadOrCrop([32, 48, 32])(record["image"]).as_tensor()[None]
    plain.eval(), ours.eval()
    with torch.no_grad():
        assert torch.equal(plain(image), ours(image))
    assert plain(image).shape[1] == 3


def test_problems_surface_before_training(tmp_path):
    config = make_config(tmp_path)
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": "train"} for c in TRAIN_IDS]
    write_csv(tmp_path / "manifest.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    with pytest.raises(MedftError, match="no cases in the val split"):
        run_training(load_config(config), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()
    config = make_config(tmp_path, **{"model.in_channels": 2})
    with pytest.raises(MedftError, match="no cases in the val split|the images have 1 channel"):
        run_training(load_config(config), tmp_path / "out2")


def test_a_size_with_too_few_dimensions_names_data_spatial_size(tmp_path):
    config = make_config(tmp_path, **{"data.spatial_size": [32, 48]})
    with pytest.raises(MedftError, match=r"input size \(32, 48\) has 2 dimensions, the network takes 3. Fix: give "
                                         r"data.spatial_size 3 sizes"):
        run_training(load_config(config), tmp_path / "out")


def test_a_size_the_network_cannot_take_names_data_spatial_size(tmp_path):
    config = make_config(tmp_path, **{"data.spatial_size": [17, 17, 17]})
    with pytest.raises(MedftError, match=r"did not accept a \(2, 1, 17, 17, 17\) input: .*Fix: give an input size "
                                         r"the network accepts \(data.spatial_size\)"):
        run_training(load_config(config), tmp_path / "out")
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("changes", [
    {"data.sampling": "patch", "data.spatial_size": [16, 16, 16], "data.samples_per_volume": 2},
    {"model.bundle": None, "model.network_def": {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
     "kernel_size": [3, 3, 3], "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [4, 8, 16],
     "deep_supervision": True, "deep_supr_num": 1}, "freeze": []},
], ids=["patches", "scratch_dynunet_deep_supervision"])
def test_patch_sampling_and_networks_from_random_weights(tmp_path, changes):
    config = make_config(tmp_path, **{"train.epochs": 1, **changes})
    summary = run_training(load_config(config), tmp_path / "out")
    record = _metrics(tmp_path / "out")[0]
    assert torch.isfinite(torch.tensor(record["train_loss"])) and 0 <= summary.best_val_dice <= 1


def test_deep_supervision_loss_weighs_head_i_by_half_to_the_i():
    from monai.losses import DiceCELoss

    from medft.train.recipe import _supervised_loss

    torch.manual_seed(0)
    heads = torch.randn(2, 3, 3, 6, 7, 5)  # batch, heads (main first), classes, space
    label = torch.randint(0, 3, (2, 1, 6, 7, 5))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    by_hand = (loss_fn(heads[:, 0], label) + 0.5 * loss_fn(heads[:, 1], label) + 0.25 * loss_fn(heads[:, 2], label)) / 1.75
    assert torch.allclose(_supervised_loss(loss_fn, heads, label), by_hand)
    assert torch.allclose(_supervised_loss(loss_fn, heads[:, 0], label), loss_fn(heads[:, 0], label))
    assert not torch.allclose(by_hand, loss_fn(heads[:, 0], label))  # the extra heads count


def test_a_damaged_training_file_is_one_clear_line(tmp_path, capsys):
    from medft.cli import main
    from tests.conftest import copy_case

    config = make_config(tmp_path)
    image, label = copy_case("hippocampus_334", tmp_path / "nii", "damaged")
    image.write_bytes(image.read_bytes()[:2000])
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": "val"} for c in VAL_IDS]
    rows.append({"case_id": "damaged", "image": image, "label": label, "split": "train"})
    write_csv(tmp_path / "manifest.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "case damaged" in err and "damaged_img.nii.gz: is truncated" in err and "Fix:" in err
    assert "internal error" not in err and "Traceback" not in err


def test_an_image_with_other_channels_is_named_before_training(tmp_path, capsys):
    """Only the first validation case was checked: a 2-channel training case ended in "internal
    error (stack expects each tensor to be equal size)" at epoch 0."""
    import nibabel as nib
    import numpy as np

    from medft.cli import main

    config = make_config(tmp_path)
    image, label = sample_case(TRAIN_IDS[0])
    stored = nib.load(image)
    volume = np.asarray(stored.dataobj)
    nib.save(nib.Nifti1Image(np.stack([volume, volume], axis=-1), stored.affine), tmp_path / "two_img.nii.gz")
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": "val"} for c in VAL_IDS]
    rows += [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": "train"} for c in TRAIN_IDS[1:]]
    rows.append({"case_id": "two", "image": tmp_path / "two_img.nii.gz", "label": label, "split": "train"})
    write_csv(tmp_path / "manifest.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert (f"case two: {tmp_path / 'two_img.nii.gz'}: the image has 2 channel(s) but the network takes 1. Fix: give "
            "every case the same channels (medft check-data names the cases that differ)") in err
    assert "internal error" not in err and not (tmp_path / "out" / "checkpoints").exists()


def test_the_configs_own_folder_as_out_is_refused_and_the_file_kept(tmp_path, capsys):
    """The run wrote its resolved config.yaml over the user's, comments and values gone."""
    from medft.cli import main

    user_config = tmp_path / "exp" / "config.yaml"
    user_config.parent.mkdir()
    make_config(tmp_path).rename(user_config)
    text = user_config.read_text()
    assert main(["train", str(user_config), "--out", str(user_config.parent), "--set", "train.epochs=1"]) == 1
    assert "is the config's own folder" in capsys.readouterr().err and user_config.read_text() == text


def test_an_internal_error_that_stops_the_run_lands_in_train_log(tmp_path, monkeypatch):
    from medft.train import recipe

    def broken(self):
        raise RuntimeError("stack expects each tensor to be equal size")

    monkeypatch.setattr(recipe.FineTuneRecipe, "train", broken)
    with pytest.raises(RuntimeError):
        run_training(load_config(make_config(tmp_path)), tmp_path / "out")
    log = (tmp_path / "out" / "train.log").read_text()
    assert "ERROR stopped: internal error (RuntimeError: stack expects each tensor to be equal size)" in log


def test_a_data_error_that_stops_the_run_lands_in_train_log_without_the_series(tmp_path, capsys):
    from medft.cli import main

    config = make_config(tmp_path)
    folder, uids = two_series_image(tmp_path)
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert all(uid in err for uid in uids) and "stopped:" not in err  # the console shows the error once, in full
    log = (tmp_path / "out" / "train.log").read_text()
    assert f"ERROR stopped: ERROR case {TRAIN_IDS[1]}: {folder}: holds 2 DICOM series and medft does not merge" in log
    assert not [uid for uid in uids if uid in log]
    import logging

    logging.getLogger("medft").warning("logged by what runs next in this process, an evaluation say")
    assert (tmp_path / "out" / "train.log").read_text() == log  # the run's log ends with the run


def test_on_validation_sees_every_validation_and_can_end_the_run(tmp_path):
    seen = []

    class Stop(Exception):
        pass

    def report(epoch, value):
        seen.append((epoch, value))
        if epoch == 1:
            raise Stop

    config = make_config(tmp_path, **{"train.epochs": 4})
    with pytest.raises(Stop):
        run_training(load_config(config), tmp_path / "out", on_validation=report)
    assert [e for e, _ in seen] == [0, 1]
    assert [v for _, v in seen] == [r["val_dice"] for r in _metrics(tmp_path / "out")]
    assert torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 2


def test_loss_weights_reach_the_dice_ce_loss():
    from monai.losses import DiceLoss

    from medft.train.recipe import _loss

    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8))
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0])
    dice = DiceLoss(to_onehot_y=True, softmax=True)(logits, label)
    assert torch.allclose(_loss(TrainConfig(dice_weight=0.0, ce_weight=2.0))(logits, label), 2 * ce)
    assert torch.allclose(_loss(TrainConfig(dice_weight=0.5))(logits, label), 0.5 * dice + ce)


def _soft_dice_loss_by_hand(probs: torch.Tensor, onehot: torch.Tensor, over: tuple[int, ...]) -> torch.Tensor:
    eps = 1e-5  # MONAI's smoothing, in numerator and denominator
    overlap, total = (probs * onehot).sum(over), (probs + onehot).sum(over)
    return (1 - (2 * overlap + eps) / (total + eps)).mean()


def test_batch_dice_and_foreground_dice_match_a_hand_computation():
    """train.dice_batch sums overlaps over the batch before the ratio; train.dice_background false
    drops class 0 from the Dice term (nnU-Net's Dice); the cross-entropy term is unchanged."""
    from medft.train.recipe import _loss

    torch.manual_seed(0)
    logits, label = torch.randn(2, 3, 6, 6, 6), torch.randint(0, 3, (2, 1, 6, 6, 6))
    label[1] = 0  # the second volume has no structure: per-volume and batch Dice differ most here
    probs = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(label[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0])
    spatial, batch_and_spatial = (2, 3, 4), (0, 2, 3, 4)
    cases = {
        (False, True): _soft_dice_loss_by_hand(probs, onehot, spatial),
        (True, True): _soft_dice_loss_by_hand(probs, onehot, batch_and_spatial),
        (False, False): _soft_dice_loss_by_hand(probs[:, 1:], onehot[:, 1:], spatial),
        (True, False): _soft_dice_loss_by_hand(probs[:, 1:], onehot[:, 1:], batch_and_spatial),
    }
    for (batch, background), dice in cases.items():
        train = TrainConfig(dice_batch=batch, dice_background=background)
        assert torch.allclose(_loss(train)(logits, label), dice + ce), (batch, background)
        assert torch.allclose(_loss(train.model_copy(update={"loss": "dice"}))(logits, label), dice), (batch, background)
    assert len({round(float(d), 6) for d in cases.values()}) == 4  # the four variants really differ


def test_dice_options_are_refused_without_a_dice_term():
    with pytest.raises(ValueError, match="train.dice_batch and train.dice_background"):
        TrainConfig(loss="ce", dice_batch=True)


def test_bfloat16_mixed_precision_on_cpu(tmp_path):
    """train.amp on CPU runs the forward passes in bfloat16; the weights stay float32."""
    from medft.train.recipe import FineTuneRecipe

    config = load_config(make_config(tmp_path, **{"train.epochs": 1, "train.amp": True, "train.device": "cpu"}))
    recipe = FineTuneRecipe(config, tmp_path / "out")
    dtypes = set()
    try:
        recipe.setup()
        recipe.network.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
        summary = recipe.train()
    finally:
        recipe.cleanup()
    assert dtypes == {torch.bfloat16}
    state = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float32}
    record = _metrics(tmp_path / "out")[0]
    assert torch.isfinite(torch.tensor(record["train_loss"])) and 0 <= summary.best_val_dice <= 1


def test_the_network_sees_plain_tensors_in_training_and_validation(tmp_path):
    """Batches reach the network without MONAI's metadata (MetaTensor operations cost ~7% a step)."""
    from monai.data import MetaTensor

    from medft.train.recipe import FineTuneRecipe

    recipe = FineTuneRecipe(load_config(make_config(tmp_path, **{"train.epochs": 1})), tmp_path / "out")
    inputs = []
    try:
        recipe.setup()
        assert isinstance(recipe.train_loader.dataset[0]["image"], MetaTensor)  # what the loaders give
        recipe.network.register_forward_pre_hook(lambda module, args: inputs.append((module.training, type(args[0]))))
        recipe.train()
    finally:
        recipe.cleanup()
    assert {mode for mode, _ in inputs} == {True, False}  # training steps and validation windows
    assert {kind for _, kind in inputs} == {torch.Tensor}


def test_the_validation_windows_per_pass_are_the_configured_ones_else_four_on_cpu(tmp_path):
    from medft.train.recipe import FineTuneRecipe

    for windows, changes in ((4, {}), (2, {"validation.sw_batch_size": 2})):
        config = load_config(make_config(tmp_path, **{"train.device": "cpu", **changes}))
        recipe = FineTuneRecipe(config, tmp_path / f"out{windows}")
        try:
            recipe.setup()
            assert recipe.inferer.sw_batch_size == windows
        finally:
            recipe.cleanup()


def test_deterministic_algorithms_fix_the_cublas_workspace_and_keep_a_users_value(monkeypatch):
    from medft.train.recipe import use_deterministic_algorithms

    was = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        use_deterministic_algorithms()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        use_deterministic_algorithms()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(was[0], warn_only=was[1])


def test_sgd_trains_with_nesterov_momentum_and_checkpoints_it(tmp_path):
    """optim.name sgd: torch's SGD with Nesterov momentum; its momentum buffers are checkpointed."""
    from medft.train.recipe import FineTuneRecipe

    config = load_config(make_config(tmp_path, **{"train.epochs": 1, "optim.name": "sgd", "optim.lr": 0.01,
                                                  "optim.momentum": 0.9, "optim.weight_decay": 3e-5}))
    recipe = FineTuneRecipe(config, tmp_path / "out")
    try:
        recipe.setup()
        before = {k: v.clone() for k, v in recipe.network.state_dict().items() if v.is_floating_point()}
        summary = recipe.train()
        optimizer = recipe.optimizer
    finally:
        recipe.cleanup()
    assert isinstance(optimizer, torch.optim.SGD)
    assert {(g["momentum"], g["nesterov"]) for g in optimizer.param_groups} == {(0.9, True)}
    changed = [k for k, v in recipe.network.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed and 0 <= summary.best_val_dice <= 1
    saved = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=False)["optimizer"]
    assert saved["state"] and all("momentum_buffer" in s for s in saved["state"].values())


def test_momentum_is_refused_with_adamw():
    from medft.config import OptimConfig

    assert OptimConfig(name="sgd", momentum=0.9).momentum == 0.9
    for momentum in (0.9, 0.99):  # the default too, when a user writes it
        with pytest.raises(ValueError, match="optim.momentum is SGD's"):
            OptimConfig(momentum=momentum)
    for name in ("adamw", "sgd"):  # a run folder's config.yaml, every field written out, loads again
        written = OptimConfig(name=name).model_dump()
        assert OptimConfig(**written) == OptimConfig(name=name)


def test_resuming_after_the_bundle_changed_its_network_is_a_clear_error(tmp_path):
    """The config is unchanged, but the bundle folder it names was replaced by one with other widths:
    load_state_dict used to fail with a size mismatch (an internal error)."""
    import shutil

    config = make_config(tmp_path, **{"train.epochs": 1})
    run_training(load_config(config), tmp_path / "out")
    shutil.rmtree(tmp_path / "bundle")
    make_bundle(tmp_path / "bundle", {**UNET3D, "channels": [8, 16, 32]})
    with pytest.raises(MedftError, match=r"last\.pt: the run started with another network than the bundle .* builds now "
                                         r"\(its network_def changed\), so it cannot resume\. Fix: restore the bundle"):
        run_training(load_config(config), tmp_path / "out", resume=True)


def test_resuming_with_another_config_names_the_keys_that_differ(tmp_path):
    """The refusal said only that the config differs, leaving the user to diff the two files."""
    from medft.config import dump_config

    config = load_config(make_config(tmp_path))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.yaml").write_text("# the run's config, commented\n" + dump_config(config))
    changed = load_config(make_config(tmp_path), ["optim.lr=0.0003", "freeze.1.epoch=2", "freeze.2.epoch=3",
                                                  "data.manifest=/elsewhere/a_much_longer_manifest_name.csv",
                                                  "train.amp=true", "seed=1", "train.epochs=9"])
    with pytest.raises(MedftError, match=r"config.yaml: the config differs from the one this run started with, in "
                                         r"seed \(0 -> 1\), data.manifest, freeze.1.epoch \(1 -> 2\), "
                                         r"freeze.2.epoch \(2 -> 3\), optim.lr \(0.01 -> 0.0003\) and 2 more\. Fix: resume"):
        run_training(changed, tmp_path / "out", resume=True)


def test_a_warmup_as_long_as_the_run_is_named(tmp_path, caplog):
    config = make_config(tmp_path, **{"train.epochs": 1, "optim.warmup_epochs": 1})
    with caplog.at_level("WARNING", logger="medft"):
        run_training(load_config(config), tmp_path / "out")
    assert any("optim.warmup_epochs (1) is not below train.epochs (1)" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bfloat16_on_a_cpu_without_it_is_warned_of_with_the_fix(tmp_path, monkeypatch, caplog, native_bf16):
    """Emulated bfloat16 made a training step about 30 times slower (benchmarks/RESULTS.md, item 7)."""
    from medft.train import recipe

    monkeypatch.setattr(recipe, "cpu_has_bf16", lambda: native_bf16)
    config = load_config(make_config(tmp_path, **{"train.epochs": 1, "train.amp": True, "train.device": "cpu"}))
    with caplog.at_level("WARNING", logger="medft"):
        run_training(config, tmp_path / "run")
    warned = "this CPU has no bfloat16 support" in caplog.text and "Fix: --set train.amp=false" in caplog.text
    assert warned != native_bf16


def test_channels_last_trains_the_same_network_in_the_other_layout(tmp_path):
    """train.channels_last stores the kernels, hence the activations, channels-last; the losses and the
    weights are those of the default layout up to float rounding, and evaluation of the run uses the layout."""
    from medft.evaluate.inference import load_model
    from medft.train.recipe import FineTuneRecipe

    runs, layouts = {}, []
    for channels_last in (False, True):
        out = tmp_path / f"channels_last_{channels_last}"
        config = load_config(make_config(tmp_path, **{"train.epochs": 1, "train.channels_last": channels_last}))
        recipe = FineTuneRecipe(config, out)
        try:
            recipe.setup()
            # a one-channel input gives no layout to follow: the first convolution's output stays as it is
            conv = next(m for m in recipe.network.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
            conv.register_forward_hook(lambda module, args, output, c=channels_last: layouts.append(
                (c, output.is_contiguous(memory_format=torch.channels_last_3d))))
            recipe.train()
        finally:
            recipe.cleanup()
        runs[channels_last] = out
    assert {c for c, _ in layouts} == {False, True} and all(c == is_last for c, is_last in layouts)
    default, last = (_metrics(runs[c])[0] for c in (False, True))
    assert last["train_loss"] == pytest.approx(default["train_loss"], rel=1e-4)
    # one forward and backward pass: the same outputs and gradients (Adam's steps amplify rounding, so the
    # weights after an epoch are no comparison)
    from medft.train.network import to_channels_last

    state = torch.load(runs[False] / "checkpoints" / "last.pt", weights_only=False)
    from medft.bundle.reader import build_network

    nets = [build_network(state["network_def"], source="test") for _ in range(2)]
    for net in nets:
        net.load_state_dict(state["model"])
    to_channels_last(nets[1], 3)
    image = torch.randn(2, 1, 32, 48, 32, generator=torch.Generator().manual_seed(0))
    outputs = [net(image) for net in nets]
    for output in outputs:
        output.square().mean().backward()
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6)
    model = load_model(runs[True], checkpoint="last")
    kernel = next(t for t in model.network.parameters() if t.dim() == 5 and t.shape[1] > 1)
    assert kernel.is_contiguous(memory_format=torch.channels_last_3d) and not kernel.is_contiguous()
