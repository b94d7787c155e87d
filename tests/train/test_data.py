"""The training pipeline is built from the config's data section."""
import torch
from monai.transforms import Rand3DElasticd, RandFlipd

from medft.config import load_config
from medft.data.manifest import load_manifest
from medft.train.data import build_loaders
from tests.train.helpers import make_config


def test_the_train_transform_applies_the_configured_augmentation(tmp_path):
    def steps(**changes):
        config = load_config(make_config(tmp_path, **changes))
        transform = build_loaders(config, load_manifest(config.data.manifest), torch.Generator().manual_seed(0))[2]
        flips = [t.flipper.spatial_axis for t in transform.transforms if isinstance(t, RandFlipd)]
        return flips, [t.prob for t in transform.transforms if isinstance(t, Rand3DElasticd)]

    assert steps() == ([0], [])
    assert steps(**{"data.flip_axes": [0, 2], "data.elastic": 0.3}) == ([0, 2], [0.3])
    assert steps(**{"data.augmentation": "none", "data.elastic": 0.3}) == ([], [])
