"""Tiny bundles in MONAI Model Zoo layout, written to a temp folder."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from monai.bundle import ConfigParser
from torch import nn

# Tiny network_defs (a spleen-like 3D UNet with residual units, and a plain 2D one).
UNET3D = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
          "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
UNET2D = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
          "channels": [4, 8, 16], "strides": [2, 2]}

# The preprocessing of a tiny bundle's inference config: RAS, intensities z-scored per channel.
ZSCORE = {"_target_": "Compose", "transforms": [
    {"_target_": "LoadImaged", "keys": "image", "image_only": True},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS", "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
    {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True},
]}

# A bundle-local network, as a Model Zoo bundle ships it in scripts/ (WIDTH and HEAD vary per test).
TINY_NET = '''
import torch.nn as nn


class TinyNet(nn.Module):
    def __init__(self, in_channels, out_channels, width=WIDTH):
        super().__init__()
        self.body = nn.Sequential(nn.Conv3d(in_channels, width, 3, padding=1), nn.ReLU())
        self.HEAD = nn.Conv3d(width, out_channels, 1)

    def forward(self, x):
        return self.HEAD(self.body(x))
'''


def tiny_net_source(width: int = 4, head: str = "head") -> str:
    return TINY_NET.replace("WIDTH", str(width)).replace("HEAD", head)


def tiny_net(source: str, **kwargs) -> nn.Module:
    """Build TinyNet from its source without importing it as ``scripts`` (independent of medft)."""
    namespace: dict = {}
    exec(source, namespace)
    return namespace["TinyNet"](**kwargs)


def make_bundle(
    root: Path,
    network_def: dict | None = None,
    *,
    config: dict | None = None,
    config_name: str = "inference.json",
    network: nn.Module | None = None,
    key: str | None = None,
    prefix: str = "",
    metadata: dict | None = None,
    scripts: dict[str, str] | None = None,
    seed: int = 0,
) -> Path:
    """Write a bundle: metadata, a config with network_def, random pretrained weights, docs, licence.

    ``config`` is the whole config (holding network_def) when given; the weights come from
    ``network`` or else from network_def built by MONAI's ConfigParser, saved as a state dict
    (under ``key`` when given, every name prefixed with ``prefix``). ``scripts`` maps file names
    to the source of the bundle's scripts/ package.
    """
    config = config if config is not None else {"network_def": network_def, "preprocessing": ZSCORE}
    if network is None:
        torch.manual_seed(seed)
        network = ConfigParser(json.loads(json.dumps(config))).get_parsed_content("network_def")
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "docs").mkdir()
    meta = {"name": root.name, "version": "0.1.0", "network_data_format": {"outputs": {"pred": {
        "channel_def": {"0": "background", "1": "organ"}}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps({**meta, **(metadata or {})}))
    text = yaml.safe_dump(config) if config_name.endswith((".yaml", ".yml")) else json.dumps(config, indent=1)
    (root / "configs" / config_name).write_text(text)
    state = {prefix + k: v for k, v in network.state_dict().items()}
    torch.save({key: state} if key else state, root / "models" / "model.pt")
    (root / "docs" / "README.md").write_text(f"# {root.name}\nA tiny test bundle.\n")
    (root / "LICENSE").write_text("Apache-2.0\n")
    if scripts:
        (root / "scripts").mkdir()
        (root / "scripts" / "__init__.py").write_text("")
        for name, source in scripts.items():
            (root / "scripts" / name).write_text(source)
    return root


def pretrained(root: Path) -> dict[str, torch.Tensor]:
    return torch.load(root / "models" / "model.pt", map_location="cpu", weights_only=True)
