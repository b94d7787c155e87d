"""medft: fine-tune pretrained MONAI bundle networks on a hospital's own medical images."""

__version__ = "0.1.0"
