"""Paths out of what people read: a folder or file name may be a patient's name or ID, so reports, the review
app and their messages show "[path]" where a path stood."""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

HIDDEN_PATH = "[path]"
# A path goes on up to a space, quote, bracket or colon; or, with spaces, up to the first extension of a medical
# image or of a file medft reads ("/data/Jane Doe.nii.gz"), within one clause.
_FILE_WITH_SPACES = r"""[^"'()<>:\n,;]*?\.(?:nii\.gz|nii|dcm|mha|mhd|nrrd|csv|json|ya?ml|pt|png)\b"""
_PATH_REST = rf"""(?:{_FILE_WITH_SPACES}|[^\s"'()<>:]*)"""
_ABSOLUTE_PATH = re.compile(rf"""(?<![\w.])(?:[A-Za-z]:)?[\\/](?:{_FILE_WITH_SPACES}|[^\s"'()<>:]+)""")  # /a/b, C:\a\b; not 1/2


def hide_paths(text: str, known: Iterable[str | Path | None] = ()) -> str:
    """``text`` with each file path replaced by "[path]": a folder or file name may be a patient's name or ID.

    First the ``known`` absolute paths and their folders (which may hold spaces), each with whatever
    continues it (a file in that folder), then anything else that looks like an absolute path. A file name
    with spaces is hidden whole when it ends in an extension medft knows (``.nii.gz``, ``.dcm``, ``.csv``...)."""
    absolute = [Path(p) for p in known if p and Path(p).is_absolute()]
    paths = {str(q) for p in absolute for q in (p, p.parent) if len(q.parts) > 1}  # not the root alone
    for path in sorted(paths, key=len, reverse=True):
        text = re.sub(re.escape(path) + _PATH_REST, HIDDEN_PATH, text)
    return _ABSOLUTE_PATH.sub(HIDDEN_PATH, text)
