"""Read a MONAI Model Zoo bundle: its metadata, the config holding ``network_def``, and its weights.

A bundle folder holds ``configs/metadata.json``, ``configs/inference.json`` (or .yaml, or
train.json) with ``network_def``, and ``models/model.pt`` (or a TorchScript ``models/model.ts``).
The network is built with MONAI's ``ConfigParser`` from the whole config, so ``@`` references and
``$`` expressions resolve, and the bundle's own ``scripts`` package is importable meanwhile. ``%``
macros are replaced when the config is read, their file paths taken from the bundle folder (MONAI
takes them from the working folder, and bundles are run from their own).
"""
from __future__ import annotations

import copy
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medft.components import bundle_imports
from medft.errors import MedftError, one_line

# Where network_def is looked for, in this order (the first config that has one wins).
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml", "train.json", "train.yaml", "train.yml")
WEIGHT_NAMES = ("model.pt", "model.ts")
# The network_def argument that sets the number of output classes: most MONAI networks call it
# out_channels, DiNTS (pancreas_ct_dints_segmentation) num_classes.
CLASS_COUNT_KEYS = ("out_channels", "num_classes")
_NOT_ACCEPTED = re.compile(r"unexpected keyword argument '(\w+)'")
_BUNDLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_WRAPPER_PREFIX = "module."  # on every name of weights saved from (Distributed)DataParallel


def build_network(
    network_def: dict,
    overrides: dict | None = None,
    bundle_root: Path | None = None,
    source: str = "",
    config: dict | None = None,
) -> nn.Module:
    """Instantiate ``network_def`` (``{"_target_": "UNet", ...}``, or a ``$`` expression such as VISTA3D's
    ``"$monai.networks.nets.vista3d132(in_channels=@input_channels)"``) as a torch module.

    ``overrides`` set keys of network_def; a value of ``None`` drops the key (for arguments that
    newer MONAI releases removed); an expression takes none. ``config`` is the whole bundle config
    that network_def comes from, for its ``@`` references; ``bundle_root`` makes the bundle's
    ``scripts`` package importable; ``source`` (the config file) names where the network_def came from in errors.
    """
    _require_component(network_def, source)
    network_class = network_class_name(network_def)
    if isinstance(network_def, str):
        if overrides:
            raise MedftError(
                f"{source or 'network_def'}: network_def is a $ expression ({network_def[:80]}), so medft cannot set its "
                f"arguments {sorted(overrides)}. Fix: write network_def as a component, "
                f"{{\"_target_\": \"{network_class}\", ...}}, with the arguments as keys"
            )
    else:
        network_def = copy.deepcopy(dict(network_def))
        for key, value in (overrides or {}).items():
            if value is None:
                network_def.pop(key, None)
            else:
                network_def[key] = value
    full = copy.deepcopy(config) if config is not None else {}
    full["network_def"] = network_def
    if bundle_root is not None:
        full["bundle_root"] = str(bundle_root)
    with bundle_imports(bundle_root):
        try:
            network = _parsed(full, "network_def")
        except Exception as error:
            given = set(network_def) if isinstance(network_def, Mapping) else set()
            raise _build_error(error, network_class, source, given) from None
    if not isinstance(network, nn.Module):
        raise MedftError(
            f"{source or 'network_def'}: network_def built a {type(network).__name__}, not a torch network. "
            f"Fix: make network_def's _target_ a torch.nn.Module class"
        )
    return network


def _require_component(network_def: Any, source: str) -> None:
    if isinstance(network_def, str) and network_def.startswith("$"):
        return
    if not isinstance(network_def, Mapping) or "_target_" not in network_def:
        raise MedftError(
            f"{source or 'network_def'}: network_def is not a component with a _target_ "
            f"(got {network_def!r:.80}). Fix: give network_def as {{\"_target_\": \"UNet\", ...}}"
        )


_EXPRESSION_CALL = re.compile(r"\$\s*([\w.]+)\s*\(")


def network_class_name(network_def: Any) -> str:
    """The class a network_def builds: its _target_'s last part, or the function an expression calls."""
    if isinstance(network_def, Mapping):
        return str(network_def.get("_target_", "?")).rsplit(".", 1)[-1]
    match = _EXPRESSION_CALL.match(str(network_def))
    return match.group(1).rsplit(".", 1)[-1] if match else "network"


