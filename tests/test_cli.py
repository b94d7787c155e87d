import json
import subprocess
import sys

import pytest

from medft import cli
from tests.conftest import REPO


def _medft(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medft", *args], capture_output=True, text=True, cwd=REPO, input=input)


def test_help_lists_the_commands_without_importing_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from medft.cli import main\n"
         "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print('heavy' if {'torch', 'monai'} & set(sys.modules) else 'light')"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert "check-data" in result.stdout and "demo" in result.stdout
    assert result.stdout.strip().endswith("light")


@pytest.mark.parametrize("command", ["check-data", "train", "validate", "export", "bundle", "bundle inspect", "demo",
                                     "add-reviewer", "remove-reviewer"])
def test_every_command_has_help_with_an_example(command):
    result = _medft(*command.split(), "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and f"medft {command}" in result.stdout


def test_usage_errors_exit_2():
    result = _medft("check-data")
    assert result.returncode == 2 and "the following arguments are required: manifest" in result.stderr
    result = _medft("bundle")  # a group without its command: the group's help, not the top level's
    assert result.returncode == 2 and result.stdout.startswith("usage: medft bundle") and "inspect" in result.stdout


def test_a_reader_that_leaves_early_is_no_internal_error():
    # A command whose output outlasts the pipe's buffer, so that it is still writing when the reader leaves.
    flood = ("import sys\nfrom medft import cli\n"
             "def flood(**options):\n    for _ in range(100_000):\n        print('x' * 80)\n    return 0\n"
             "cli.validate.run = flood\nsys.exit(cli.main(['validate', '--keys']))")
    reader = subprocess.Popen([sys.executable, "-c", flood], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reader.stdout.readline()
    reader.stdout.close()  # as `| head -1` does
    assert reader.wait(timeout=60) == 141
    assert reader.stderr.read() == ""


@pytest.mark.parametrize("args", [
    ["bundle", "inspect", "bundles/hippocampus_demo", "--out-channels", "0"],
    ["bundle", "inspect", "bundles/hippocampus_demo", "--in-channels", "-1"],
    ["bundle", "inspect", "bundles/hippocampus_demo", "--input-size", "x"],
    ["demo", "--epochs", "0"],
    ["check-data", "data_manifests/hippocampus_sample.csv", "--workers", "0"],
    ["tune", "configs/tune_demo.yaml", "--trials", "0"],
])
def test_a_count_under_1_is_a_usage_error_naming_the_option(args):
    result = _medft(*args)
    option, value = args[-2], args[-1]
    assert result.returncode == 2
    assert f"argument {option}: give a whole number of at least 1, not '{value}'" in result.stderr


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_port_outside_1_to_65535_is_a_usage_error(port):
    result = _medft("review", "runs/demo/eval", "--port", port)
    assert result.returncode == 2
    assert f"argument --port: give a port number from 1 to 65535, not '{port}'" in result.stderr


def test_a_missing_manifest_is_one_line_and_exit_1():
    result = _medft("check-data", "no/such/manifest.csv")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "ERROR no/such/manifest.csv: no such manifest. "
        "Fix: give a CSV manifest, an MSD dataset.json or an nnU-Net raw folder"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_unexpected_errors_show_no_traceback(monkeypatch, capsys):
    def broken(**options):
        raise ValueError("boom")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check-data"].set_defaults(run=broken)
    monkeypatch.delenv("MEDFT_DEBUG", raising=False)
    assert cli.main(["check-data", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert "internal error (ValueError: boom)" in err and "MEDFT_DEBUG=1" in err and "Traceback" not in err


def test_commands_other_than_train_refuse_to_run_once_per_torchrun_process(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["evaluate", "run", "--manifest", "m.csv", "--out", "eval"]) == 2
    assert capsys.readouterr().err == ("medft: evaluate runs as one process, but torchrun started WORLD_SIZE=2 of them "
                                       "(each would do the whole job). Fix: run it without torchrun; only medft train "
                                       "trains across processes\n")
    assert cli.main(["bundle", "inspect", "b"]) == 2
    assert "medft: bundle inspect runs as one process" in capsys.readouterr().err


def test_a_process_of_a_distributed_run_that_loses_its_peer_points_to_the_peers_error(monkeypatch, capsys):
    def peer_failed(**options):
        raise RuntimeError("Connection closed by peer [127.0.0.1]:57984")

    monkeypatch.setattr(cli.train, "run", peer_failed)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MEDFT_DEBUG", raising=False)
    assert cli.main(["train", "config.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("medft: process 0 stopped (RuntimeError: Connection closed by peer [127.0.0.1]:57984). When "
                          "another process of the run failed first, its error above is the one to read")
    assert "internal error" not in err


def test_demo_fine_tunes_the_shipped_bundle_and_exports_it(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "0 error(s), 0 warning(s)" in out and "best validation Dice" in out
    for path in ("train/config.yaml", "train/metrics.jsonl", "train/checkpoints/best.pt", "bundle/configs/metadata.json",
                 "bundle/configs/inference.json", "bundle/models/model.pt"):
        assert (tmp_path / "demo" / path).is_file(), path
    report = (tmp_path / "demo" / "train" / "head_adaptation.txt").read_text()
    assert "hippocampus_demo" in (tmp_path / "demo" / "train" / "config.yaml").read_text() and "loaded" in report
    summary = json.loads((tmp_path / "demo" / "eval" / "summary.json").read_text())
    for name in ("anterior", "posterior"):  # the test split's Dice is printed as summary.json holds it
        dice = summary["overall"][name]["dice"]
        low, high = dice["ci95"]
        assert f"{name:<16} Dice {dice['mean']:.3f} [{low:.3f}, {high:.3f}] over 6 cases" in out


def test_demo_replaces_its_own_folders_and_refuses_others(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "train").mkdir(parents=True)
    (out / "train" / "notes.txt").write_text("mine")
    assert cli.main(["demo", "--out", str(out), "--epochs", "1"]) == 1
    assert "holds train/, not marked as a demo's (.medft-demo)" in capsys.readouterr().err
    assert (out / "train" / "notes.txt").read_text() == "mine"

    (out / "train" / "notes.txt").unlink()
    (out / "train").rmdir()
    assert cli.main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    stale = out / "eval" / "predictions" / "stale.nii.gz"
    stale.write_text("from an earlier demo")
    assert cli.main(["demo", "--out", str(out), "--epochs", "1"]) == 0
    assert not stale.exists() and (out / "eval" / "summary.json").is_file()

    reviews = out / "eval" / "reviews.sqlite"
    reviews.write_bytes(b"grades and comments of a clinician")
    assert cli.main(["demo", "--out", str(out), "--epochs", "1"]) == 1
    assert (f"{out / 'eval'}: holds reviews.sqlite, written by reviewers, which a new demo would delete. "
            f"Fix: move {out / 'eval'} aside") in capsys.readouterr().err
    assert reviews.read_bytes() == b"grades and comments of a clinician" and (out / "train" / "config.yaml").is_file()


def test_bundle_inspect_prints_the_contract_json(tmp_path):
    import json

    from tests.bundle.helpers import UNET3D, make_bundle

    bundle = make_bundle(tmp_path / "tiny", UNET3D)
    result = _medft("bundle", "inspect", str(bundle), "--out-channels", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["forward_ok"] is True
    assert report["total_pretrained"] == report["loaded"] + report["dropped"]
    assert report["dropped"] == report["new"] > 0  # the head's tensors, reshaped for 3 classes
    text = _medft("bundle", "inspect", str(bundle), "--out-channels", "3")
    assert text.returncode == 0 and "loaded" in text.stdout


def test_bundle_inspect_exit_1_when_it_would_not_train(tmp_path):
    from tests.bundle.helpers import UNET3D, make_bundle

    bundle = make_bundle(tmp_path / "tiny", UNET3D)
    result = _medft("bundle", "inspect", str(bundle), "--out-channels", "3", "--input-size", "3")
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr


def test_add_reviewer_then_review_refuses_a_folder_that_is_no_evaluation(tmp_path):
    users = tmp_path / "users.json"
    added = subprocess.run([sys.executable, "-m", "medft", "add-reviewer", "alice", "--users", str(users),
                            "--password-stdin"], input="correct horse battery\n", capture_output=True, text=True, cwd=REPO)
    assert added.returncode == 0, added.stderr
    from medft.review.auth import verify

    assert verify(users, "alice", "correct horse battery") and not verify(users, "alice", "wrong password")
    result = _medft("review", str(tmp_path), "--users", str(users))
    assert result.returncode == 1
    assert "per_case.csv" in result.stderr and "Traceback" not in result.stderr


def test_add_reviewer_without_a_terminal_asks_for_password_stdin(tmp_path):
    users = tmp_path / "users.json"
    piped = subprocess.run([sys.executable, "-m", "medft", "add-reviewer", "bob", "--users", str(users)],
                           input="correct horse battery\n", capture_output=True, text=True, cwd=REPO)
    assert piped.returncode == 1 and "Traceback" not in piped.stderr
    assert "no terminal to ask the password on" in piped.stderr and "--password-stdin" in piped.stderr
    assert not users.exists()


def test_a_windows_line_end_is_no_part_of_the_password_and_a_reviewer_can_be_removed(tmp_path):
    from medft.review.auth import list_users, verify

    users = tmp_path / "users.json"
    for name in ("alice", "bob"):
        added = _medft("add-reviewer", name, "--users", str(users), "--password-stdin", input="correct horse battery\r\n")
        assert added.returncode == 0, added.stderr
    assert verify(users, "alice", "correct horse battery")
    removed = _medft("remove-reviewer", "alice", "--users", str(users))
    assert removed.returncode == 0 and "reviewer alice removed" in removed.stdout
    assert list_users(users) == ["bob"]
    again = _medft("remove-reviewer", "alice", "--users", str(users))
    assert again.returncode == 1 and "there is no user 'alice' to remove. Fix: pick one of bob" in again.stderr


def test_the_printed_dice_says_when_no_case_had_a_label(capsys):
    from medft.cli.evaluate import print_dice
    from medft.evaluate.summary import summarize

    row = {"case_id": "a", "site": "", "class_index": 1, "class_name": "anterior", "dice": 0.8, "sensitivity": 0.9,
           "specificity": 0.99, "hd95": 1.0, "nsd": 0.9, "tp": 8, "fp": 2, "fn": 2, "tn": 88}
    for rows, expected in (([], "no case with a label: predictions only, no Dice"),
                           ([row], "anterior         Dice 0.800 over 1 cases")):
        print_dice(summarize(rows, ["background", "anterior"]))
        assert expected in capsys.readouterr().out


def test_demo_into_a_file_is_a_clear_error(tmp_path, capsys):
    """It used to be "internal error (FileExistsError ...)" from mkdir."""
    out = tmp_path / "demo"
    out.write_text("not a folder")
    assert cli.main(["demo", "--out", str(out), "--epochs", "1"]) == 1
    assert f"{out}: is a file, not a folder. Fix: give --out a folder" in capsys.readouterr().err
    assert out.read_text() == "not a folder"


def test_bundle_inspect_json_of_a_bundle_that_does_not_build(tmp_path):
    import json

    from tests.bundle.helpers import UNET3D, make_bundle

    bundle = make_bundle(tmp_path / "tiny", UNET3D)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["network_def"]["dimensions"] = 3  # an argument this MONAI's UNet no longer takes
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    result = _medft("bundle", "inspect", str(bundle), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["would_train"] is False and report["forward_ok"] is False
    assert "network_overrides: {dimensions: null}" in report["errors"][0] and report["errors"][0] in result.stderr
