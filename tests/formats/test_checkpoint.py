"""Checkpoints: one writer, one reader; a damaged, foreign or newer file is a clear error with a way out."""
import pytest
import torch

from medft.errors import MedftError
from medft.formats.checkpoint import FORMAT_VERSION, Checkpoint, find_checkpoint, read_checkpoint, write_checkpoint
from medft.train.checkpoint import CheckpointSaver


def _checkpoint(epoch: int = 0) -> Checkpoint:
    return Checkpoint(epoch=epoch, step=0, model={"w": torch.arange(1000.0)}, class_names=["background", "a"],
                      network_def={"_target_": "UNet"}, optimizer={}, scheduler={}, scaler={}, early_stopping={}, rng={},
                      preprocessing={"source": "medft", "steps": []})


def test_what_is_written_is_read_back(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    write_checkpoint(_checkpoint(epoch=3), path)
    read = read_checkpoint(path)
    assert read.epoch == 3 and read.class_names == ["background", "a"] and read.format_version == FORMAT_VERSION
    assert torch.equal(read.model["w"], torch.arange(1000.0)) and read.preprocessing["steps"] == []
    assert find_checkpoint(tmp_path) == path and find_checkpoint(tmp_path, "last") == path
    write_checkpoint(_checkpoint(), tmp_path / "checkpoints" / "best.pt")
    assert find_checkpoint(tmp_path).name == "best.pt" and find_checkpoint(tmp_path, "last") == path
    assert find_checkpoint(tmp_path / "nothing") is None


def test_the_lp_ft_switch_is_read_back_and_absent_from_older_checkpoints(tmp_path):
    """linear_probe_switch (finetune.linear_probe_epochs auto) came later: a checkpoint without it reads as None."""
    path = tmp_path / "last.pt"
    checkpoint = _checkpoint()
    checkpoint.linear_probe_switch = 4
    write_checkpoint(checkpoint, path)
    assert read_checkpoint(path).linear_probe_switch == 4
    state = torch.load(path, weights_only=False)
    del state["linear_probe_switch"]
    torch.save(state, path)
    assert read_checkpoint(path).linear_probe_switch is None


def test_a_checkpoint_cut_short_names_the_file_and_the_ways_out(tmp_path):
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    write_checkpoint(_checkpoint(), last)
    last.write_bytes(last.read_bytes()[:500])  # a copy cut short
    with pytest.raises(MedftError, match=r"last.pt: the checkpoint cannot be read: the file is damaged .*"
                                         r"Fix: restore it from a copy, or start a new run"):
        read_checkpoint(last)
    write_checkpoint(_checkpoint(), best)
    with pytest.raises(MedftError, match="Fix: restore it from a copy, or copy best.pt over it to resume from the best epoch"):
        read_checkpoint(last)


def test_a_file_that_is_no_training_checkpoint_is_refused_by_name(tmp_path):
    """A bundle's model.pt (a bare state_dict) copied to last.pt used to fail with KeyError: 'optimizer'."""
    last = tmp_path / "last.pt"
    torch.save({"model": {}}, last)
    with pytest.raises(MedftError, match=r"last.pt: not a checkpoint written by medft train \(it lacks epoch, step, class_names"):
        read_checkpoint(last)
    torch.save([1, 2], last)
    with pytest.raises(MedftError, match="not a checkpoint written by medft train"):
        read_checkpoint(last)


def test_a_checkpoint_from_a_newer_format_says_to_upgrade(tmp_path):
    path = tmp_path / "last.pt"
    write_checkpoint(_checkpoint(), path)
    state = torch.load(path, weights_only=False)
    torch.save(state | {"format_version": FORMAT_VERSION + 1, "medft_version": "9.0"}, path)
    with pytest.raises(MedftError, match=rf"checkpoint format {FORMAT_VERSION + 1}, written by medft 9.0.*Fix: upgrade medft"):
        read_checkpoint(path)


@pytest.mark.parametrize("key", [
    # what --resume reads (medft.train.recipe's _setup_resume; network_def for the same-network check)
    "epoch", "step", "model", "network_def", "optimizer", "scheduler", "scaler", "early_stopping", "rng",
    # read by evaluate and export
    "class_names", "preprocessing",
])
def test_a_checkpoint_lacking_a_key_the_resume_reads_is_refused_by_its_name(tmp_path, key):
    last = tmp_path / "checkpoints" / "last.pt"
    write_checkpoint(_checkpoint(epoch=2), last)
    state = torch.load(last, weights_only=False)
    del state[key]
    torch.save(state, last)
    with pytest.raises(MedftError, match=rf"last.pt: not a checkpoint written by medft train \(it lacks {key}\)"):
        CheckpointSaver(tmp_path, main=True).load_last()  # what the resume calls
