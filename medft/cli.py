"""The ``medft`` command line: parses arguments and calls one function per command.

Heavy imports (torch, MONAI) happen inside the commands so that ``medft --help`` answers at once.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from medft import __version__
from medft.errors import DISK_FULL_ERRNOS, MedftError, find_user_error

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_MANIFEST = REPO_ROOT / "data_manifests" / "hippocampus_sample.csv"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    processes = os.environ.get("WORLD_SIZE", "1")
    if processes not in ("", "1") and args.run not in (_train, _tune):  # tune refuses with its own fix
        print(f"medft: {args.command.removeprefix('medft ')} runs as one process, but torchrun started "
              f"WORLD_SIZE={processes} of them (each would do the whole job). Fix: run it without torchrun; only "
              "medft train trains across processes", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print("medft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (medft ... | head): not an error of medft's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 141
    except Exception as exc:  # no traceback for users unless they ask for it
        user_error = find_user_error(exc)
        if user_error is not None:
            print(f"medft: {user_error}", file=sys.stderr)
            return 1
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            print(
                f"medft: no space left on the device while writing {exc.filename or 'a file'}. "
                "Fix: free space on that disk, or write to another disk (another --out folder, for example)",
                file=sys.stderr,
            )
            return 1
        if os.environ.get("MEDFT_DEBUG"):
            raise
        if processes not in ("", "1"):  # a peer's failure reaches the others as a broken connection
            print(f"medft: process {os.environ.get('RANK', '?')} stopped ({type(exc).__name__}: {exc}). When another "
                  "process of the run failed first, its error above is the one to read; else run again with "
                  "MEDFT_DEBUG=1 for the traceback and report it.", file=sys.stderr)
            return 1
        print(
            f"medft: internal error ({type(exc).__name__}: {exc}). "
            "Run again with MEDFT_DEBUG=1 for the traceback and report it.",
            file=sys.stderr,
        )
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medft",
        description="Fine-tune pretrained MONAI bundle networks on your own medical images.",
        epilog="Run 'medft COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"medft {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    check = _command(
        commands,
        "check-data",
        "check a manifest and its files before training",
        "Reads every case of a manifest (CSV, MSD dataset.json or nnU-Net raw folder) and prints one line\n"
        "per problem: the case, the file, what is wrong and how to fix it. Exit 0 when clean (warnings\n"
        "allowed), 1 when there are errors, 2 for a usage error.",
        "medft check-data data_manifests/hippocampus_sample.csv",
    )
    check.add_argument("manifest", type=Path, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    check.add_argument("--workers", type=_count, default=None, help="volumes read in parallel (default: CPU count, at most 8)")
    check.set_defaults(run=_check_data)

    train = _command(
        commands,
        "train",
        "fine-tune a pretrained bundle network from a YAML config",
        "Loads the bundle, adapts its head to the config's classes, checks the data and a dummy batch,\n"
        "then trains with the config's freezing schedule and early stopping. The run folder gets\n"
        "config.yaml, metrics.jsonl, checkpoints/last.pt and best.pt, train.log and TensorBoard logs.\n"
        "Ctrl-C saves the state; --resume continues a stopped or killed run exactly. Launched by\n"
        "torchrun (torchrun --nproc_per_node N -m medft train ...) it trains data-parallel on N\n"
        "processes (GPUs), train.batch_size volumes each; rank 0 writes the run folder.",
        "medft train configs/demo.yaml --set train.epochs=5 --out runs/demo5",
    )
    train.add_argument("config", type=Path, help="YAML run config (see configs/)")
    _add_overrides(train, "optim.lr=3e-4", "; a relative data.manifest or model.bundle starts at the working directory")
    train.add_argument("--out", type=Path, default=None, help="run folder (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    train.set_defaults(run=_train)

    validate = _command(
        commands,
        "validate",
        "check a run config without running it",
        "Validates a YAML run config against medft's schema and prints every problem at once, each\n"
        "with its key (a search section's values too, as medft tune checks them), and checks that its\n"
        "manifest (and a local bundle folder) exist; prints the resolved config when it is valid.\n"
        "--keys lists every key with its type, default and meaning.",
        "medft validate configs/demo.yaml --set train.epochs=3\n  medft validate --keys",
    )
    validate.add_argument("config", type=Path, nargs="?", help="YAML run config")
    validate.add_argument("--keys", action="store_true", help="list every config key with its type, default and meaning")
    _add_overrides(validate, "train.epochs=3")
    validate.set_defaults(run=_validate)

    tune = _command(
        commands,
        "tune",
        "search hyperparameters: many short training runs, the poor ones pruned",
        "Tries the values of the config's search section (learning rates, freezing, augmentation...) in\n"
        "Optuna trials: a TPE sampler picks them, a Hyperband or successive-halving pruner stops poor\n"
        "trials from their validation Dice after each epoch. Each trial is a run folder OUT/trial_<n>.\n"
        "The study lives in OUT/study.db (SQLite; several workers on one machine may share it) or in\n"
        "--storage, any database URL (postgresql://user@host/db for workers on several machines).\n"
        "Running the same command again resumes the study: only the missing trials run; Ctrl-C marks\n"
        "the current trial failed and keeps the finished ones. A trial that fails (its config, the data,\n"
        "out of memory) is recorded with its error and the next one runs; 3 failures in a row stop.\n"
        "Writes OUT/best_config.yaml (ready for medft train), OUT/trials.csv and plots of the study.",
        "medft tune configs/tune_demo.yaml --trials 12 --out runs/tune_demo",
    )
    tune.add_argument("config", type=Path, help="YAML run config with a search section (see configs/tune_demo.yaml)")
    tune.add_argument("--trials", type=_count, required=True, metavar="N",
                      help="finished (complete or pruned) trials the study should hold; those already there count")
    tune.add_argument("--out", type=Path, default=None, help="folder for the trials and results (default: runs/<config name>)")
    tune.add_argument("--storage", default=None, metavar="URL",
                      help="database URL of the study (default: sqlite:///OUT/study.db)")
    tune.add_argument("--study", default=None, metavar="NAME",
                      help="study name (default: search.study_name, else the config file's name)")
    _add_overrides(tune, "train.epochs=10")
    tune.set_defaults(run=_tune)

    evaluate = _command(
        commands,
        "evaluate",
        "evaluate a run or bundle on labelled held-out data",
        "Predicts every case of the manifest (or of one split) with a sliding window, writes the\n"
        "predictions in the geometry of the input images, and computes per case and class Dice,\n"
        "sensitivity, specificity, HD95 and NSD (mm), a summary with 95% bootstrap intervals overall\n"
        "and per site, and report.html. Cases without a label are predicted only.",
        "medft evaluate runs/demo/train --manifest data_manifests/hippocampus_sample.csv --split test --out runs/demo/eval",
    )
    evaluate.add_argument("model", type=Path, help="run folder (medft train) or bundle folder")
    evaluate.add_argument("--manifest", type=Path, required=True, help="CSV manifest, MSD dataset.json or nnU-Net raw folder")
    evaluate.add_argument("--out", type=Path, required=True, help="evaluation folder to write")
    evaluate.add_argument("--split", default=None, help="evaluate one split (train, val, test); default: all cases")
    _add_inference_options(evaluate)
    evaluate.add_argument("--checkpoint", choices=("best", "last"), default="best",
                          help="a run's best checkpoint (picked on its validation split; default) or its last one "
                               "(the final model: an unbiased score on that validation split); run folders only: "
                               "a bundle has one set of weights")
    evaluate.add_argument("--compare", type=Path, default=None, metavar="OTHER_EVAL_DIR",
                          help="also write comparison.html: this evaluation against another one (paired on "
                               "common cases, unpaired when they share none, e.g. two sites)")
    evaluate.set_defaults(run=_evaluate)

    predict = _command(
        commands,
        "predict",
        "predict cases without labels",
        "Writes one label map per input (NIfTI files or DICOM series folders) as OUT/<name>.nii.gz,\n"
        "in the geometry of the input image. A file already there is refused before predicting, unless\n"
        "--overwrite.",
        "medft predict runs/demo/train sample_data/dicom/study1/13_HCropVolume --out runs/predictions",
    )
    predict.add_argument("model", type=Path, help="run folder (medft train) or bundle folder")
    predict.add_argument("inputs", type=Path, nargs="+", help="NIfTI files or DICOM series folders")
    predict.add_argument("--out", type=Path, required=True, help="folder for the predictions")
    _add_inference_options(predict)
    predict.add_argument("--overwrite", action="store_true",
                         help="replace prediction files already in --out (default: refuse before predicting)")
    predict.set_defaults(run=_predict)

    export = _command(
        commands,
        "export",
        "export a fine-tuned run as a MONAI bundle",
        "Writes the run's best checkpoint as a Model Zoo bundle (metadata with the new labels and\n"
        "validation metrics, inference config, weights) that plain MONAI loads.",
        "medft export runs/demo/train --out runs/demo/bundle",
    )
    export.add_argument("run_dir", type=Path, help="run folder written by medft train")
    export.add_argument("--out", type=Path, required=True, help="new bundle folder")
    export.set_defaults(run=_export)

    review = _command(
        commands,
        "review",
        "start the clinician review app on an evaluation",
        "Starts the Streamlit review app on an evaluation folder: reviewers log in, go through the\n"
        "cases (worst first), compare prediction and ground truth, grade each case and comment.\n"
        "Reviews are stored in EVAL_DIR/reviews.sqlite (or --db, any SQLAlchemy URL such as\n"
        "postgresql://host/db for a team). Add reviewers first with medft add-reviewer.",
        "medft review runs/demo/eval --port 8501",
    )
    review.add_argument("eval_dir", type=Path, help="evaluation folder written by medft evaluate")
    review.add_argument("--port", type=_port, default=None, help="port to serve on (default: Streamlit's, 8501)")
    review.add_argument("--users", type=Path, default=None, help="users file (default: EVAL_DIR/users.json)")
    review.add_argument("--db", default=None, help="SQLAlchemy URL of the review store (default: SQLite in EVAL_DIR)")
    review.add_argument("--address", default="127.0.0.1",
                        help="network interface to serve on (default: this machine only; 0.0.0.0 for every interface)")
    review.set_defaults(run=_review)

    reviewer = _command(
        commands,
        "add-reviewer",
        "add a reviewer (or change a password) in a users file",
        "Adds a reviewer to the users file of the review app; the password is read from the\n"
        "terminal (or from standard input with --password-stdin) and stored as a scrypt hash.",
        "medft add-reviewer alice --users runs/demo/eval/users.json --name 'Dr Alice'",
    )
    reviewer.add_argument("username", help="login name: letters, digits, '.', '_' or '-'")
    reviewer.add_argument("--users", type=Path, required=True, help="users file to create or update")
    reviewer.add_argument("--name", default=None, help="name shown in the app")
    reviewer.add_argument("--replace", action="store_true", help="change the password of an existing reviewer")
    reviewer.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    reviewer.set_defaults(run=_add_reviewer)

    remove = _command(
        commands,
        "remove-reviewer",
        "remove a reviewer from a users file",
        "Removes a reviewer from the users file: they can no longer log in. Their reviews stay in the\n"
        "review store.",
        "medft remove-reviewer alice --users runs/demo/eval/users.json",
    )
    remove.add_argument("username", help="login name to remove")
    remove.add_argument("--users", type=Path, required=True, help="users file to update")
    remove.set_defaults(run=_remove_reviewer)

    bundle = _command(commands, "bundle", "work with MONAI bundles", "Work with MONAI bundles: 'medft bundle COMMAND --help'.",
                      "medft bundle inspect bundles/hippocampus_demo --out-channels 3")
    bundle.set_defaults(run=lambda args: bundle.print_help() or 2)
    bundle_commands = bundle.add_subparsers(title="bundle commands", metavar="COMMAND")
    inspect = _command(
        bundle_commands,
        "inspect",
        "load a bundle, adapt it and push a dummy batch through it",
        "Loads a bundle (a folder in Model Zoo layout, or a Model Zoo name), adapts it to N output\n"
        "classes (and C input channels), runs a dummy forward and backward pass, and reports which\n"
        "pretrained tensors loaded. Exit 0 when it would train, 1 otherwise.",
        "medft bundle inspect bundles/hippocampus_demo --out-channels 3",
    )
    inspect.add_argument("bundle", help="bundle folder or Model Zoo name")
    inspect.add_argument("--out-channels", type=_count, default=None, help="output classes of the adapted network")
    inspect.add_argument("--in-channels", type=_count, default=None, help="input channels of the adapted network")
    inspect.add_argument("--input-size", type=_count, default=None, help="edge of the dummy input in voxels (default: the bundle's own "
                                                                         "input shape or sliding window, up to 128^3 voxels, else 32, "
                                                                         "then 64)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(run=_bundle_inspect)

    demo = _command(
        commands,
        "demo",
        "run the whole loop on the embedded sample data",
        "Fine-tunes the shipped demo bundle (bundles/hippocampus_demo, whole hippocampus) to the\n"
        "anterior/posterior task on the embedded sample with configs/demo.yaml, evaluates it on the\n"
        "sample's test split and exports it: DIR/train is the run folder, DIR/eval the evaluation\n"
        "and DIR/bundle the exported bundle.",
        "medft demo --out runs/demo",
    )
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    demo.add_argument("--epochs", type=_count, default=None, help="train fewer epochs than configs/demo.yaml, for a quick look")
    demo.set_defaults(run=_demo)
    return parser


def _add_overrides(parser: argparse.ArgumentParser, example: str, note: str = "") -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, e.g. --set {example} (repeatable{note})")


def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action="store_true",
                        help="average with the mirrored predictions along the axes the model was trained to mirror "
                             "(data.flip_axes: left-right by default)")
    parser.add_argument("--largest-component", action="store_true",
                        help="keep only each class's largest connected component (structures that are one piece)")


def _whole_number(rule: str, low: int, high: int | None = None):
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


_count = _whole_number("a whole number of at least 1", 1)  # epochs, trials, channels, workers, voxels
_port = _whole_number("a port number from 1 to 65535", 1, 65535)


def _command(commands, name: str, summary: str, description: str, example: str) -> argparse.ArgumentParser:
    command = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.set_defaults(command=command.prog)
    return command


def _check_data(args: argparse.Namespace) -> int:
    from medft.data.checks import check_manifest

    problems = check_manifest(args.manifest, workers=args.workers)
    for problem in problems:
        print(problem)
    errors = sum(p.severity == "error" for p in problems)
    warnings = len(problems) - errors
    print(f"{args.manifest}: {errors} error(s), {warnings} warning(s)")
    return 1 if errors else 0


def _train(args: argparse.Namespace) -> int:
    from medft.config import load_config

    config = load_config(args.config, args.overrides)
    _console_logging()
    from medft.train.distributed import is_main
    from medft.train.recipe import TrainingInterrupted, run_training

    run_dir = args.out or Path("runs") / args.config.stem
    saved = run_dir / "config.yaml"
    if not args.resume and saved.is_file() and saved.samefile(args.config):
        raise MedftError(f"{args.config}: --out {run_dir} is the config's own folder, and the run would replace this "
                         "file with its resolved config.yaml. Fix: give --out another folder, such as runs/NAME")
    try:
        summary = run_training(config, run_dir, resume=args.resume)
    except TrainingInterrupted as stop:
        if is_main():  # under torchrun, rank 0 speaks for all processes
            print(f"medft: {stop}", file=sys.stderr)
        return 130
    if is_main():
        print(f"best validation Dice {summary['best_val_dice']:.4f} at epoch {summary['best_epoch']}; run folder: {run_dir}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from medft.config import describe_keys, dump_config, load_config, missing_paths

    if args.keys:
        for key, kind, description in describe_keys():
            print(f"{key}  ({kind})\n    {description}" if description else f"{key}  ({kind})")
        return 0
    if args.config is None:
        raise MedftError("give a YAML run config to validate (or --keys to list the keys)")
    config = load_config(args.config, args.overrides, search_space=True)
    print(dump_config(config), end="")
    problems = missing_paths(config)
    for problem in problems:
        print(f"ERROR {args.config}: {problem}")
    print(f"{args.config}: {len(problems)} missing path(s)" if problems else f"{args.config}: valid")
    return 1 if problems else 0


def _tune(args: argparse.Namespace) -> int:
    import logging

    _console_logging()
    console = next(h for h in logging.getLogger("medft").handlers if h.get_name() == "medft-console")
    console.addFilter(lambda record: record.name == "medft.tune" or record.levelno >= logging.WARNING)  # runs log to their train.log
    import optuna

    from medft.tune import TuneInterrupted, tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # medft.tune logs each trial; Optuna's own lines repeat them

    try:
        result = tune(args.config, args.trials, out=args.out, storage=args.storage, study_name=args.study,
                      overrides=args.overrides)
    except TuneInterrupted as stop:
        print(f"medft: {stop}", file=sys.stderr)
        return 130
    print(result.summary())
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    _console_logging()
    from medft.evaluate.run import evaluate
    from medft.formats.evaluation import CaseStatus, read_evaluation_file

    out = evaluate(args.model, args.manifest, args.out, split=args.split, tta=args.tta,
                   largest_component=args.largest_component, checkpoint=args.checkpoint, compare=args.compare)
    print(f"evaluation written to {out}: per_case.csv, summary.json, predictions/, report.html")
    _print_dice(out / "summary.json")
    cases = read_evaluation_file(out).cases
    failed = sum(case.status is CaseStatus.FAILED for case in cases)
    if failed:
        print(f"  {failed} of {len(cases)} cases failed and were not evaluated: the reasons are above, in "
              "evaluation.json and in report.html")
    if args.compare:
        print(f"comparison written to {out / 'comparison.html'}")
        _print_comparison(out / "comparison.json")
    return 0


def _print_dice(summary_path: Path) -> None:
    """Each class's mean Dice over the cases, with its 95% interval, from an evaluation's summary.json."""
    summary = json.loads(summary_path.read_text())
    if not summary["n_cases"]:
        print("  no case with a label: predictions only, no Dice")
        return
    for name in summary["classes"]:
        dice = summary["overall"][name]["dice"]
        if dice["mean"] is None:
            print(f"  {name:<16} Dice undefined: the class is in no case's label or prediction")
            continue
        low, high = dice["ci95"]
        interval = f" [{low:.3f}, {high:.3f}]" if low is not None else ""
        absent = f"; {dice['n_nan']} without the class in label or prediction, left out" if dice["n_nan"] else ""
        print(f"  {name:<16} Dice {dice['mean']:.3f}{interval} over {dice['n']} cases{absent}")


def _print_comparison(comparison_path: Path) -> None:
    """Each class's mean Dice under A and B and the difference B - A with its 95% interval, from comparison.json."""
    from medft.evaluate.report import MEAN_LABEL
    from medft.evaluate.summary import MEAN_FOREGROUND

    result = json.loads(comparison_path.read_text())
    design = result["design"]
    print(f"  A: {result['a']['label']}\n  B: {result['b']['label']}\n"
          f"  {'':<16} {'A':>6} {'B':>6}  B - A ({design}, 95% interval)")

    def number(value: float | None, sign: str = "") -> str:
        return "n/a" if value is None else f"{value:{sign}.3f}"

    for key, entry in result["dice"].items():
        diff = entry[design]
        low, high = diff["ci95"]
        interval = f" [{number(low, '+')}, {number(high, '+')}]" if low is not None else ""
        print(f"  {MEAN_LABEL if key == MEAN_FOREGROUND else key:<16} {number(entry['a']['mean']):>6} "
              f"{number(entry['b']['mean']):>6}  {number(diff['mean_diff'], '+')}{interval}")


