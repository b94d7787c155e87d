"""How the trials of a study are sampled (TPE, seeded per trial) and pruned (Hyperband, successive halving)."""
from __future__ import annotations

import hashlib

import optuna

from medft.config import RunConfig
from medft.tune.space import SearchConfig


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


def sampler(search: SearchConfig, config: RunConfig) -> TrialSeededTPE:
    """The search's sampler, seeded from ``search.sampler_seed``, by default the config's seed."""
    seed = config.seed if search.sampler_seed is None else search.sampler_seed
    return TrialSeededTPE(seed, search.n_startup_trials)


def pruner(search: SearchConfig, epochs: int) -> optuna.pruners.BasePruner:
    """The search's pruner; ``epochs``, the budget of every trial, is Hyperband's largest resource."""
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=search.min_resource, max_resource=epochs,
                                              reduction_factor=search.reduction_factor)
    if search.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=search.min_resource,
                                                      reduction_factor=search.reduction_factor)
    return optuna.pruners.NopPruner()
