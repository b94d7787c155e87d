"""Data-parallel training under torchrun: 2 CPU processes (gloo) against one process.

The runs train a tiny UNet on 8 sample cases, whole volumes of [40, 48, 48] (every case fits, so
the random crop crops nothing) without augmentation: 2 processes x batch 2 and 1 process x batch
4 then see the same volumes in every step, and with instance norm the mean loss of 4 volumes is
the mean of the two processes' means of 2. The weights agree within float tolerance, not bit for
bit: summing gradients in another order rounds differently.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.data import DataLoader

from medft.config import load_config
from medft.train import distributed
from medft.train.data import SeededDistributedSampler
from medft.train.recipe import run_training
from tests.bundle.helpers import UNET3D, make_bundle
from tests.conftest import REPO, sample_case, write_csv
from tests.train.helpers import make_config

TRAIN = ["hippocampus_333", "hippocampus_334", "hippocampus_335", "hippocampus_336",
         "hippocampus_338", "hippocampus_355", "hippocampus_380", "hippocampus_386"]
VAL = ["hippocampus_340", "hippocampus_341"]  # one per process
WAIT = 120  # seconds, at most, for any one launch


def _config(root: Path) -> Path:
    # A conv bias right before instance norm changes nothing the network computes, so its gradient
    # is 0, but in floats it is rounding noise that AdamW (which divides by the gradient's own
    # size) turns into steps of up to lr, different in each run: the test network has no biases.
    make_bundle(root / "bundle", {**UNET3D, "bias": False})
    rows = [{"case_id": c, "image": sample_case(c)[0], "label": sample_case(c)[1], "split": split}
            for ids, split in ((TRAIN, "train"), (VAL, "val")) for c in ids]
    write_csv(root / "manifest.csv", rows, classes={"0": "background", "1": "anterior", "2": "posterior"})
    # 2 steps per epoch; unfreezing at epoch 1 rebuilds the DDP wrapper; min_delta 1.0 stops the
    # run early after epoch 2 (of 4), which every process must decide together.
    return make_config(root, **{
        "data.augmentation": "none", "data.spatial_size": [40, 48, 48],
        "freeze": [{"epoch": 0, "preset": "all_but_head"}, {"epoch": 1, "preset": "none"}],
        "train.epochs": 4, "train.batch_size": 2, "early_stopping.patience": 2, "early_stopping.min_delta": 1.0,
    })


def _torchrun(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "medft", "train", *args]
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (torchrun starts its workers in sessions of their own,
    so they are not in its process group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _kill(process: subprocess.Popen) -> str:
    """SIGKILL torchrun and then its workers, as a crashed machine would stop them; their output."""
    workers = _children(process.pid)
    process.kill()
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return process.communicate(timeout=WAIT)[0]


def _finish(process: subprocess.Popen) -> str:
    try:
        output, _ = process.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise AssertionError("the torchrun launch did not end in time (a process waiting for the others?)") from None
    assert process.returncode == 0, output
    return output


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The config, a 2-process torchrun run (batch 2 each) and a 1-process run (batch 4)."""
    root = tmp_path_factory.mktemp("ddp")
    config = _config(root)
    output = _finish(_torchrun(str(config), "--out", str(root / "two")))
    torch.set_num_threads(1)
    run_training(load_config(config, ["train.batch_size=4"]), root / "one")
    return config, root / "two", root / "one", output


def test_two_processes_reach_the_weights_of_one_process_with_the_same_global_batch(runs):
    _, two, one, _ = runs
    expected, got = _weights(one), _weights(two)
    assert list(got) == list(expected)  # the unwrapped network's names: no "module." prefix
    pretrained = torch.load(one.parent / "bundle" / "models" / "model.pt", weights_only=False)
    assert any(not torch.equal(got[n], pretrained[n]) for n in got if got[n].shape == pretrained[n].shape)
    for name in expected:
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), \
            (name, (got[name] - expected[name]).abs().max())
    records_two, records_one = _metrics(two), _metrics(one)
    assert [r["epoch"] for r in records_two] == [r["epoch"] for r in records_one] == [0, 1, 2]  # stopped early
    for a, b in zip(records_two, records_one, strict=True):  # the global loss, and the Dice over the cases of both processes
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_dice"] == pytest.approx(b["val_dice"], abs=1e-6)
        assert a["best"] == b["best"] and a["frozen_tensors"] == b["frozen_tensors"]


def test_rank_0_alone_writes_the_run_folder(runs):
    _, two, _, output = runs
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt", "train.log",
                 "head_adaptation.txt", "summary.json"):
        assert (two / name).is_file(), name
    assert len(_metrics(two)) == 3  # one line per epoch, not one per process
    assert len(list((two / "tensorboard").iterdir())) == 1
    log = (two / "train.log").read_text()
    assert "2 processes (this is rank 0), cpu, global batch 4" in log
    assert log.count("epoch 2: loss") == 1 and "early stopping" in log
    assert output.count("best validation Dice") == 1


def test_a_killed_torchrun_run_resumes_to_the_same_weights(runs, tmp_path):
    config, two, _, _ = runs
    run_dir = tmp_path / "killed"
    process = _torchrun(str(config), "--out", str(run_dir))
    deadline = time.monotonic() + WAIT
    while not (run_dir / "checkpoints" / "last.pt").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint in time: {_kill(process)}")
        time.sleep(0.02)
    _kill(process)
    assert len(_metrics(run_dir)) < 3
    _finish(_torchrun(str(config), "--out", str(run_dir), "--resume"))
    expected, got = _weights(two), _weights(run_dir)
    assert all(torch.equal(expected[name], got[name]) for name in expected)
    strip = lambda records: [{k: v for k, v in r.items() if k != "seconds"} for r in records]  # noqa: E731
    assert strip(_metrics(run_dir)) == strip(_metrics(two))


