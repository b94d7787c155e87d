"""MONAI Model Zoo bundles: read one, build its network, load its weights, adapt its head, export."""
