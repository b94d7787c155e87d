"""A run's adapter: what fine-tuning added to the parent bundle, exported alone (``export_adapter``) and put back
on the parent for inference (``load_adapter``). The folder's format is ``medft.formats.adapter``'s.

What is stored is what differs from the parent network as ``prepare_network`` builds it: the LoRA adapters,
the tensors that network does not take from the parent (the new head, initialised at random), and every
other tensor training changed (a BitFit run's biases, batch-norm statistics that moved). The adapted layers'
own weights are the parent's (LoRA adds its update beside them). Everything else is read from the parent
bundle, whose pretrained weights are checked against the digest the export recorded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from medft.bundle.reader import CLASS_COUNT_KEYS, Bundle, load_bundle
from medft.config import LoraConfig, RunConfig
from medft.errors import MedftError
from medft.formats import adapter as adapter_folder
from medft.formats import run as run_folder
from medft.formats.adapter import AdapterInfo, LoraSettings, ParentInfo, StoredInfo, tensor_bytes, weights_digest
from medft.formats.checkpoint import find_checkpoint, read_checkpoint
from medft.train.lora import BASE, add_lora, is_adapter, merged_state_dict, restore_adapted
from medft.train.network import prepare_network

WHOLE_NETWORK = 0.5  # an adapter that holds this share of the parent's bytes or more is (nearly) the whole network


@dataclass
class ExportedAdapter:
    folder: Path
    info: AdapterInfo

    def describe(self, run_dir: Path) -> str:
        """The line ``medft export --adapter`` prints: what is stored, its size against the parent's."""
        stored, parent = self.info.stored, self.info.parent
        share = stored.bytes / parent.bytes if parent.bytes else 0.0
        text = (f"exported the adapter of {run_dir}: {stored.parameters:,} parameters in {stored.tensors} tensors, "
                f"{human_bytes(stored.bytes)} ({share:.1%} of the {human_bytes(parent.bytes)} parent weights) -> "
                f"{self.folder}; it runs on the parent bundle {parent.bundle}")
        if share >= WHOLE_NETWORK:
            text += (f"\nnote: finetune.method {self.info.method} changed (nearly) every tensor, so the adapter is the "
                     "whole network: the bundle export (`medft export RUN --out DIR`, without --adapter) is the better "
                     "choice, as it needs no parent")
        return text