def _predict(args: argparse.Namespace) -> int:
    _console_logging()
    from medft.evaluate.run import predict_files

    missing = [p for p in args.inputs if not p.exists()]
    if missing:
        raise MedftError(f"{missing[0]}: no such file or folder. Fix: give NIfTI files or DICOM series folders")
    for path in predict_files(args.model, args.inputs, args.out, tta=args.tta, largest_component=args.largest_component,
                              overwrite=args.overwrite):
        print(path)
    return 0


def _review(args: argparse.Namespace) -> int:
    from medft.review.app_support import launch

    return launch(args.eval_dir, args.port, args.users, args.db, args.address)


def _add_reviewer(args: argparse.Namespace) -> int:
    import getpass

    from medft.review.auth import add_user

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")  # a Windows line end too
    elif not sys.stdin.isatty():
        raise MedftError("no terminal to ask the password on (standard input is a pipe or a file). Fix: add "
                         "--password-stdin to read it from standard input, or run the command in a terminal")
    else:
        password = getpass.getpass(f"password for {args.username}: ")
        if getpass.getpass("again: ") != password:
            raise MedftError("the passwords differ; nothing was changed")
    add_user(args.users, args.username, password, name=args.name, replace=args.replace)
    print(f"reviewer {args.username} saved in {args.users}")
    return 0


