"""Where a run keeps its preprocessed cases between epochs: in memory up to a budget (``data.cache_memory``),
the rest in a persistent cache on disk (``data.cache_dir``, MONAI's ``PersistentDataset``).

A case's sizes are estimated from its headers before anything loads (``medft.data.footprint``); the
cases that fit the budget, in manifest order, stay in memory, the others are preprocessed once into
the disk cache. A disk entry is keyed by the case's files (path, size, modification time), the
preprocessing, the run's classes and channels and medft's version: a change to any of them makes
the case be preprocessed again. Every case is loaded before training starts, so that a file that
cannot be read stops the run at once, naming each such case.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, Dataset, MetaTensor, PersistentDataset
from monai.transforms import Compose, Transform
from torch.utils.data import ConcatDataset
from tqdm.auto import tqdm

from medft import __version__
from medft.errors import MedftError, find_user_error

log = logging.getLogger("medft.train")
GB = 1024**3
MEMORY_SHARE = 0.5  # of the memory available when the run starts
MAX_SHOWN = 10  # cases that failed to load, named in the error


def memory_budget(cache_memory_gb: float | None) -> int:
    """Bytes of memory for cached cases: ``data.cache_memory``, else half of the available memory shared by the
    processes that torchrun started on this machine."""
    if cache_memory_gb is not None:
        return int(cache_memory_gb * GB)
    return int(available_memory() * MEMORY_SHARE / max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))


def available_memory() -> int:
    """MemAvailable of /proc/meminfo (what the kernel can give without swapping); the free pages elsewhere."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "medft" / "preprocessed"


class CaseStore:
    """The datasets of a run's cached cases, all drawing on one memory budget."""

    def __init__(self, budget: int, cache_dir: Path, fingerprint: dict):
        self.budget, self.left, self.cache_dir = budget, budget, Path(cache_dir)
        self.fingerprint = fingerprint
        self.in_memory = [0, 0]  # cases, bytes
        self.on_disk = [0, 0]

    def dataset(self, cases: list[dict], transform: Compose, sizes: list[int], role: str):
        """``cases`` preprocessed by ``transform``: those that fit what is left of the budget in memory, the rest on disk."""
        fits = cases_in_memory(sizes, self.left)
        self.left -= sum(sizes[:fits])
        self.in_memory = [self.in_memory[0] + fits, self.in_memory[1] + sum(sizes[:fits])]
        self.on_disk = [self.on_disk[0] + len(cases) - fits, self.on_disk[1] + sum(sizes[fits:])]
        caught = _Caught(transform)
        if fits:
            log.info("caching %d %s case(s) in memory (%s)", fits, role, size(sum(sizes[:fits])))
        parts = [CacheDataset(cases[:fits], Compose([caught]), num_workers=None, progress=on_terminal())] if fits else []
        failures = [caught.errors[c["case_id"]] for c in cases[:fits] if c.get("case_id") in caught.errors]
        if fits < len(cases):
            _allow_cached_types()
            fingerprint = {**self.fingerprint, "role": role}
            keys = {case["case_id"]: case_key(case, fingerprint) for case in cases[fits:]}  # once, not at every read
            disk = PersistentDataset(cases[fits:], transform, cache_dir=self.cache_dir, track_meta=True,
                                     hash_func=lambda case: keys[case["case_id"]])
            failures += _fill(disk, cases[fits:], f"caching {role} cases on disk")
            parts.append(disk)
        _raise_load_errors(failures)
        if len(parts) == 1:
            return parts[0]
        return ConcatDataset(parts) if parts else Dataset([])  # no cases: a process of torchrun with no validation case

    def describe(self) -> str:
        """What went where, for the log."""
        memory = f"{self.in_memory[0]} case(s) in memory ({size(self.in_memory[1])} of a {size(self.budget)} budget)"
        if not self.on_disk[0]:
            return f"cached: {memory}"
        return (f"cached: {memory}; {self.on_disk[0]} case(s) ({size(self.on_disk[1])}) on disk in {self.cache_dir} "
                "(data.cache_memory sets the budget)")