def _parsed(config: dict, id: str) -> Any:
    """The parsed (instantiated, evaluated) item ``id`` of a bundle config (MONAI runs its ``$import``s first)."""
    from monai.bundle import ConfigParser

    return ConfigParser(config).get_parsed_content(id)


def _build_error(error: BaseException, network_class: str, source: str, given: set[str]) -> MedftError:
    """One line for a network that did not build; ``given``: the arguments network_def gives. An argument this
    MONAI no longer takes gets the override that drops it, when network_def gives it (not when the bundle's
    own code passes it)."""
    where = f"{source}: " if source else ""
    seen: set[int] = set()
    cause: BaseException | None = error
    deepest = error
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        match = _NOT_ACCEPTED.search(str(cause)) if isinstance(cause, TypeError) else None
        if match and match.group(1) in given:
            arg = match.group(1)
            return MedftError(
                f"{where}{network_class} does not accept the argument '{arg}' given in network_def "
                f"(this MONAI release removed or renamed it). Fix: set model.network_overrides: "
                f"{{{arg}: null}} in your medft config to drop it"
            )
        deepest = cause
        cause = cause.__cause__ or cause.__context__
    if isinstance(deepest, ImportError):
        return MedftError(
            f"{where}cannot build the network {network_class} from network_def: {one_line(deepest)}. Fix: make "
            f"_target_ a MONAI network name (e.g. UNet) or a class importable from the bundle folder "
            f"(its scripts/ package)"
        )
    import monai

    return MedftError(
        f"{where}cannot build the network {network_class} from network_def: {one_line(deepest)}. Fix: as that error "
        f"says: a package the network needs may be missing (pip install it), a file it reads may be absent, or the "
        f"network's code (MONAI {monai.__version__}'s, or the bundle's scripts/) may not take what it is given; "
        "model.network_overrides in your medft config sets or drops single arguments of network_def"
    )


@dataclass
class Bundle:
    """A bundle folder read from disk; ``config`` is the whole parsed ``config_file``."""

    root: Path
    name: str
    version: str
    metadata: dict
    config_file: Path
    config: dict

    @property
    def network_def(self) -> dict | str:
        return self.config["network_def"]

    @property
    def network_args(self) -> dict:
        """network_def's arguments by name; none for a $ expression."""
        return dict(self.network_def) if isinstance(self.network_def, Mapping) else {}

    @property
    def network_class(self) -> str:
        return network_class_name(self.network_def)

    def read_config(self, name: str) -> dict:
        """Another config file of the bundle (``train.json``), its ``%`` macros replaced."""
        path = self.root / "configs" / name
        return _resolve_macros(_read_config(path), self.root, path)

    def build_network(self, overrides: dict | None = None) -> nn.Module:
        return build_network(self.network_def, overrides, self.root, str(self.config_file), self.config)

    @property
    def weights_file(self) -> Path | None:
        """``models/model.pt``, else ``models/model.ts``, else None."""
        return next((p for p in (self.root / "models" / n for n in WEIGHT_NAMES) if p.is_file()), None)

    def pretrained_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights by tensor name; the ``module.`` prefix of weights saved from a DataParallel or
        DistributedDataParallel wrapper (on every name) is dropped."""
        path = self.weights_file
        if path is None:
            raise MedftError(
                f"{self.root / 'models'}: the bundle has no pretrained weights (models/model.pt or models/model.ts). "
                f"Fix: copy the weights in as models/model.pt (torch.save(model.state_dict(), 'model.pt'))"
            )
        try:
            if path.suffix == ".ts":
                loaded = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
            else:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise MedftError(
                f"{path}: cannot read the weights as a state dict ({one_line(error)}). "
                f"Fix: save them with torch.save(model.state_dict(), '{path.name}')"
            ) from None
        return _as_state_dict(loaded, path)

    def resolved(self, id: str, value: Any) -> Any:
        """``value``, the config item ``id`` (e.g. ``"inferer::roi_size"``), with an ``@`` reference or
        ``$`` expression resolved as MONAI would; None when it cannot be resolved."""
        if not (isinstance(value, str) and value[:1] in ("@", "$")):
            return value
        try:
            with bundle_imports(self.root):
                return _parsed({**copy.deepcopy(self.config), "bundle_root": str(self.root)}, id)
        except Exception:
            return None

    def inferer_arg(self, key: str) -> Any:
        """An argument of the bundle's ``inferer`` (``roi_size``, ``overlap``, ``mode``), its ``@`` reference or
        ``$`` expression resolved (``"roi_size": "@patch_size"``), tuples as lists; None when it gives none."""
        inferer = self.config.get("inferer")
        if not isinstance(inferer, Mapping) or key not in inferer:
            return None
        value = self.resolved(f"inferer::{key}", inferer[key])
        return list(value) if isinstance(value, tuple) else value

    def network_arg(self, key: str) -> int | None:
        """An int argument of network_def (``@`` references and ``$`` expressions resolved), else None."""
        if not isinstance(self.network_def, Mapping):
            return None  # a $ expression: its arguments are not keys
        value = self.resolved(f"network_def::{key}", self.network_def.get(key))
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def spatial_dims(self) -> int | None:
        return self.network_arg("spatial_dims")

    @property
    def in_channels(self) -> int | None:
        return self.network_arg("in_channels")

    @property
    def out_channels(self) -> int | None:
        return self.network_arg(self.class_count_key)

    @property
    def class_count_key(self) -> str:
        """The argument of network_def that sets the number of output classes (see CLASS_COUNT_KEYS)."""
        keys = self.network_def if isinstance(self.network_def, Mapping) else {}
        return next((key for key in CLASS_COUNT_KEYS if key in keys), CLASS_COUNT_KEYS[0])

    @property
    def class_names(self) -> dict[int, str] | None:
        """Output channel -> class name, from the Model Zoo metadata's ``outputs.pred.channel_def``."""
        channel_def = _dig(self.metadata, "network_data_format", "outputs", "pred", "channel_def")
        if not isinstance(channel_def, Mapping):
            return None
        names = {int(k): str(v) for k, v in channel_def.items() if str(k).isdigit()}
        return dict(sorted(names.items())) or None

    @property
    def input_spatial_shape(self) -> list | None:
        """The metadata's ``inputs.image.spatial_shape`` as written (ints, or strings like "16*n")."""
        shape = _dig(self.metadata, "network_data_format", "inputs", "image", "spatial_shape")
        return list(shape) if isinstance(shape, (list, tuple)) else None


