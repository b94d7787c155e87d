"""A full disk is a clear line from the command line, never an internal error."""
from __future__ import annotations

import errno

import pytest

from medft import cli


def _check_data_raising(monkeypatch, exc: BaseException) -> None:
    def broken(**options):
        raise exc

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check-data"].set_defaults(run=broken)
    monkeypatch.delenv("MEDFT_DEBUG", raising=False)


@pytest.mark.parametrize(("exc", "written"), [
    (OSError(errno.ENOSPC, "No space left on device", "runs/demo/eval/predictions/case_1.nii.gz"),
     "runs/demo/eval/predictions/case_1.nii.gz"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "a file"),
])
def test_a_full_disk_says_so_and_names_the_file(monkeypatch, capsys, exc, written):
    _check_data_raising(monkeypatch, exc)
    assert cli.main(["check-data", "x.csv"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"medft: no space left on the device while writing {written}. Fix: free space")
    assert "internal error" not in err
