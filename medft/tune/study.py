"""The study of ``medft tune``: its database, the worker that runs trials into it, and one trial.

Each trial is a ``medft train`` run of the config with the sampled values set (``medft.tune.space``),
trained into ``OUT/trial_<n>`` and pruned from its validation Dice; a worker runs trials until the
study holds the number of finished trials asked for, counting those other workers are running.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch

from medft.atomic_files import process_ended
from medft.config import RunConfig, describe_differences, dump_config, read_raw_config, validate_config
from medft.errors import MedftError
from medft.train import distributed
from medft.train.recipe import TrainingInterrupted, run_training
from medft.tune import sampling
from medft.tune.results import TuneResult, write_results
from medft.tune.space import SearchConfig, apply_params, describe_params, suggest, validate_search_config

log = logging.getLogger("medft.tune")

HEARTBEAT_SECONDS = 20  # a trial whose worker died counts as failed after 3 heartbeats without news
FAILURES_TO_STOP = 3  # failed trials in a row that stop a worker


class TrialFailed(MedftError):
    """A trial that cannot give a value (a problem of its config or of the data, out of memory, no
    finite validation Dice): it is recorded as failed and the next trial runs."""


class TrialInterrupted(KeyboardInterrupt):
    """Ctrl-C during a trial: Optuna marks the trial failed; the study keeps its finished trials."""

    def __init__(self, number: int):
        super().__init__(f"Ctrl-C during trial {number}")
        self.number = number


class TuneInterrupted(MedftError):
    """The tune stopped on Ctrl-C; running the same command again resumes the study."""


def tune(config_path: str | Path, trials: int, out: str | Path | None = None, storage: str | None = None,
         study_name: str | None = None, overrides: list[str] = ()) -> TuneResult:
    """Run the search until the study holds ``trials`` finished trials; write the results to ``out``."""
    if trials < 1:
        raise MedftError(f"--trials {trials}: give the number of trials the study should hold, at least 1")
    if distributed.is_distributed():
        raise MedftError(
            f"the search was started by torchrun ({distributed.world_size()} processes), but each trial trains in one "
            "process. Fix: run medft tune without torchrun; to use several GPUs, start one worker per GPU with the "
            "same --out, e.g. CUDA_VISIBLE_DEVICES=1 medft tune ..."
        )
    config_path = Path(config_path)
    out = Path(out) if out is not None else Path("runs") / config_path.stem
    config = _searched_config(config_path, overrides)
    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study_name or config.search.study_name or config_path.stem
    study = _open_study(config, out, url, name)
    finished, running = _finished(study), _running(study)
    result = TuneResult(name, _masked(url), out, trials, finished, 0)
    _log_start(result, running)
    objective = _Objective(config.model_dump(mode="json", exclude={"search"}), config.search, out, name)  # paths resolved
    _run_trials(study, objective, result, resume_command=_command(config_path, trials, out, storage, study_name, overrides))
    return result


def _searched_config(config_path: Path, overrides: list[str]) -> RunConfig:
    """The config with its search space checked; an error when it has no search."""
    raw = read_raw_config(config_path, overrides)
    config = validate_search_config(raw, source=str(config_path), base=config_path.parent)
    if config.search is None:
        raise MedftError(f"{config_path}: no search section, so there is nothing to tune. Fix: add one, e.g. "
                         "search: {params: {optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}} "
                         "(see configs/tune_demo.yaml)")
    return config


def _open_study(config: RunConfig, out: Path, url: str, name: str) -> optuna.Study:
    """The study, created or loaded; an error when ``out`` or the study belong to another search."""
    _claim_out(out, name, _masked(url))
    search = config.search
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=_storage(url), sampler=sampling.sampler(search, config), pruner=sampling.pruner(search, config.train.epochs),
            study_name=name, direction="maximize", load_if_exists=True,
        )
    _check_same_search(study, config, name)
    left = sorted(path.name for path in out.glob("trial_*") if path.is_dir())  # before the trials: a worker may be starting one
    if left and not study.get_trials(deepcopy=False):
        raise MedftError(f"{out} holds trial folders ({', '.join(left[:3])}{'...' if len(left) > 3 else ''}) but study "
                         f"{name!r} in {_masked(url)} has no trials: they are left from a study whose database was "
                         "removed. Fix: delete those trial_* folders to start the study afresh, or give another --out")
    return study


def _log_start(result: TuneResult, running: int) -> None:
    name, finished, trials = result.study_name, result.finished_before, result.trials
    elsewhere = f", {running} running in other workers" if running else ""
    if finished + running >= trials:
        log.info("study %r in %s already holds %d finished trial(s) of %d%s: nothing to run", name, result.storage,
                 finished, trials, elsewhere)
    else:
        log.info("study %r in %s: %d of %d trial(s) finished%s%s; %d to go", name, result.storage, finished, trials,
                 " (resumed)" if finished else "", elsewhere, trials - finished - running)


def _run_trials(study: optuna.Study, objective: _Objective, result: TuneResult, resume_command: str) -> None:
    """Trials until the study holds ``result.trials`` finished ones or too many fail in a row; then the results."""
    try:
        with _quiet_known_failures():
            while _finished(study) + _running(study) < result.trials and len(objective.failures) < FAILURES_TO_STOP:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
    except KeyboardInterrupt as stop:  # Ctrl-C: Optuna has marked the running trial failed
        result.ran = objective.started
        write_results(study, result.out, result)
        where = f" during trial {stop.number}" if isinstance(stop, TrialInterrupted) else ""
        raise TuneInterrupted(
            f"interrupted{where}: that trial is marked failed; the study keeps its {_finished(study)} finished "
            f"trial(s). Continue with: {resume_command}"
        ) from None
    result.ran = objective.started
    write_results(study, result.out, result)
    if len(objective.failures) >= FAILURES_TO_STOP:
        trials_by_error: dict[str, list[str]] = {}
        for trial, error in objective.failures:
            trials_by_error.setdefault(error, []).append(trial)
        raise MedftError(
            f"{FAILURES_TO_STOP} trials in a row failed, so this worker stops (the next ones would most likely fail "
            "too):\n" + "\n".join(f"  {', '.join(names)}: {error}" for error, names in trials_by_error.items()) +
            f"\nFix: correct the config, the data or the search ranges named above; then continue with: {resume_command}"
        )


class _Objective:
    """One trial: sample, build and validate the config, train with pruning, return the best Dice."""

    def __init__(self, base: dict, search: SearchConfig, out: Path, study_name: str):
        self.base, self.search, self.out, self.study_name = base, search, out, study_name
        self.started = 0
        self.failures: list[tuple[str, str]] = []  # (trial, error) of this worker's failures since its last finished trial
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, trial: optuna.Trial) -> float:
        self.started += 1
        trial.set_user_attr("worker", self.worker)  # first: other workers tell from it whether the trial still runs
        params = {key: suggest(trial, key, spec) for key, spec in self.search.params.items()}
        try:
            value = self._train(trial, params)
        except MedftError as exc:  # out of memory, no finite Dice, a problem of this trial's config or of the data
            trial.set_user_attr("error", exc.public)  # trials.csv: the console shows the full message
            self.failures.append((f"trial {trial.number} ({describe_params(params)})", str(exc)))
            raise TrialFailed(str(exc)) from None
        except optuna.TrialPruned as pruned:
            log.info("trial %d pruned: %s", trial.number, pruned)
            self.failures.clear()
            raise
        self.failures.clear()
        return value

    def _train(self, trial: optuna.Trial, params: dict[str, Any]) -> float:
        config = validate_config(apply_params(self.base, params), source="the sampled config")
        run_dir = self.out / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("config", dump_config(config))
        log.info("trial %d of study %r: %s -> %s", trial.number, self.study_name, describe_params(params), run_dir)

        def report(epoch: int, val_dice: float) -> None:
            log.info("trial %d, epoch %d: validation Dice %.4f", trial.number, epoch, val_dice)
            trial.report(float(val_dice), step=epoch + 1)  # the step is the number of epochs trained
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"validation Dice {val_dice:.4f} after {epoch + 1} epoch(s)")

        try:
            summary = run_training(config, run_dir, on_validation=report)
        except (TrainingInterrupted, KeyboardInterrupt):
            raise TrialInterrupted(trial.number) from None  # Optuna marks the trial failed
        except torch.cuda.OutOfMemoryError as exc:  # torch.OutOfMemoryError, on older torch too
            raise TrialFailed(f"out of memory ({exc})") from None
        best = summary.best_val_dice
        if best is None or not math.isfinite(best):
            raise TrialFailed("no finite validation Dice (no foreground in the validation cases?)")
        trial.set_user_attr("best_epoch", summary.best_epoch)
        log.info("trial %d finished: best validation Dice %.4f at epoch %d", trial.number, best, summary.best_epoch)
        return float(best)


def _running(study: optuna.Study) -> int:
    """The trials running in other workers (this one calls it between trials), once those of ended
    workers are marked failed: on this machine at once (the worker's process is gone), elsewhere
    when their heartbeat is a minute old."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker", "")
        worker_host, _, pid = worker.rpartition(":")
        if worker_host == host and pid.isdecimal() and process_ended(int(pid)):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # another worker was first
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d: its worker %s has ended (killed?): marked failed", trial.number, worker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))


def _storage(url: str):
    """Optuna's RDB storage with a heartbeat; SQLite in WAL mode with a generous lock timeout."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise MedftError(f"--storage {url!r}: not a database URL. Fix: give sqlite:///path/study.db or "
                         "postgresql://user@host/db") from None
    engine_kwargs: dict = {}
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise MedftError(f"--storage {url}: an in-memory database cannot hold a study. Fix: give sqlite:///path/study.db")
        import sqlite3

        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(parsed.database, timeout=60) as connection:  # WAL persists in the file
            connection.execute("PRAGMA journal_mode=WAL")
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(3):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=3 * HEARTBEAT_SECONDS)
        except ImportError:
            raise MedftError(f"--storage {_masked(url)}: the database driver for {parsed.get_backend_name()} is not "
                             "installed. Fix: install it into medft's environment (PostgreSQL: pip install psycopg2-binary)") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if attempt < 2:  # workers started together: another one may be creating the tables right now
                time.sleep(1)
                continue
            raise MedftError(f"--storage {_masked(url)}: cannot open the study database ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0]}). Fix: check the URL, that the server is up and that you may "
                             "write there") from None


def _masked(url: str) -> str:
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def _claim_out(out: Path, study_name: str, storage: str) -> None:
    """One output folder holds one study's trials (trial numbers restart in each study)."""
    marker = out / "study.json"
    if marker.is_file():
        held = json.loads(marker.read_text())
        if (held.get("study_name"), held.get("storage")) != (study_name, storage):
            raise MedftError(f"{out} holds the trials of study {held.get('study_name')!r} in {held.get('storage')}, not of "
                             f"study {study_name!r} in {storage}. Fix: give another --out, or the --study and --storage "
                             "of that study to continue it")
        return
    marker.write_text(json.dumps({"study_name": study_name, "storage": storage}, indent=1) + "\n")


