import subprocess
import sys

import pytest

from medft import cli
from tests.conftest import REPO


def _medft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medft", *args], capture_output=True, text=True, cwd=REPO)


def test_help_lists_the_commands_without_importing_torch():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from medft.cli import main\n"
         "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
         "print('heavy' if {'torch', 'monai'} & set(sys.modules) else 'light')"],
        capture_output=True, text=True, cwd=REPO,
    )
    assert "check-data" in result.stdout and "demo" in result.stdout
    assert result.stdout.strip().endswith("light")


@pytest.mark.parametrize("command", ["check-data", "demo"])
def test_every_command_has_help_with_an_example(command):
    result = _medft(command, "--help")
    assert result.returncode == 0
    assert "example:" in result.stdout and f"medft {command}" in result.stdout


def test_usage_errors_exit_2():
    result = _medft("check-data")
    assert result.returncode == 2 and "the following arguments are required: manifest" in result.stderr


def test_a_missing_manifest_is_one_line_and_exit_1():
    result = _medft("check-data", "no/such/manifest.csv")
    assert result.returncode == 1
    assert result.stdout.splitlines()[0] == (
        "ERROR no/such/manifest.csv: no such manifest. "
        "Fix: give a CSV manifest, an MSD dataset.json or an nnU-Net raw folder"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_unexpected_errors_show_no_traceback(monkeypatch, capsys):
    def broken(args):
        raise ValueError("boom")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check-data"].set_defaults(run=broken)
    monkeypatch.delenv("MEDFT_DEBUG", raising=False)
    assert cli.main(["check-data", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert "internal error (ValueError: boom)" in err and "MEDFT_DEBUG=1" in err and "Traceback" not in err


def test_demo_checks_the_sample_and_says_what_is_not_built(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert out.count("0 error(s), 0 warning(s)") == 2
    assert "not built yet" in out