def _dig(data: Any, *keys: str) -> Any:
    for key in keys:
        data = data.get(key) if isinstance(data, Mapping) else None
    return data


def _as_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a loaded weights file: the file itself, or its "model" or "state_dict" entry."""
    if isinstance(loaded, Mapping):
        inner = next((loaded[k] for k in ("model", "state_dict") if isinstance(loaded.get(k), Mapping)), None)
        loaded = loaded if inner is None else inner
    if isinstance(loaded, Mapping) and loaded and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        wrapped = all(k.startswith(_WRAPPER_PREFIX) for k in loaded)
        return {k.removeprefix(_WRAPPER_PREFIX) if wrapped else k: v for k, v in loaded.items()}
    if isinstance(loaded, Mapping):
        found = f"a dict with keys {', '.join(map(str, list(loaded)[:5]))}" if loaded else "an empty dict"
    else:
        found = f"a {type(loaded).__name__}"
    raise MedftError(
        f"{path}: not a state dict (found {found}). Fix: save the weights with "
        f"torch.save(model.state_dict(), '{path.name}'), or as a dict holding them under \"model\" or \"state_dict\""
    )


def load_bundle(source: str | Path, version: str | None = None, cache_dir: Path | None = None) -> Bundle:
    """A bundle from a local folder, or a MONAI Model Zoo bundle name (downloaded into ``cache_dir``).

    A bundle already in ``cache_dir`` (default: MONAI's, ``<torch hub dir>/bundle``) is used
    without the network when its version matches (or no version is asked for); ``version`` is
    not checked for a local folder.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_bundle(path)
    if path.exists():
        raise MedftError(
            f"{source}: a file, not a bundle folder. Fix: give the bundle's folder (the one holding "
            f"configs/metadata.json; unzip a downloaded bundle first)"
        )
    name = str(source)
    if not _BUNDLE_NAME.fullmatch(name):
        raise MedftError(
            f"{source}: no such bundle folder. Fix: give the path of a bundle folder (the one holding "
            f"configs/metadata.json), or a MONAI Model Zoo bundle name such as spleen_ct_segmentation"
        )
    cache = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "bundle"
    if (cache / name / "configs" / "metadata.json").is_file():
        cached = _read_bundle(cache / name)
        if version is None or cached.version == version:
            return cached
    from monai.bundle import download

    summary = logging.getLogger("monai.bundle.scripts")  # MONAI logs its arguments at INFO before it starts
    level = summary.level
    summary.setLevel(logging.WARNING)
    try:
        download(name=name, version=version, bundle_dir=str(cache), progress=False)
    except Exception as error:
        raise MedftError(
            f"{name}: not a bundle folder here, and cannot download bundle {name} from the MONAI Model Zoo "
            f"(no network?): {one_line(error)}. "
            f"Fix: download it on a machine with a network (python -c \"from monai.bundle import download; "
            f"download(name='{name}', bundle_dir='DIR')\"), copy the folder DIR/{name} here and give its path"
        ) from None
    finally:
        summary.setLevel(level)
    if not (cache / name).is_dir():
        raise MedftError(
            f"{cache}: the download of bundle {name} left no folder {name}. "
            f"Fix: download it by hand and give the folder's path"
        )
    downloaded = _read_bundle(cache / name)
    if version is not None and downloaded.version != version:  # huggingface_hub offline hands back the cached folder
        raise MedftError(
            f"{name}: version {version} was asked for, and {cache / name} holds version {downloaded.version}: "
            f"cannot download bundle {name} version {version} (no network?). Fix: download that version on a machine "
            f"with a network and give its folder's path, or ask for version {downloaded.version}"
        )
    return downloaded


def _read_bundle(root: Path) -> Bundle:
    root = root.resolve()
    meta_file = root / "configs" / "metadata.json"
    if not meta_file.is_file():
        raise MedftError(
            f"{root}: configs/metadata.json is missing, so this is not a MONAI bundle folder. Fix: give the "
            f"bundle's top folder (the one holding configs/ and models/), or add configs/metadata.json "
            f"with its name and version"
        )
    metadata = _read_config(meta_file)
    for config_name in CONFIG_NAMES:
        config_file = root / "configs" / config_name
        if config_file.is_file():
            config = _read_config(config_file)
            if "network_def" in config:
                config = _resolve_macros(config, root, config_file)
                _require_component(config["network_def"], str(config_file))
                return Bundle(
                    root=root,
                    name=str(metadata.get("name") or root.name),
                    version=str(metadata.get("version", "")),
                    metadata=metadata,
                    config_file=config_file,
                    config=config,
                )
    raise MedftError(
        f"{root / 'configs'}: no config with a network_def (looked for {', '.join(CONFIG_NAMES)}). "
        f"Fix: add network_def (the network as {{\"_target_\": \"UNet\", ...}}) to configs/inference.json"
    )


def _read_config(path: Path) -> dict:
    from monai.bundle import ConfigParser

    try:
        content = ConfigParser.load_config_file(path)
    except Exception as error:
        raise MedftError(f"{path}: cannot read it ({one_line(error)}). Fix: correct its JSON/YAML syntax") from None
    if not isinstance(content, dict):
        raise MedftError(f"{path}: holds a {type(content).__name__}, not a mapping. Fix: make it a JSON/YAML object")
    return content


def _resolve_macros(config: dict, root: Path, config_file: Path) -> dict:
    """``config`` with its ``%`` macros replaced (``%configs/train.json#network_def``: a file path
    relative to the bundle folder) and its relative ids (``@##levels``) made absolute."""
    from monai.bundle import ConfigParser

    def anchored(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: anchored(value) for key, value in node.items()}
        if isinstance(node, list):
            return [anchored(value) for value in node]
        if isinstance(node, str) and node.startswith("%"):
            path, ids = ConfigParser.split_path_id(node[1:])
            if path and not Path(path).is_absolute():
                return f"%{root / path}::{ids}" if ids else f"%{root / path}"
        return node

    parser = ConfigParser(anchored(config))
    try:
        parser.resolve_macro_and_relative_ids()
    except Exception as error:
        if "%" not in json.dumps(config.get("network_def"), default=str):
            return config  # a broken macro elsewhere (another workflow's entry) does not stop the network
        raise MedftError(
            f"{config_file}: cannot replace its % macros ({one_line(error)}). Fix: make each macro name a file "
            f"of the bundle by its path from the bundle folder and an id in it, e.g. %configs/train.json#network_def"
        ) from None
    return parser.get()
