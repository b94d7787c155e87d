"""Hyperparameter search (medft tune): tiny studies of the tiny fine-tuning config, on CPU."""
import csv
import json
import logging
import multiprocessing
import re
import socket
import subprocess
import sys

import optuna
import pytest
import torch

from medft.cli import main
from medft.config import RunConfig, load_config
from medft.errors import DataError, MedftError
from medft.formats.run import TrainingSummary
from medft.tune import study as tune_module
from medft.tune.sampling import TrialSeededTPE
from medft.tune.space import SearchConfig, SearchParam, freeze_schedule, validate_search_config
from medft.tune.study import TrialFailed, tune
from tests.train.helpers import make_config

# A wide learning-rate range and an aggressive pruner: successive halving from the first epoch,
# where only a trial at least as good as every earlier one at the same epoch goes on.
SEARCH = {
    "params": {
        "optim.lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "freeze.preset": {"type": "categorical", "choices": ["none", "all_but_head", "encoder"]},
        "freeze.unfreeze_epoch": {"type": "int", "low": 0, "high": 3},
        "data.augmentation": {"type": "categorical", "choices": ["none", "light"]},
    },
    "pruner": "successive_halving", "min_resource": 1, "reduction_factor": 4, "n_startup_trials": 2,
}
QUICK = {"train.epochs": 2, "search": {**SEARCH, "pruner": "none"}}  # for the resume tests: nothing pruned


def _study(out, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'study.db'}")


def _states(study) -> list[str]:
    return [t.state.name for t in study.trials]


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tune")
    config = make_config(root, search=SEARCH, **{"train.epochs": 3})
    assert main(["tune", str(config), "--trials", "4", "--out", str(root / "out")]) == 0
    return config, root / "out", _study(root / "out", config.stem)


def test_trials_are_pruned_from_the_validation_dice(searched):
    _, out, study = searched
    states = _states(study)
    assert len(states) == 4 and "PRUNED" in states and "COMPLETE" in states
    for trial in study.trials:
        epochs = [json.loads(line)["epoch"] for line in (out / f"trial_{trial.number}" / "metrics.jsonl").read_text().splitlines()]
        reported = sorted(trial.intermediate_values)
        assert reported == [e + 1 for e in epochs]  # one report per validated epoch, step = epochs trained
        if trial.state.name == "PRUNED":
            assert len(epochs) < 3 and trial.user_attrs["pruned_at_epoch"] == epochs[-1]
        else:
            assert len(epochs) == 3
            assert trial.value == max(trial.intermediate_values.values())  # the best validation Dice


def test_the_best_trial_is_written_as_a_config_for_medft_train(searched):
    config, out, study = searched
    best = study.best_trial
    text = (out / "best_config.yaml").read_text()
    assert text.startswith(f"# Run: medft train {out / 'best_config.yaml'}")
    loaded = load_config(out / "best_config.yaml")
    assert loaded.search is None and "\nsearch:" not in text
    assert loaded.optim.lr == best.params["optim.lr"]
    assert loaded.data.augmentation == best.params["data.augmentation"]
    schedule = freeze_schedule([{"epoch": 0, "preset": "all_but_head"}, {"epoch": 1, "preset": "encoder"}, {"epoch": 2, "preset": "none"}],
                               best.params["freeze.preset"], best.params["freeze.unfreeze_epoch"])
    assert [s.model_dump(exclude_defaults=True) for s in loaded.freeze] == schedule
    base = load_config(config)
    assert (loaded.train, loaded.model, loaded.data.manifest) == (base.train, base.model, base.data.manifest)
    run = json.loads((out / f"trial_{best.number}" / "summary.json").read_text())
    assert run["best_val_dice"] == best.value


