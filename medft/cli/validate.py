"""check a run config without running it

Validates a YAML run config against medft's schema and prints every problem at once, each
with its key (a search section's values too, as medft tune checks them), and checks that its
manifest (and a local bundle folder) exist; prints the resolved config when it is valid.
--keys lists every key with its type, default and meaning.

example:
  medft validate configs/demo.yaml --set train.epochs=3
  medft validate --keys
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command, add_overrides
from medft.errors import MedftError


def add_to(commands) -> None:
    command = add_command(commands, "validate", __doc__, run)
    command.add_argument("config", type=Path, nargs="?", help="YAML run config")
    command.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    add_overrides(command, "train.epochs=3")


def run(config: Path | None = None, keys: bool = False, overrides: list[str] = ()) -> int:
    from medft.config import describe_keys, dump_config, missing_paths
    from medft.tune.space import RunConfigWithSearch, load_search_config

    if keys:
        for key, kind, description in describe_keys(RunConfigWithSearch):
            print(f"{key}  ({kind})\n    {description}" if description else f"{key}  ({kind})")
        return 0
    if config is None:
        raise MedftError("give a YAML run config to validate (or --keys to list the keys)")
    resolved = load_search_config(config, overrides)
    print(dump_config(resolved), end="")
    problems = missing_paths(resolved)
    for problem in problems:
        print(f"ERROR {config}: {problem}")
    print(f"{config}: {len(problems)} missing path(s)" if problems else f"{config}: valid")
    return 1 if problems else 0
