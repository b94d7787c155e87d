"""The run folder: one writer and one reader per file, a kill or a damaged line handled with a clear way out."""
import json
import math

import pytest

from medft.config import load_config
from medft.data.preprocessing import Preprocessing
from medft.errors import MedftError
from medft.formats import run as run_folder
from medft.formats.run import EpochRecord, TrainingSummary
from tests.conftest import REPO


def _epoch(epoch: int, val_dice: float | None = None) -> EpochRecord:
    per_class = None if val_dice is None else {"anterior": val_dice, "posterior": math.nan}
    return EpochRecord(epoch=epoch, train_loss=0.5 - epoch / 10, lr=[1e-4, 1e-3], frozen_tensors=2, seconds=1.5,
                       best=val_dice is not None, val_dice=val_dice, val_dice_per_class=per_class)


def test_epoch_lines_are_read_back_and_keep_what_the_contract_promises(tmp_path):
    for record in (_epoch(0), _epoch(1, 0.7), _epoch(2, math.nan)):
        run_folder.append_epoch(tmp_path, record)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "val_dice" not in lines[0] and lines[1]["val_dice"] == 0.7  # a key only on epochs that validated
    assert math.isnan(lines[2]["val_dice"]) and math.isnan(lines[1]["val_dice_per_class"]["posterior"])
    read = run_folder.read_epochs(tmp_path)
    assert [r.epoch for r in read] == [0, 1, 2] and [r.validated for r in read] == [False, True, True]
    assert (read[1].train_loss, read[1].lr, read[1].best, read[1].val_dice_per_class["anterior"]) == (0.4, [1e-4, 1e-3], True, 0.7)


def test_a_last_line_cut_short_is_left_out_and_a_damaged_one_before_it_names_the_line(tmp_path):
    run_folder.append_epoch(tmp_path, _epoch(0))
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 1, "train_lo')  # a kill while the line was appended
    assert [r.epoch for r in run_folder.read_epochs(tmp_path)] == [0]
    path.write_text('{"epoch": 0}\n' + path.read_text())
    with pytest.raises(MedftError, match=r"metrics.jsonl, line 1: not an epoch's record .* Fix: repair or delete"):
        run_folder.read_epochs(tmp_path)


def test_keep_epochs_drops_later_lines_and_a_cut_line_in_place(tmp_path):
    for epoch in range(4):
        run_folder.append_epoch(tmp_path, _epoch(epoch))
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"epoch": 4, "tra')
    run_folder.keep_epochs(tmp_path, 2)
    assert [r.epoch for r in run_folder.read_epochs(tmp_path)] == [0, 1]
    assert path.read_text().count("\n") == 2 and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]
    run_folder.keep_epochs(tmp_path, 0)
    assert path.read_text() == ""


def test_summary_config_and_preprocessing_are_read_back(tmp_path):
    assert run_folder.read_summary(tmp_path) is None and run_folder.read_preprocessing(tmp_path) is None
    summary = TrainingSummary(best_val_dice=0.8, best_epoch=3, run_dir=str(tmp_path))
    run_folder.write_summary(tmp_path, summary)
    assert run_folder.read_summary(tmp_path) == summary
    assert json.loads((tmp_path / "summary.json").read_text())["format_version"] == run_folder.FORMAT_VERSION
    config = load_config(REPO / "configs" / "demo.yaml")
    run_folder.write_config(tmp_path, config)
    assert run_folder.is_run_folder(tmp_path) and run_folder.read_config(tmp_path) == config
    preprocessing = Preprocessing.medft([1.0, 1.0, 2.0], "zscore")
    run_folder.write_preprocessing(tmp_path, preprocessing)
    assert run_folder.read_preprocessing(tmp_path).to_dict() == preprocessing.to_dict()


def test_a_folder_that_is_no_run_names_what_is_missing(tmp_path):
    with pytest.raises(MedftError, match=r"not a run folder \(no config.yaml\)\. Fix: give the folder that `medft train"):
        run_folder.read_config(tmp_path)
    with pytest.raises(MedftError, match="nothing: no such folder"):
        run_folder.read_config(tmp_path / "nothing")
    (tmp_path / "summary.json").write_text('{"best_epoch": "three"}')
    with pytest.raises(MedftError, match=r"summary.json: not a summary as medft train writes it \(.*\)\. Fix: restore it"):
        run_folder.read_summary(tmp_path)
    (tmp_path / "preprocessing.json").write_text("{not json")
    with pytest.raises(MedftError, match=r"preprocessing.json: not a preprocessing record as medft train writes it"):
        run_folder.read_preprocessing(tmp_path)


def test_trainable_counts_are_recorded_and_lines_written_before_them_still_read(tmp_path):
    counted = _epoch(0).model_copy(update={"trainable_parameters": 120, "total_parameters": 4_000})
    run_folder.append_epoch(tmp_path, counted)
    old = _epoch(1).model_dump(mode="json", exclude_none=True)  # a line as runs wrote it before the counts
    assert "trainable_parameters" not in old
    with (tmp_path / "metrics.jsonl").open("a") as file:
        file.write(json.dumps(old) + "\n")
    first, second = run_folder.read_epochs(tmp_path)
    assert (first.trainable_parameters, first.total_parameters) == (120, 4_000)
    assert (second.trainable_parameters, second.total_parameters) == (None, None)
