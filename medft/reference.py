"""docs/reference.md, made from the definitions themselves (argparse's commands, the pydantic config), so that it
cannot drift from them: ``python -m medft.reference > docs/reference.md`` (``make docs``); a test compares."""
from __future__ import annotations

import argparse
import os

WIDTH = "100"  # columns argparse wraps --help at: the file is the same on every terminal


def render() -> str:
    from medft.cli import build_parser
    from medft.config import describe_keys
    from medft.tune.space import RunConfigWithSearch

    parts = ["# Reference", "",
             "Made by `python -m medft.reference` (`make docs`) from medft's own definitions: do not edit by hand.", "",
             "## Commands", ""]
    for name, parser in _commands(build_parser()):
        parts += [f"### `{name}`", "", "```", _help(parser).rstrip(), "```", ""]
    parts += ["## Config keys", "", "What a YAML run config (`configs/`) holds; `--set KEY=VALUE` takes the same dotted keys.", "",
              "| key | type and default | meaning |", "| --- | --- | --- |"]
    parts += [f"| `{key}` | {_cell(kind)} | {_cell(description)} |" for key, kind, description in describe_keys(RunConfigWithSearch)]
    return "\n".join(parts + _perturbations()) + "\n"


def _perturbations() -> list[str]:
    """The table of ``medft stress``'s perturbations and their parameters at each level."""
    from medft.stress.perturbations import LEVELS, PERTURBATIONS

    lines = ["", "## Stress-test perturbations", "",
             "`medft stress --perturbations NAME ...`; the levels' parameters (docs/stress-tests.md says why these).", "",
             "| perturbation | images | " + " | ".join(f"level {level}" for level in LEVELS) + " | parameters |",
             "| --- | --- | " + "--- | " * len(LEVELS) + "--- |"]
    for name, perturbation in PERTURBATIONS.items():
        cells = [", ".join(f"{key} {value}" for key, value in perturbation.parameters(level).items()) for level in LEVELS]
        lines.append(f"| `{name}` | {' and '.join(m.upper() for m in perturbation.modalities)} | "
                     + " | ".join(cells) + f" | {_cell(perturbation.describe)} |")
    return lines


def _commands(parser: argparse.ArgumentParser, prefix: str = "medft") -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found += _commands(sub, f"{prefix} {name}")
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        return parser.format_help()
    finally:
        if before is None:
            os.environ.pop("COLUMNS")
        else:
            os.environ["COLUMNS"] = before


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


if __name__ == "__main__":
    print(render(), end="")
