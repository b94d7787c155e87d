"""What a tune leaves in its output folder, from every trial of the study (all workers): ``best_config.yaml``
(ready for ``medft train``), ``trials.csv`` and plots; and the summary the command prints."""
from __future__ import annotations

import csv
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from medft.tune.space import describe_params


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
                         f"{self.best['best_epoch']}: {describe_params(self.best['params'])}")
            lines.append(f"  its run folder: {self.best['run_dir']}")
        if self.files:
            lines.append(f"written to {self.out}: " + ", ".join(path.name for path in self.files))
        if self.best:
            lines.append(f"train the best config: medft train {self.out / 'best_config.yaml'} --out {self.out / 'best'}")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


def write_results(study, out: Path, result: TuneResult) -> None:
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