def size(n_bytes: int) -> str:
    """``n_bytes`` for people: MB below a GB, else GB."""
    return f"{n_bytes / 1024**2:.1f} MB" if n_bytes < GB else f"{n_bytes / GB:.1f} GB"


def cases_in_memory(sizes: list[int], budget: int) -> int:
    """How many of the cases, in order, fit ``budget`` bytes."""
    used = fits = 0
    while fits < len(sizes) and used + sizes[fits] <= budget:
        used += sizes[fits]
        fits += 1
    return fits


def case_key(case: dict, fingerprint: dict) -> bytes:
    """The disk cache's name of a case: a hash of its record, its files' sizes and times, and ``fingerprint``."""
    files = [Path(p) for p in [*case.get("image", []), case.get("label")] if p]
    stamps = []
    for path in files:
        for member in sorted(path.rglob("*")) if path.is_dir() else [path]:
            stat = member.stat() if member.exists() else None
            stamps.append([str(member), stat.st_size, stat.st_mtime_ns] if stat else [str(member)])
    text = json.dumps({"case": case, "files": stamps, "fingerprint": fingerprint}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def fingerprint(preprocessing: dict, label_map: dict, class_names: list[str], in_channels: int,
                segments: dict[int, tuple[str, ...]] | None = None) -> dict:
    """What a cached case depends on besides its files (the checks run again when the classes or channels change;
    ``segments``: the names that map DICOM SEG and RTSTRUCT segments to classes)."""
    return {"medft": __version__, "preprocessing": preprocessing, "label_map": {str(k): v for k, v in label_map.items()},
            "classes": list(class_names), "in_channels": in_channels,
            "segments": {str(k): list(v) for k, v in (segments or {}).items()}}


def on_terminal() -> bool:
    """Whether progress bars are shown: on a terminal, not in a log file (MONAI's CacheDataset draws its bar
    without asking; medft's tqdm bars ask with ``disable=None``)."""
    return sys.stderr.isatty()


def _allow_cached_types() -> None:
    """Let ``torch.load(weights_only=True)`` read the disk cache's MetaTensors back: without these, PersistentDataset
    takes each entry for a corrupt file and preprocesses the case again at every read."""
    from monai.utils.enums import MetaKeys, SpaceKeys, TraceKeys

    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    torch.serialization.add_safe_globals([MetaTensor, MetaKeys, SpaceKeys, TraceKeys, np.ndarray, np.dtype,
                                          np._core.multiarray._reconstruct, *dtypes])


def _fill(dataset: PersistentDataset, cases: list[dict], description: str) -> list[Exception]:
    """Preprocess every case into the disk cache (those already there are read back); the errors, in case order."""
    def load(index: int) -> Exception | None:
        try:
            dataset[index]
        except Exception as exc:  # collected, so that one error names every case that fails
            return exc
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(tqdm(pool.map(load, range(len(cases))), total=len(cases), desc=description, unit="case",
                            disable=None, leave=False))
    return [error for error in results if error is not None]


class _Caught(Transform):
    """The deterministic preprocessing of one case, as CacheDataset runs it in its thread pool, with
    its error kept by case_id: an error raised in the pool ends it while the other threads are still
    loading, and the interpreter then aborts at exit (exit 134, "terminate called without an active
    exception") instead of printing the error."""

    def __init__(self, transform: Callable):
        self.transform = transform
        self.errors: dict[str, Exception] = {}

    def __call__(self, data: dict):
        try:
            return self.transform(data)
        except Exception as exc:
            self.errors[data.get("case_id")] = exc  # one key per case: safe across the pool's threads
            return None


def _raise_load_errors(failures: list[Exception]) -> None:
    """One MedftError naming each case that failed to load; an error that is no user's is raised as it is."""
    if not failures:
        return
    user_errors = [find_user_error(error) for error in failures]
    if any(error is None for error in user_errors):
        raise next(error for error, user in zip(failures, user_errors, strict=True) if user is None)
    shown, more = user_errors[:MAX_SHOWN], len(user_errors) - MAX_SHOWN
    end = [f"... and {more} more case(s); medft check-data lists them all"] if more > 0 else []
    raise MedftError("\n".join([str(error) for error in shown] + end),
                     public="\n".join([error.public for error in shown] + end))