def human_bytes(count: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def export_adapter(run_dir: str | Path, out_dir: str | Path) -> ExportedAdapter:
    """Write the adapter of ``run_dir``'s best checkpoint (else its last) into ``out_dir``, a new or empty folder."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config = run_folder.read_config(run_dir)
    checkpoint_path = find_checkpoint(run_dir)
    if checkpoint_path is None:
        raise MedftError(f"{run_dir}: no checkpoints/best.pt or last.pt. Fix: export a run folder that `medft train` wrote")
    if config.model.bundle is None:
        raise MedftError(f"{run_dir}: trained from model.network_def, without a parent bundle, so it has no adapter to "
                         "export: every weight is its own. Fix: export it as a bundle (`medft export RUN --out DIR`, "
                         "without --adapter)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise MedftError(f"{out_dir} exists and is not an empty folder. Fix: give a new folder to --out")
    checkpoint = read_checkpoint(checkpoint_path)
    bundle = load_bundle(config.model.bundle, version=config.model.bundle_version)
    pretrained = bundle.pretrained_state_dict()

    prepared = prepare_network(config.model, len(checkpoint.class_names))
    network = prepared.network
    parent = {name: tensor.clone() for name, tensor in network.state_dict().items()}  # as prepare_network builds it
    own = set(prepared.head) | set(prepared.report.new if prepared.report else ())  # not the parent's: always stored
    lora = None
    if checkpoint.adapter is not None:
        settings = config.finetune.lora or LoraConfig()
        targets = add_lora(network, prepared.head, settings)
        restore_adapted(network, checkpoint.model, checkpoint.adapter, f"{checkpoint_path} (the bundle {config.model.bundle})")
        lora = LoraSettings(rank=settings.rank, alpha=settings.alpha, dropout=settings.dropout,
                            target_modules=settings.target_modules, layers=list(targets.layers))
    else:
        network.load_state_dict(checkpoint.model)
    tensors = {}
    for name, tensor in network.state_dict().items():
        if BASE in name:  # an adapted layer's own tensors: the parent's (restore_adapted checked the merge)
            continue
        if is_adapter(name) or name in own or not torch.equal(tensor, parent[name]):
            tensors[name] = tensor
    info = AdapterInfo(
        method=config.finetune.method, lora=lora, class_names=list(checkpoint.class_names),
        parent=ParentInfo(bundle=str(config.model.bundle), bundle_version=config.model.bundle_version or bundle.version,
                          name=bundle.name, weights_sha256=weights_digest(pretrained), tensors=len(pretrained),
                          bytes=tensor_bytes(pretrained)),
        stored=StoredInfo(tensors=len(tensors), parameters=sum(t.numel() for t in tensors.values()),
                          bytes=tensor_bytes(tensors)),
        checkpoint=checkpoint_path.name,
    )
    config_text = (run_dir / run_folder.CONFIG).read_text()
    adapter_folder.write_adapter(out_dir, info, tensors, config_text, checkpoint.preprocessing)
    return ExportedAdapter(out_dir, info)


@dataclass
class LoadedAdapter:
    network: torch.nn.Module  # plain: the adapters merged
    config: RunConfig  # the run's, model.bundle the parent used
    info: AdapterInfo
    parent: Bundle


def load_adapter(folder: str | Path, parent: str | Path | None = None) -> LoadedAdapter:
    """The network of an adapter folder on its parent bundle: the one adapter.json names, or ``parent`` (a bundle
    folder or Model Zoo name) when given. The adapters are merged into a plain network (what the run computes).
    A MedftError when the parent is missing or holds other weights than the adapter was trained on, or the stored
    tensors do not fit the network."""
    folder = Path(folder)
    info, tensors = adapter_folder.read_adapter(folder)
    config = run_folder.read_config(folder)
    source = str(parent) if parent is not None else info.parent.bundle
    fix = (f"Fix: give the parent bundle's folder with --parent PARENT_DIR (the bundle {info.parent.name}, version "
           f"{info.parent.bundle_version or 'unknown'}, that the run was fine-tuned from)")
    try:
        bundle = load_bundle(source, version=None if parent is not None else info.parent.bundle_version)
        pretrained = bundle.pretrained_state_dict()
    except MedftError as exc:
        raise MedftError(f"{folder}: the adapter's parent bundle {source} cannot be loaded ({exc}). {fix}") from None
    if weights_digest(pretrained) != info.parent.weights_sha256:
        raise MedftError(
            f"{folder}: its parent bundle {bundle.root} holds other pretrained weights than the adapter was trained on "
            f"(sha256 {weights_digest(pretrained)[:12]}, adapter.json records {info.parent.weights_sha256[:12]} over "
            f"{info.parent.tensors} tensors of {info.parent.name}). {fix}")
    config = config.model_copy(update={"model": config.model.model_copy(update={"bundle": str(bundle.root)})})
    prepared = prepare_network(config.model, len(info.class_names))
    network = prepared.network
    if info.lora is not None:
        lora = info.lora
        settings = LoraConfig(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
        targets = add_lora(network, prepared.head, settings)
        if list(targets.layers) != lora.layers:
            raise MedftError(f"{folder / adapter_folder.INFO}: adapters on {len(lora.layers)} layers, and the parent's "
                             f"network gives {len(targets.layers)} to adapt: the network differs from the one trained. {fix}")
    state = network.state_dict()
    unknown = sorted(set(tensors) - set(state))
    own = {name for name in state if is_adapter(name)} | set(prepared.head) | set(prepared.report.new if prepared.report else ())
    missing = sorted(own - set(tensors))
    if unknown or missing:
        what = f"{len(unknown)} stored tensors the network lacks (e.g. {unknown[0]})" if unknown else \
            f"{len(missing)} tensors the parent cannot give are not stored (e.g. {missing[0]})"
        raise MedftError(f"{folder / adapter_folder.WEIGHTS}: {what}: it is not an adapter of this network. {fix}")
    try:
        network.load_state_dict({**state, **tensors})
    except RuntimeError as exc:
        raise MedftError(f"{folder / adapter_folder.WEIGHTS}: the stored tensors do not fit the network "
                         f"({str(exc).splitlines()[-1].strip()}). {fix}") from None
    merged = merged_state_dict(network)
    channels = {k: prepared.network_def[k] for k in (*CLASS_COUNT_KEYS, "in_channels") if k in prepared.network_def}
    plain = bundle.build_network({**config.model.network_overrides, **channels})
    plain.load_state_dict(merged)
    return LoadedAdapter(plain, config, info, bundle)