def _remove_reviewer(args: argparse.Namespace) -> int:
    from medft.review.auth import remove_user

    remove_user(args.users, args.username)
    print(f"reviewer {args.username} removed from {args.users}; their reviews stay in the review store")
    return 0


def _export(args: argparse.Namespace) -> int:
    from medft.bundle.export import export_run

    out = export_run(args.run_dir, args.out)
    print(f"exported {args.run_dir} as a MONAI bundle: {out}")
    return 0


def _bundle_inspect(args: argparse.Namespace) -> int:
    import json

    from medft.bundle.inspect import format_inspection, inspect_bundle

    try:
        result = inspect_bundle(args.bundle, out_channels=args.out_channels, in_channels=args.in_channels,
                                input_size=args.input_size)
    except MedftError as error:
        if not args.json:
            raise
        # a bundle that cannot be read or built: still the JSON a script waits for, and the message on stderr
        print(json.dumps({"bundle": args.bundle, "forward_ok": False, "would_train": False, "errors": [str(error)]},
                         indent=1))
        raise
    print(json.dumps(result, indent=1) if args.json else format_inspection(result))
    return 0 if result.get("would_train") else 1


def _console_logging() -> None:
    import logging

    logger = logging.getLogger("medft")
    for old in [h for h in logger.handlers if h.get_name() == "medft-console"]:
        logger.removeHandler(old)  # bound to the stderr of an earlier command in this process
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name("medft-console")
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _demo(args: argparse.Namespace) -> int:
    config_path = REPO_ROOT / "configs" / "demo.yaml"
    if not config_path.exists():
        raise MedftError(f"{config_path} is not here: the demo runs from a clone of the medft repository")
    out = args.out
    _clear_demo_folder(out)
    manifest = os.path.relpath(SAMPLE_MANIFEST)
    print(f"== medft check-data {manifest}")
    if _check_data(argparse.Namespace(manifest=SAMPLE_MANIFEST, workers=None)):
        return 1
    print(f"== medft train {os.path.relpath(config_path)} --out {out / 'train'}")
    overrides = [f"train.epochs={args.epochs}"] if args.epochs else []
    status = _train(argparse.Namespace(config=config_path, overrides=overrides, out=out / "train", resume=False))
    if status:
        return status
    print(f"== medft evaluate {out / 'train'} --manifest {manifest} --split test --out {out / 'eval'}")
    _evaluate(argparse.Namespace(model=out / "train", manifest=SAMPLE_MANIFEST, out=out / "eval", split="test",
                                 tta=False, largest_component=False, checkpoint="best", compare=None))
    print(f"== medft export {out / 'train'} --out {out / 'bundle'}")
    _export(argparse.Namespace(run_dir=out / "train", out=out / "bundle"))
    print(
        f"\nDone. Run folder (metrics.jsonl, checkpoints, train.log): {out / 'train'}\n"
        f"Evaluation on the test split (per_case.csv, summary.json, predictions/): {out / 'eval'}\n"
        f"  report: {(out / 'eval' / 'report.html').resolve()}\n"
        f"Exported bundle: {out / 'bundle'}"
    )
    return 0


