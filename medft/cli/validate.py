"""``medft validate``: check a run config without running it; ``--keys`` lists every key."""
from __future__ import annotations

import argparse
from pathlib import Path

from medft.cli.common import add_command, add_overrides
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(
        commands,
        "validate",
        "check a run config without running it",
        "Validates a YAML run config against medft's schema and prints every problem at once, each\n"
        "with its key (a search section's values too, as medft tune checks them), and checks that its\n"
        "manifest (and a local bundle folder) exist; prints the resolved config when it is valid.\n"
        "--keys lists every key with its type, default and meaning.",
        "medft validate configs/demo.yaml --set train.epochs=3\n  medft validate --keys",
    )
    command.add_argument("config", type=Path, nargs="?", help="YAML run config")
    command.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    add_overrides(command, "train.epochs=3")
    command.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from medft.config import describe_keys, dump_config, missing_paths
    from medft.tune.space import RunConfigWithSearch, load_search_config

    if args.keys:
        for key, kind, description in describe_keys(RunConfigWithSearch):
            print(f"{key}  ({kind})\n    {description}" if description else f"{key}  ({kind})")
        return 0
    if args.config is None:
        raise MedftError("give a YAML run config to validate (or --keys to list the keys)")
    config = load_search_config(args.config, args.overrides)
    print(dump_config(config), end="")
    problems = missing_paths(config)
    for problem in problems:
        print(f"ERROR {args.config}: {problem}")
    print(f"{args.config}: {len(problems)} missing path(s)" if problems else f"{args.config}: valid")
    return 1 if problems else 0
