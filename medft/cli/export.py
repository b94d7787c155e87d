"""export a fine-tuned run as a MONAI bundle, or its adapter alone

Writes the run's best checkpoint as a Model Zoo bundle (metadata with the new labels and
validation metrics, inference config, weights) that plain MONAI loads.

With --adapter it writes instead what the run adds to its parent bundle: a small folder
(adapter.json, adapter.pt, the run's config.yaml and preprocessing.json) holding the LoRA
adapters, the new head and any other tensor that differs from the parent's (a BitFit run's
biases), with the parent named and the digest of its weights. Its size is printed.
`medft evaluate` and `medft predict` run it on the parent bundle; --parent gives the parent's
folder when it is not where adapter.json says.

example:
  medft export runs/demo/train --out runs/demo/bundle
  medft export runs/demo/lora --out runs/demo/adapter --adapter
  medft predict runs/demo/adapter scan.nii.gz --parent bundles/spleen_ct_segmentation --out predictions
"""
from __future__ import annotations

from pathlib import Path

from medft.cli.common import add_command


def add_to(commands) -> None:
    command = add_command(commands, "export", __doc__, run)
    command.add_argument("run_dir", type=Path, help="run folder written by medft train")
    command.add_argument("--out", type=Path, required=True, help="new bundle folder (or adapter folder, with --adapter)")
    command.add_argument("--adapter", action="store_true",
                         help="write only what fine-tuning changed (adapters, head, changed tensors), to run on the "
                              "parent bundle, instead of a whole bundle")


def run(run_dir: Path, out: Path, adapter: bool = False) -> int:
    if adapter:
        from medft.train.adapter_export import export_adapter

        print(export_adapter(run_dir, out).describe(run_dir))
        return 0
    from medft.bundle.export import export_run

    print(f"exported {run_dir} as a MONAI bundle: {export_run(run_dir, out)}")
    return 0
