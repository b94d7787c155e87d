"""Resuming reads last.pt: a damaged or foreign file is a clear error with a way out."""
import pytest
import torch

from medft.errors import MedftError
from medft.train.checkpoint import RESUME_KEYS, atomic_save, load_checkpoint


def test_a_checkpoint_cut_short_names_the_file_and_the_ways_out(tmp_path):
    state = {key: 0 for key in RESUME_KEYS} | {"model": {"w": torch.zeros(1000)}}
    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_save(state, last)
    assert load_checkpoint(last)["epoch"] == 0
    last.write_bytes(last.read_bytes()[:500])  # a copy cut short
    with pytest.raises(MedftError, match=r"last.pt: the checkpoint cannot be read: the file is damaged .*"
                                         r"Fix: restore it from a copy, or start a new run"):
        load_checkpoint(last)
    atomic_save(state, best)
    with pytest.raises(MedftError, match="Fix: restore it from a copy, or copy best.pt over it to resume from the best epoch"):
        load_checkpoint(last)


def test_a_file_that_is_no_training_checkpoint_is_refused_by_name(tmp_path):
    """A bundle's model.pt (a bare state_dict) copied to last.pt used to fail with KeyError: 'optimizer'."""
    last = tmp_path / "last.pt"
    torch.save({"model": {}}, last)
    with pytest.raises(MedftError, match=r"last.pt: not a checkpoint written by medft train \(it lacks epoch, step, optimizer"):
        load_checkpoint(last)
    torch.save([1, 2], last)
    with pytest.raises(MedftError, match="not a checkpoint written by medft train"):
        load_checkpoint(last)