@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_lora_and_bitfit_under_torchrun_reach_the_weights_of_one_process(runs, tmp_path, method):
    """The methods that freeze most of the network (DDP wraps only what trains), against one process."""
    config, _, _, _ = runs
    changes = [f"finetune.method={method}", "freeze=[]", "train.epochs=2", "early_stopping.enabled=false"]
    if method == "lora":
        changes.append("finetune.lora={rank: 2}")
    _finish(_torchrun(str(config), "--out", str(tmp_path / "two"), *[f"--set={c}" for c in changes]))
    run_training(load_config(config, [*changes, "train.batch_size=4"]), tmp_path / "one")
    expected = torch.load(tmp_path / "one" / "checkpoints" / "last.pt", weights_only=False)
    got = torch.load(tmp_path / "two" / "checkpoints" / "last.pt", weights_only=False)
    pairs = [(name, expected["model"][name], got["model"][name]) for name in expected["model"]]
    if method == "lora":
        assert got["adapter"] and set(got["adapter"]) == set(expected["adapter"])
        pairs += [(name, expected["adapter"][name], got["adapter"][name]) for name in expected["adapter"]]
    for name, a, b in pairs:
        assert torch.allclose(b, a, rtol=1e-4, atol=1e-5), (name, (b - a).abs().max())
    assert f"with finetune.method {method}" in (tmp_path / "two" / "train.log").read_text()


def test_the_processes_batches_together_are_the_single_process_batch():
    """Each step, the processes' batches together hold the cases of the single-process batch of
    batch x world cases. The exception, documented: fewer cases than the global batch and not a
    multiple of the number of processes (DistributedSampler repeats some to even the shares)."""
    checked = 0
    for world in (2, 3):
        for batch in (1, 2, 3):
            for cases in range(1, 14):
                if cases <= batch * world and cases % world:
                    continue
                assert _shares_match_single(list(range(cases)), batch, world), (cases, batch, world)
                checked += 1
    assert checked > 50


def _shares_match_single(data: list[int], batch: int, world: int) -> bool:
    drop = len(data) > batch * world

    def epochs(loader, generator):
        for epoch in range(2):
            generator.manual_seed(1000 + epoch)  # as the recipe does at the start of each epoch
            yield [b.tolist() for b in loader]

    generator = torch.Generator()
    single = DataLoader(data, batch_size=batch * world, shuffle=True, generator=generator, drop_last=drop)
    expected = list(epochs(single, generator))
    shares = []
    for rank in range(world):
        generator = torch.Generator()  # each process has its own, seeded alike
        sampler = SeededDistributedSampler(data, generator, world, rank, drop_last=drop)
        loader = DataLoader(data, batch_size=batch, sampler=sampler, generator=generator, drop_last=len(sampler) > batch)
        shares.append(list(epochs(loader, generator)))
    return all(
        len(share[epoch]) == len(steps) for epoch, steps in enumerate(expected) for share in shares
    ) and all(
        sorted(c for share in shares for c in share[epoch][step]) == sorted(cases)
        for epoch, steps in enumerate(expected) for step, cases in enumerate(steps)
    )


def test_the_helpers_do_nothing_in_a_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.is_distributed() and distributed.is_main() and distributed.rank() == 0
    assert distributed.init(torch.device("cpu")) == torch.device("cpu")
    assert distributed.all_reduce_mean(0.25) == 0.25 and distributed.any_process(False) is False
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.all_gather_object(3) == [3]
    network = torch.nn.Linear(2, 2)
    assert distributed.wrap(network, torch.device("cpu")) is network
    distributed.barrier()
    distributed.cleanup()


def test_a_torchrun_environment_without_its_rendezvous_is_one_clear_error(monkeypatch):
    from medft.errors import MedftError

    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MedftError, match="launch several processes with torchrun"):
        distributed.init(torch.device("cpu"))


def test_an_inconsistent_torchrun_environment_is_one_clear_error(monkeypatch):
    """Not a traceback, nor a silent wait of 30 minutes for a rank 0 that does not exist."""
    from medft.errors import MedftError

    def rendezvous(*args, **kwargs):
        raise AssertionError("init_process_group would wait for rank 0")

    monkeypatch.setattr(distributed.dist, "init_process_group", rendezvous)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(MedftError, match="the environment variable WORLD_SIZE is 'two', not a whole number. Fix: launch"):
        distributed.is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    for rank, local_rank in (("2", "0"), ("1", "-1")):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(MedftError, match=f"RANK is {rank} and LOCAL_RANK {local_rank}, but WORLD_SIZE is 2: both must "
                                             "be from 0 to 1. Fix: launch with torchrun"):
            distributed.init(torch.device("cpu"))


def test_the_unused_parameters_are_those_the_loss_cannot_reach():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.main, self.aux = torch.nn.Linear(3, 3), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
            self.norm = torch.nn.BatchNorm1d(3)

        def forward(self, x):
            h = self.norm(self.body(x))
            return self.main(h), self.aux(h)  # the loss takes the first output

    network = TwoHeads().eval()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    assert distributed.unused_parameters(network, torch.randn(4, 3)) == {"aux.weight", "aux.bias"}
    assert not network.training and all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.grad is None for p in network.parameters())