DEMO_MARKER = ".medft-demo"
DEMO_PARTS = ("train", "eval", "bundle")


def _clear_demo_folder(out: Path) -> None:
    """The demo starts afresh: it removes what an earlier demo wrote in OUT, and nothing else."""
    if out.exists() and not out.is_dir():
        raise MedftError(f"{out}: is a file, not a folder. Fix: give --out a folder (new, or one an earlier demo wrote)")
    parts = [out / name for name in DEMO_PARTS if (out / name).exists()]
    if parts and not (out / DEMO_MARKER).exists():
        raise MedftError(
            f"{out}: holds {', '.join(p.name + '/' for p in parts)}, not marked as a demo's ({DEMO_MARKER}), "
            "which the demo would replace. Fix: give another --out, or move them away"
        )
    from medft.evaluate.run import REVIEW_FILES

    reviewed = [name for name in REVIEW_FILES if (out / "eval" / name).exists()]
    if reviewed:
        raise MedftError(
            f"{out / 'eval'}: holds {' and '.join(reviewed)}, written by reviewers, which a new demo would delete. "
            f"Fix: move {out / 'eval'} aside to keep them, or give another --out"
        )
    for part in parts:
        shutil.rmtree(part)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by medft demo: its train/, eval/ and bundle/ are replaced by the next demo\n")