def _fingerprint(config: RunConfig) -> str:
    """The config and search a study runs, with the data and bundle paths cut to their names (workers
    on several machines keep them in different folders)."""
    dumped = config.model_dump(mode="json")
    dumped["data"]["manifest"] = Path(dumped["data"]["manifest"]).name
    if dumped["model"]["bundle"]:
        dumped["model"]["bundle"] = Path(dumped["model"]["bundle"]).name
    dumped["search"].pop("study_name", None)
    return json.dumps(dumped, sort_keys=True)


def _check_same_search(study, config: RunConfig, name: str) -> None:
    fingerprint = _fingerprint(config)
    held = study.user_attrs.get("medft_config")
    if held is None:
        study.set_user_attr("medft_config", fingerprint)
    elif held != fingerprint:
        differ = describe_differences(json.loads(held), json.loads(fingerprint))
        raise MedftError(f"study {name!r} was started with another config (it differs in {differ}): its trials "
                         "would not compare. Fix: give a new study name (--study) or --out, or go back to the config "
                         "the study started with")


def _finished(study: optuna.Study) -> int:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _command(config_path: Path, trials: int, out: Path, storage: str | None, study_name: str | None,
             overrides: list[str]) -> str:
    parts = ["medft tune", str(config_path), "--trials", str(trials), "--out", str(out)]
    if storage:
        parts += ["--storage", _masked(storage)]
    if study_name:
        parts += ["--study", study_name]
    for item in overrides:
        parts += ["--set", item]
    return " ".join(parts)


class _quiet_known_failures:
    """Optuna logs a failed trial with its traceback; for Ctrl-C and medft's own errors, whose
    message says everything, keep the message only."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, MedftError)):
                record.exc_info, record.exc_text = None, None
            return True

    def __enter__(self):
        self.filter = self._Filter()
        self.loggers = [logging.getLogger(name) for name in ("optuna", "optuna.study._optimize")]
        for logger in self.loggers:
            logger.addFilter(self.filter)
        return self

    def __exit__(self, *exc):
        for logger in self.loggers:
            logger.removeFilter(self.filter)


