"""What several commands declare or do alike: the parser of a command, the repeated options, the
argument types, the console log."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE = "medft-console"  # the name of the medft logger's handler for stderr
PLUMBING = ("run", "command", "distributed")  # what add_command keeps in the parsed options, besides the options


def add_command(commands, name: str, text: str, run: Callable[..., int], distributed: bool = False) -> argparse.ArgumentParser:
    """A command's parser from its help ``text`` (a summary line, a blank line, the description, a blank line,
    ``example:`` and the example lines), calling ``run`` with the parsed options as keyword arguments.
    ``distributed``: the command may run in each process of a torchrun launch."""
    summary, _, rest = text.strip("\n").partition("\n\n")
    description, _, example = rest.partition("\n\nexample:\n")
    command = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n{example.rstrip()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(run=run, command=command.prog, distributed=distributed)
    return command


def add_overrides(parser: argparse.ArgumentParser, example: str, note: str = "") -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable{note})")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action="store_true",
                        help="average with the mirrored predictions along the axes the model was trained to mirror "
                             "(data.flip_axes: left-right by default)")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only each class's largest connected component (structures that are one piece)")


def add_dicom_seg_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dicom-seg", action="store_true",
                        help="also write each DICOM series' prediction as a DICOM SEG (<case_id>.seg.dcm) that references "
                             "the series, for a PACS or a DICOM viewer: one segment per class, the patient and study "
                             "copied from the series")


def add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path,
                        help="run folder (medft train), bundle folder, or adapter folder (medft export --adapter)")
    parser.add_argument("--parent", default=None, metavar="BUNDLE",
                        help="an adapter folder's parent bundle (a folder or Model Zoo name), when it is not where the "
                             "adapter's adapter.json says (e.g. on another machine); its weights must be those the "
                             "adapter was trained on")


def whole_number(rule: str, low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` (to ``high``), its error stating ``rule``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"give {rule}, not {text!r}")
        return value
    return parse


count = whole_number("a whole number of at least 1", 1)  # epochs, trials, channels, workers, voxels
port = whole_number("a port number from 1 to 65535", 1, 65535)


def console_logging() -> logging.Handler:
    """medft's log lines on stderr, as they are (the handler of an earlier command in this process replaced)."""
    logger = logging.getLogger("medft")
    for old in [h for h in logger.handlers if h.get_name() == CONSOLE]:
        logger.removeHandler(old)  # bound to the stderr of an earlier command in this process
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(CONSOLE)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler
