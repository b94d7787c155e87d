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

The modules, by job: ``space`` (the search section: its schema, its checks, a trial's config),
``sampling`` (the sampler and the pruner), ``study`` (the database, the worker, one trial) and
``results`` (what the output folder holds, and the summary). Importing the package imports none of
them: ``space`` is light (``medft validate`` checks a search section without loading Optuna or torch).
"""
