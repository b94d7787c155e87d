"""An adapter folder, as ``medft export RUN --out DIR --adapter`` writes it and evaluation and prediction read it:
what a fine-tuned run adds to its parent bundle, stored apart from the bundle that sites share.

- ``adapter.json``: ``AdapterInfo``: the fine-tuning method, the LoRA settings and adapted layers, the class
  names, the parent bundle (as the run's config names it, its version, and a sha256 digest of its pretrained
  weights, ``weights_digest``), what is stored, and the run's checkpoint it came from;
- ``adapter.pt``: a dict of tensors (``torch.save``; read with ``weights_only``): the LoRA adapters under their
  peft names and every other tensor of the fine-tuned network that differs from the parent's (the new head;
  for BitFit, the biases); the adapted layers' own weights are the parent's;
- ``config.yaml`` and ``preprocessing.json``: the run's, as in a run folder (``medft.formats.run``): what the
  network is built from and fed.

``write_adapter`` writes the whole folder atomically; ``read_adapter`` reads ``adapter.json`` and ``adapter.pt``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from medft import __version__
from medft.atomic_files import new_folder
from medft.errors import MedftError
from medft.formats import run as run_folder

INFO = "adapter.json"
WEIGHTS = "adapter.pt"
FORMAT_VERSION = 1
EXPORT_AGAIN = "export it again (`medft export RUN --out NEW_DIR --adapter`)"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Record):
    rank: int
    alpha: float | None = None
    dropout: float = 0.0
    target_modules: list[str] | None = None  # the run's finetune.lora.target_modules
    layers: list[str]  # the adapted layers (module names)


class ParentInfo(_Record):
    bundle: str  # as the run's config names it (model.bundle): a folder or a Model Zoo name
    bundle_version: str | None = None
    name: str  # the bundle's own name (its metadata), for reports
    weights_sha256: str  # weights_digest of its pretrained_state_dict()
    tensors: int
    bytes: int


class StoredInfo(_Record):
    tensors: int
    parameters: int  # elements of the stored tensors
    bytes: int


class AdapterInfo(_Record):
    method: str  # the run's finetune.method
    lora: LoraSettings | None = None  # with method lora
    class_names: list[str]
    parent: ParentInfo
    stored: StoredInfo
    checkpoint: str  # the run's checkpoint: best.pt or last.pt
    medft_version: str = __version__
    format_version: int = FORMAT_VERSION


def is_adapter_folder(path: Path) -> bool:
    return (Path(path) / INFO).is_file()


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def write_adapter(out_dir: Path, info: AdapterInfo, tensors: dict[str, torch.Tensor], config_text: str,
                  preprocessing: dict) -> Path:
    """The adapter folder ``out_dir`` (new or empty: the caller checks), written under a partial name and renamed
    once complete (``new_folder``)."""
    out_dir = Path(out_dir)
    with new_folder(out_dir) as folder:
        torch.save({name: t.detach().cpu().clone() for name, t in tensors.items()}, folder / WEIGHTS)
        (folder / INFO).write_text(info.model_dump_json(indent=1) + "\n")
        (folder / run_folder.CONFIG).write_text(config_text)
        (folder / run_folder.PREPROCESSING).write_text(json.dumps(preprocessing, indent=1) + "\n")
    return out_dir


def read_adapter(folder: Path) -> tuple[AdapterInfo, dict[str, torch.Tensor]]:
    """``adapter.json`` and the tensors of ``adapter.pt``; a MedftError naming the file and a way out when one is
    missing, damaged, not medft's or from a newer medft."""
    folder = Path(folder)
    path = folder / INFO
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MedftError(f"{path}: cannot be read ({exc}). Fix: {EXPORT_AGAIN}") from None
    version = data.get("format_version", FORMAT_VERSION) if isinstance(data, dict) else FORMAT_VERSION
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise MedftError(f"{path}: adapter format {version}, written by medft {data.get('medft_version')}; this medft "
                         f"({__version__}) reads format {FORMAT_VERSION} and older. Fix: upgrade medft")
    try:
        info = AdapterInfo.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg']}" for e in exc.errors()[:3])
        raise MedftError(f"{path}: not an adapter.json that medft export writes ({problems}). Fix: {EXPORT_AGAIN}") from None
    weights = folder / WEIGHTS
    try:
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MedftError(f"{weights}: the adapter's tensors cannot be read ({type(exc).__name__}: {exc}). "
                         f"Fix: {EXPORT_AGAIN}") from None
    if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise MedftError(f"{weights}: not a dict of tensors. Fix: {EXPORT_AGAIN}")
    if len(tensors) != info.stored.tensors:
        raise MedftError(f"{weights}: {len(tensors)} tensors, and {INFO} says {info.stored.tensors}: the two files "
                         f"are of different exports. Fix: {EXPORT_AGAIN}")
    return info, tensors
