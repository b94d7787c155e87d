"""Progress on a terminal, with the time left: caching the cases, the training run and each epoch."""
import io
import re

import torch

from medft.config import load_config
from medft.data.preprocessing import Preprocessing
from medft.train.recipe import run_training
from tests.conftest import sample_case
from tests.train.helpers import TRAIN_IDS, make_config


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _bars(shown: str, *names: str) -> int:
    """How many of the bars ``names`` were drawn with their time left ([elapsed<left])."""
    return sum(re.search(rf"{re.escape(name)}: .*\[\d\d:\d\d<", shown) is not None for name in names)


def test_caching_shows_progress_on_a_terminal_only(tmp_path, monkeypatch):
    from monai.transforms import Compose

    from medft.train.cache import CaseStore

    cases = [{"case_id": c, "image": [str(sample_case(c)[0])]} for c in TRAIN_IDS[:2]]
    chain = Compose(Preprocessing.medft(None, "zscore").inference())
    for terminal, bars in ((_Terminal(), 2), (io.StringIO(), 0)):
        monkeypatch.setattr("sys.stderr", terminal)
        CaseStore(1, tmp_path / str(bars), {"x": 1}).dataset(cases, chain, [1, 1], "train")  # one in memory, one on disk
        # MONAI's bar for the cases kept in memory, medft's for the disk cache
        assert _bars(terminal.getvalue(), "Loading dataset", "caching train cases on disk") == bars, terminal.getvalue()


def test_training_shows_the_runs_progress_and_each_epochs_steps_on_a_terminal(tmp_path, monkeypatch):
    torch.set_num_threads(1)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    run_training(load_config(make_config(tmp_path, **{"train.epochs": 2, "freeze": []})), tmp_path / "run")
    shown = terminal.getvalue()
    assert _bars(shown, "training", "epoch 0/1", "epoch 1/1") == 3, shown
    assert re.search(r"training: 100%.*2/2 .*val_dice=0\.\d{4}", shown), shown  # the run's bar ends full