def test_the_study_folder_holds_trials_csv_and_plots(searched):
    _, out, study = searched
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    assert [r["state"] for r in rows] == [s.lower() for s in _states(study)]
    assert rows[0]["optim.lr"] and rows[0]["run_dir"].endswith("trial_0")
    for name in ("optimization_history.png", "intermediate_values.png", "param_importances.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_the_same_command_again_runs_only_the_missing_trials(tmp_path):
    config = make_config(tmp_path, **QUICK)
    first = tune(config, 2, out=tmp_path / "out")
    assert (first.finished_before, first.ran) == (0, 2)
    values = [t.value for t in _study(tmp_path / "out", config.stem).trials]
    again = tune(config, 3, out=tmp_path / "out")
    assert (again.finished_before, again.ran) == (2, 1)
    study = _study(tmp_path / "out", config.stem)
    assert _states(study) == ["COMPLETE"] * 3
    assert [t.value for t in study.trials[:2]] == values
    assert tune(config, 3, out=tmp_path / "out").ran == 0  # nothing missing
    with pytest.raises(MedftError, match=r"started with another config \(it differs in train.epochs \(2 -> 3\)\)"):
        tune(config, 4, out=tmp_path / "out", overrides=["train.epochs=3"])


def test_ctrl_c_in_a_trial_fails_that_trial_and_keeps_the_finished_ones(tmp_path, monkeypatch, capsys):
    config = make_config(tmp_path, **QUICK)
    train = tune_module.run_training

    def interrupted_in_trial_1(config, run_dir, resume=False, on_validation=None):
        def report(epoch, value):
            on_validation(epoch, value)
            if run_dir.name == "trial_1":
                raise KeyboardInterrupt
        return train(config, run_dir, resume, report)

    monkeypatch.setattr(tune_module, "run_training", interrupted_in_trial_1)
    command = ["tune", str(config), "--trials", "2", "--out", str(tmp_path / "out")]
    assert main(command) == 130
    err = capsys.readouterr().err
    assert "interrupted during trial 1" in err and f"Continue with: medft tune {config} --trials 2" in err
    assert "Traceback" not in err
    study = _study(tmp_path / "out", config.stem)
    assert _states(study) == ["COMPLETE", "FAIL"]
    assert (tmp_path / "out" / "best_config.yaml").is_file()  # the results so far

    monkeypatch.setattr(tune_module, "run_training", train)
    assert main(command) == 0
    assert "1 run now, 1 finished before" in capsys.readouterr().out
    assert _states(_study(tmp_path / "out", config.stem)) == ["COMPLETE", "FAIL", "COMPLETE"]


def test_the_search_space_is_checked_before_any_trial(tmp_path):
    no_search = make_config(tmp_path)
    with pytest.raises(MedftError, match="no search section"):
        tune(no_search, 2, out=tmp_path / "a")
    weights = make_config(tmp_path, search={"params": {"train.ce_weight": {"type": "float", "low": 0.5, "high": 2.0}}},
                          **{"train.loss": "dice"})
    with pytest.raises(MedftError, match=r"search.params.train.ce_weight: the value 0.5 makes the config invalid:\n.*"
                                         r"weighs a term of the dice_ce loss"):
        tune(weights, 2, out=tmp_path / "b")
    unfreeze_only = make_config(tmp_path, freeze=[], search={"params": {"freeze.unfreeze_epoch": {"type": "int", "low": 0, "high": 2}}})
    with pytest.raises(MedftError, match="nothing is frozen at epoch 0"):
        tune(unfreeze_only, 2, out=tmp_path / "c")
    late_pruner = make_config(tmp_path, search={**SEARCH, "min_resource": 4})  # train.epochs is 4
    with pytest.raises(MedftError, match="search.min_resource: 4 epoch.s. is not below train.epochs .4."):
        tune(late_pruner, 2, out=tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_search_keys_and_ranges_are_validated_with_the_config(tmp_path):
    base = {"model": {"bundle": "b"}, "data": {"manifest": "m.csv", "spatial_size": [8, 8, 8]}}
    params = {"optim.lrr": {"type": "float", "low": 1, "high": 2},
              "train.epochs": {"type": "int", "low": 1, "high": 3},
              "optim.lr": {"type": "float", "low": 0, "high": 1, "log": True},
              "data.augmentation": {"type": "categorical", "choices": ["none"]},
              "model.network_overrides.dropout": {"type": "float", "low": 0, "high": 0.5}}
    with pytest.raises(MedftError) as err:
        validate_search_config({**base, "search": {"params": params}}, "c.yaml")
    message = str(err.value)
    assert "4 problem(s)" in message
    for expected in ("optim.lrr is not a key of the run config", "train.epochs cannot be searched",
                     "search.params.optim.lr: log needs low above 0", "choices: a list of at least two values"):
        assert expected in message
    with pytest.raises(MedftError, match="freeze.preset must be categorical with choices among"):
        validate_search_config({**base, "search": {"params": {"freeze.preset": {"type": "categorical", "choices": ["none", "head"]}}}},
                               "c.yaml")


def test_validate_checks_the_search_space_and_names_every_problem_at_once(tmp_path, capsys):
    """medft validate passed a search whose choices make the config invalid (medft tune refused it later),
    and a wrong key hid the other problems of the search until it was fixed."""
    choices = make_config(tmp_path, search={"params": {"data.augmentation": {"type": "categorical", "choices": ["none", "bogus"]}}})
    assert main(["validate", str(choices)]) == 1
    assert "search.params.data.augmentation: the value 'bogus' makes the config invalid" in capsys.readouterr().err
    params = {"optim.lrr": {"type": "float", "low": 1, "high": 2},
              "data.augmentation": {"type": "categorical", "choices": ["none", "bogus"]},
              "freeze.preset": {"type": "categorical", "choices": ["none", "head"]}}
    everything = make_config(tmp_path, search={"params": params, "min_resource": 4})  # train.epochs is 4
    assert main(["validate", str(everything)]) == 1
    err = capsys.readouterr().err
    for expected in ("4 problem(s)", "optim.lrr is not a key of the run config", "search.min_resource: 4 epoch(s)",
                     "freeze.preset must be categorical", "the value 'bogus' makes the config invalid"):
        assert expected in err
    with pytest.raises(MedftError, match="4 problem"):
        tune(everything, 2, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["validate", str(make_config(tmp_path, search=SEARCH))]) == 0


def test_every_search_field_has_a_description():
    for model in (SearchConfig, SearchParam):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
    assert RunConfig.model_fields["search"].description


def test_freeze_schedules_from_a_preset_and_an_unfreeze_epoch():
    gradual = [{"epoch": 0, "preset": "all_but_head"}, {"epoch": 2, "preset": "encoder"}, {"epoch": 4, "preset": "none"}]
    assert freeze_schedule(gradual, "encoder", None) == [{"epoch": 0, "preset": "encoder"}, *gradual[1:]]
    assert freeze_schedule(gradual, None, 3) == [gradual[0], {"epoch": 3, "preset": "none"}]
    assert freeze_schedule(gradual, "encoder", 0) == []
    assert freeze_schedule([], "none", 2) == []
    assert freeze_schedule([], "all_but_head", 5) == [{"epoch": 0, "preset": "all_but_head"}, {"epoch": 5, "preset": "none"}]


def test_trial_n_draws_from_the_seed_and_n():
    """Workers on one study, or a resumed one, never repeat the draws of the random start-up trials."""
    def objective(trial):
        return trial.suggest_float("x", 0, 1) + trial.suggest_categorical("c", ["a", "b", "c"]).count("a")

    def run(n):
        study = optuna.create_study(sampler=TrialSeededTPE(seed=0, n_startup_trials=10), direction="maximize")
        study.optimize(objective, n_trials=n)
        return [t.params for t in study.trials]

    six = run(6)
    assert run(4) == six[:4]  # reproducible
    assert len({p["x"] for p in six}) == 6
    resumed = optuna.create_study(sampler=TrialSeededTPE(seed=0, n_startup_trials=10), direction="maximize")
    resumed.optimize(objective, n_trials=3)
    resumed.sampler = TrialSeededTPE(seed=0, n_startup_trials=10)  # a new process, the same seed
    resumed.optimize(objective, n_trials=3)
    assert [t.params for t in resumed.trials] == six


def test_tune_help_has_an_example(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = capsys.readouterr().out
    assert "example:" in out and "medft tune configs/tune_demo.yaml --trials" in out


def _fake_training(failing: dict[str, Exception] | None = None):
    """run_training without training: every validation gives Dice 0.5, or the trial raises its exception."""
    def run_training(config, run_dir, resume=False, on_validation=None):
        if run_dir.name in (failing or {}):
            raise failing[run_dir.name]
        (run_dir / "checkpoints").mkdir(parents=True)
        for epoch in range(config.train.epochs):
            on_validation(epoch, 0.5)
        return TrainingSummary(best_val_dice=0.5, best_epoch=0, run_dir=str(run_dir))
    return run_training


def test_tune_prints_a_line_per_trial_and_not_optunas_info_lines(tmp_path, monkeypatch, capfd, caplog):
    """Optuna's "[I ...] Trial 0 finished with value ..." lines repeated medft's progress."""
    config = make_config(tmp_path, **{"train.epochs": 2, "search": SEARCH})  # successive halving from epoch 1

    def poorer_each_trial(config, run_dir, resume=False, on_validation=None):
        dice = 0.5 - 0.1 * int(run_dir.name.removeprefix("trial_"))
        for epoch in range(config.train.epochs):
            on_validation(epoch, dice)
        return TrainingSummary(best_val_dice=dice, best_epoch=1, run_dir=str(run_dir))

    monkeypatch.setattr(tune_module, "run_training", poorer_each_trial)
    optuna_logger = logging.getLogger("optuna")
    optuna_logger.addHandler(caplog.handler)  # Optuna's records do not reach the root logger
    try:
        assert main(["tune", str(config), "--trials", "2", "--out", str(tmp_path / "out")]) == 0
    finally:
        optuna_logger.removeHandler(caplog.handler)
    err = capfd.readouterr().err
    assert "trial 0 finished: best validation Dice 0.5000 at epoch 1" in err
    assert "trial 1 pruned: validation Dice 0.4000 after 1 epoch(s)" in err
    assert [r.getMessage() for r in caplog.records if r.name.startswith("optuna") and r.levelno < logging.WARNING] == []


def test_a_failed_trial_is_recorded_and_the_worker_runs_trials_until_the_target(tmp_path, monkeypatch):
    config = make_config(tmp_path, **QUICK)
    broken = DataError("holds 2 DICOM series", "give series_uid", file="scan", case_id="c7", detail="uid=1.2.3")
    monkeypatch.setattr(tune_module, "run_training", _fake_training({"trial_1": broken, "trial_2": TrialFailed("no finite Dice")}))
    result = tune(config, 3, out=tmp_path / "out")
    assert _states(_study(tmp_path / "out", config.stem)) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert result.counts == {"complete": 3, "fail": 2} and result.ran == 5
    rows = list(csv.DictReader((tmp_path / "out" / "trials.csv").open()))
    assert [r["error"] for r in rows] == ["", broken.public, "no finite Dice", "", ""]  # without the UID of str(broken)


def test_trials_failing_in_a_row_stop_the_worker_with_one_message(tmp_path, monkeypatch):
    config = make_config(tmp_path, **QUICK)
    broken = MedftError("manifest.csv: case 7: the image is unreadable. Fix: copy it again")
    monkeypatch.setattr(tune_module, "run_training", _fake_training({f"trial_{n}": broken for n in (1, 2, 3, 4)}))
    with pytest.raises(MedftError) as stop:
        tune(config, 5, out=tmp_path / "out")
    message = str(stop.value)
    assert message.startswith(f"{tune_module.FAILURES_TO_STOP} trials in a row failed, so this worker stops")
    assert message.count("the image is unreadable") == 1  # one line for the three trials that failed alike
    assert re.search(r"\n  trial 1 \(data.augmentation=.*\), trial 2 \(.*\), trial 3 \(.*\): manifest.csv: case 7", message)
    assert f"continue with: medft tune {config} --trials 5" in message
    assert _states(_study(tmp_path / "out", config.stem)) == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert (tmp_path / "out" / "trials.csv").is_file() and (tmp_path / "out" / "best_config.yaml").is_file()


def test_the_trial_of_a_killed_worker_on_this_machine_fails_at_once(tmp_path, monkeypatch):
    """Not a minute later, when its heartbeat is stale: until then it counted as running in another
    worker, and the command run again right after the kill stopped one trial short."""
    config = make_config(tmp_path, **QUICK)
    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait()
    (tmp_path / "out").mkdir()
    storage = f"sqlite:///{(tmp_path / 'out' / 'study.db').resolve()}"
    study = optuna.create_study(storage=storage, study_name=config.stem, direction="maximize")
    study.ask().set_user_attr("worker", f"{socket.gethostname()}:{killed.pid}")
    monkeypatch.setattr(tune_module, "run_training", _fake_training())
    tune(config, 2, out=tmp_path / "out")
    assert _states(_study(tmp_path / "out", config.stem)) == ["FAIL", "COMPLETE", "COMPLETE"]


def _open_storage(url: str, results) -> None:
    try:
        tune_module._storage(url)
        results.put("ok")
    except MedftError as exc:
        results.put(str(exc))


def test_workers_started_at_the_same_moment_share_a_new_study_database(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        results = context.Queue()
        workers = [context.Process(target=_open_storage, args=(f"sqlite:///{tmp_path / f'{attempt}.db'}", results))
                   for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert [results.get() for _ in workers] == ["ok"] * 3


def test_tune_under_torchrun_is_refused_with_the_fix(tmp_path, monkeypatch):
    config = make_config(tmp_path, **QUICK)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MedftError, match="the search was started by torchrun .2 processes.*Fix: run medft tune without torchrun"):
        tune(config, 2, out=tmp_path / "out")


def test_trial_folders_left_from_a_removed_study_database_are_named(tmp_path, monkeypatch):
    """Not three failed trials that advise medft train --resume, a flag medft tune does not have."""
    config = make_config(tmp_path, **QUICK)
    monkeypatch.setattr(tune_module, "run_training", _fake_training())
    tune(config, 2, out=tmp_path / "out")
    for database in (tmp_path / "out").glob("study.db*"):
        database.unlink()
    with pytest.raises(MedftError, match=r"holds trial folders \(trial_0, trial_1\) but study .* has no trials: they are "
                                         "left from a study whose database was removed. Fix: delete those trial_"):
        tune(config, 2, out=tmp_path / "out")
