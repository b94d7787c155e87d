"""Hyperparameter search: ``medft tune CONFIG --trials N``.

The ``search`` section of a run config names the values to try by dotted key (as ``--set``
takes them). Each trial is a ``medft train`` run: the sampled values are set into the config,
which is validated and trained into ``OUT/trial_<n>``; after each validation the Dice is
reported to the pruner (the step is the number of epochs trained), which may stop the trial
there. A trial's value is its best validation Dice.

Optuna does the search: a TPE sampler (trial n draws its random numbers from (seed, n), so
workers sharing a study and resumed studies never repeat a draw), a Hyperband or successive
halving pruner, and a study in a database: SQLite in ``OUT/study.db`` by default (WAL mode:
several workers on one machine share it), or any SQLAlchemy URL that Optuna's RDB storage
takes (PostgreSQL for workers on several machines). A worker runs trials until the study holds
``N`` finished trials (complete or pruned), counting those other workers are running; running
the same command again resumes the study. A trial that fails (a problem of its config or of
the data, out of memory, no finite Dice) is recorded as failed and the next one runs, but
``FAILURES_TO_STOP`` failures in a row stop the worker: the next trials would fail as well.

After the trials, ``OUT`` holds ``best_config.yaml`` (ready for ``medft train``),
``trials.csv`` and plots of the study.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from medft.atomic_files import process_ended
from medft.config import (
    RunConfig,
    SearchConfig,
    SearchParam,
    apply_params,
    describe_differences,
    dump_config,
    read_raw_config,
    validate_config,
)
from medft.errors import MedftError
from medft.train import distributed
from medft.train.recipe import TrainingInterrupted, run_training

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


@dataclass
class TuneResult:
    study_name: str
    storage: str  # the URL without its password
    out: Path
    trials: int  # the target
    finished_before: int
    ran: int
    counts: dict[str, int] = field(default_factory=dict)  # trials of the study by state
    best: dict | None = None  # number, value, best_epoch, params, run_dir
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {state}" for state, n in self.counts.items()) or "none"
        lines = [f"study {self.study_name!r} ({self.storage}): {sum(self.counts.values())} trial(s): {counts}; "
                 f"{self.ran} run now, {self.finished_before} finished before"]
        if self.best:
            lines.append(f"best: trial {self.best['number']}, validation Dice {self.best['value']:.4f} at epoch "
                         f"{self.best['best_epoch']}: {_describe(self.best['params'])}")
            lines.append(f"  its run folder: {self.best['run_dir']}")
        if self.files:
            lines.append(f"written to {self.out}: " + ", ".join(path.name for path in self.files))
        if self.best:
            lines.append(f"train the best config: medft train {self.out / 'best_config.yaml'} --out {self.out / 'best'}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


# --- the search space --------------------------------------------------------------------------

def suggest(trial, key: str, spec: SearchParam):
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


# --- the study ---------------------------------------------------------------------------------

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
    raw = read_raw_config(config_path, overrides)
    config = validate_config(raw, source=str(config_path), base=config_path.parent, search_space=True)
    if config.search is None:
        raise MedftError(f"{config_path}: no search section, so there is nothing to tune. Fix: add one, e.g. "
                         "search: {params: {optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}} "
                         "(see configs/tune_demo.yaml)")
    search = config.search
    base = config.model_dump(mode="json", exclude={"search"})  # paths resolved

    out.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    name = study_name or search.study_name or config_path.stem
    _claim_out(out, name, _masked(url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(
            storage=_storage(url), sampler=TrialSeededTPE(_seed(search, config), search.n_startup_trials),
            pruner=_pruner(search, config.train.epochs), study_name=name, direction="maximize", load_if_exists=True,
        )
    _check_same_search(study, config, name)
    left = sorted(path.name for path in out.glob("trial_*") if path.is_dir())  # before the trials: a worker may be starting one
    if left and not study.get_trials(deepcopy=False):
        raise MedftError(f"{out} holds trial folders ({', '.join(left[:3])}{'...' if len(left) > 3 else ''}) but study "
                         f"{name!r} in {_masked(url)} has no trials: they are left from a study whose database was "
                         "removed. Fix: delete those trial_* folders to start the study afresh, or give another --out")

    finished, running = _finished(study), _running(study)
    result = TuneResult(name, _masked(url), out, trials, finished, 0)
    elsewhere = f", {running} running in other workers" if running else ""
    if finished + running >= trials:
        log.info("study %r in %s already holds %d finished trial(s) of %d%s: nothing to run", name, result.storage,
                 finished, trials, elsewhere)
    else:
        log.info("study %r in %s: %d of %d trial(s) finished%s%s; %d to go", name, result.storage, finished, trials,
                 " (resumed)" if finished else "", elsewhere, trials - finished - running)
    resume_command = _command(config_path, trials, out, storage, study_name, overrides)
    objective = _Objective(base, search, out, name)
    try:
        with _quiet_known_failures():
            while _finished(study) + _running(study) < trials and len(objective.failures) < FAILURES_TO_STOP:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), gc_after_trial=True)
    except KeyboardInterrupt as stop:  # Ctrl-C: Optuna has marked the running trial failed
        result.ran = objective.started
        _write_results(study, out, result)
        where = f" during trial {stop.number}" if isinstance(stop, TrialInterrupted) else ""
        raise TuneInterrupted(
            f"interrupted{where}: that trial is marked failed; the study keeps its {_finished(study)} finished "
            f"trial(s). Continue with: {resume_command}"
        ) from None
    result.ran = objective.started
    _write_results(study, out, result)
    if len(objective.failures) >= FAILURES_TO_STOP:
        trials_by_error: dict[str, list[str]] = {}
        for trial, error in objective.failures:
            trials_by_error.setdefault(error, []).append(trial)
        raise MedftError(
            f"{FAILURES_TO_STOP} trials in a row failed, so this worker stops (the next ones would most likely fail "
            "too):\n" + "\n".join(f"  {', '.join(names)}: {error}" for error, names in trials_by_error.items()) +
            f"\nFix: correct the config, the data or the search ranges named above; then continue with: {resume_command}"
        )
    return result


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
            self.failures.append((f"trial {trial.number} ({_describe(params)})", str(exc)))
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
        log.info("trial %d of study %r: %s -> %s", trial.number, self.study_name, _describe(params), run_dir)

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
        best = summary["best_val_dice"]
        if best is None or not math.isfinite(best):
            raise TrialFailed("no finite validation Dice (no foreground in the validation cases?)")
        trial.set_user_attr("best_epoch", summary["best_epoch"])
        log.info("trial %d finished: best validation Dice %.4f at epoch %d", trial.number, best, summary["best_epoch"])
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


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """Optuna's TPE sampler, seeded for trial n from (seed, n).

    TPE keeps no state between trials but its random generator: what it learns comes from the
    study. A fresh TPE seeded from the trial number therefore samples as a long-lived one would,
    but two workers on one study, or a study resumed with the same seed, never repeat a draw;
    and the random start-up trials of a study are the same whichever worker runs them.
    """

    def __init__(self, seed: int, n_startup_trials: int):
        self.seed, self.n_startup_trials = seed, n_startup_trials
        self._number: int | None = None
        self._tpe: optuna.samplers.TPESampler | None = None

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number != self._number:
            seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{trial.number}".encode()).digest()[:4], "little")
            self._number = trial.number
            self._tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)
        return self._tpe

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)


def _seed(search: SearchConfig, config: RunConfig) -> int:
    return config.seed if search.sampler_seed is None else search.sampler_seed


def _pruner(search: SearchConfig, epochs: int) -> optuna.pruners.BasePruner:
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.min_resource, max_resource=epochs,
                                              reduction_factor=search.reduction_factor)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_resource,
                                                      reduction_factor=search.reduction_factor)
    return optuna.pruners.NopPruner()


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


def _describe(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


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


# --- results -----------------------------------------------------------------------------------

def _write_results(study, out: Path, result: TuneResult) -> None:
    """best_config.yaml, trials.csv and the plots, from every trial of the study (all workers)."""
    trials = study.get_trials(deepcopy=False)
    result.counts = {state.name.lower(): n for state in optuna.trial.TrialState
                     if (n := sum(t.state == state for t in trials))}
    result.files.append(_write_trials_csv(trials, out / "trials.csv"))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        result.best = {"number": best.number, "value": best.value, "best_epoch": best.user_attrs.get("best_epoch"),
                       "params": dict(best.params), "run_dir": best.user_attrs.get("run_dir")}
        result.files.append(_write_best_config(best, study.study_name, out))
    else:
        result.notes.append("no trial completed yet, so there is no best_config.yaml")
    result.files += _write_plots(study, complete, out, result.notes)


def _write_trials_csv(trials, path: Path) -> Path:
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    columns = ["number", "state", "value", "best_epoch", "epochs_trained", "pruned_at_epoch", "duration_s", "worker", "run_dir",
               "error", *names]
    rows = []
    for t in trials:
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row = {"number": t.number, "state": t.state.name.lower(), "value": t.value,
               "best_epoch": t.user_attrs.get("best_epoch"), "epochs_trained": t.last_step,
               "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
               "duration_s": None if duration is None else round(duration, 1),
               "worker": t.user_attrs.get("worker"), "run_dir": t.user_attrs.get("run_dir"),
               "error": t.user_attrs.get("error"), **t.params}
        rows.append({key: "" if value is None else value for key, value in row.items()})
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, path)  # several workers may write it at once
    return path


def _write_best_config(best, study_name: str, out: Path) -> Path:
    path = out / "best_config.yaml"
    searched = "\n".join(f"#   {key}: {value!r}" for key, value in best.params.items())
    header = (
        f"# Run: medft train {path} --out {out / 'best'}\n"
        f"# The best trial of study {study_name!r}: trial {best.number}, validation Dice {best.value:.4f}"
        f" at epoch {best.user_attrs.get('best_epoch')}; its run folder (with the trained weights) is\n"
        f"# {best.user_attrs.get('run_dir')}. The searched values:\n{searched}\n"
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(header + best.user_attrs["config"])
    os.replace(temporary, path)
    return path


def _importances(study: optuna.Study):
    """PED-ANOVA (Optuna 5's default) on every Optuna: older ones default to fANOVA, which needs scikit-learn."""
    from optuna.visualization import matplotlib as plots

    return plots.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                                        target_name="validation Dice")


def _write_plots(study, complete: list, out: Path, notes: list[str]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    written = []
    wanted = [("optimization_history.png", plots.plot_optimization_history, 1, "trial", "validation Dice (best epoch)"),
              ("intermediate_values.png", plots.plot_intermediate_values, 1, "epochs trained", "validation Dice"),
              ("param_importances.png", _importances, 2, None, None)]
    for name, plot, needed, xlabel, ylabel in wanted:
        if len(complete) < needed:
            notes.append(f"{name} needs at least {needed} complete trial(s), the study has {len(complete)}: not drawn")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = plot(study)
            if xlabel:
                axes.set_xlabel(xlabel)
                axes.set_ylabel(ylabel)
            temporary = out / f".{os.getpid()}.{name}"
            axes.figure.set_size_inches(8, 5)
            axes.figure.savefig(temporary, dpi=100, format="png", bbox_inches="tight")
            plt.close(axes.figure)
            os.replace(temporary, out / name)  # several workers may draw at once
            written.append(out / name)
        except Exception as exc:  # a plot is never worth losing the study's results for
            notes.append(f"{name}: not drawn ({type(exc).__name__}: {exc})")
    return written
