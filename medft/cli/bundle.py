"""``medft bundle inspect``: load a bundle, adapt it and push a dummy batch through it."""
from __future__ import annotations

import argparse
import json

from medft.cli.common import add_command, count
from medft.errors import MedftError


def add_to(commands) -> None:
    bundle = add_command(commands, "bundle", "work with MONAI bundles", "Work with MONAI bundles: 'medft bundle COMMAND --help'.",
                         "medft bundle inspect bundles/hippocampus_demo --out-channels 3")
    bundle.set_defaults(run=lambda args: bundle.print_help() or 2)
    bundle_commands = bundle.add_subparsers(title="bundle commands", metavar="COMMAND")
    inspect = add_command(
        bundle_commands,
        "inspect",
        "load a bundle, adapt it and push a dummy batch through it",
        "Loads a bundle (a folder in Model Zoo layout, or a Model Zoo name), adapts it to N output\n"
        "classes (and C input channels), runs a dummy forward and backward pass, and reports which\n"
        "pretrained tensors loaded. Exit 0 when it would train, 1 otherwise.",
        "medft bundle inspect bundles/hippocampus_demo --out-channels 3",
    )
    inspect.add_argument("bundle", help="bundle folder or Model Zoo name")
    inspect.add_argument("--out-channels", type=count, default=None, help="output classes of the adapted network")
    inspect.add_argument("--in-channels", type=count, default=None, help="input channels of the adapted network")
    inspect.add_argument("--input-size", type=count, default=None,
                         help="edge of the dummy input in voxels (default: the bundle's own input shape or sliding "
                              "window, up to 128^3 voxels, else 32, then 64)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(run=run_inspect)


def run_inspect(args: argparse.Namespace) -> int:
    from medft.bundle.inspect import format_inspection, inspect_bundle

    try:
        result = inspect_bundle(args.bundle, out_channels=args.out_channels, in_channels=args.in_channels,
                                input_size=args.input_size)
    except MedftError as error:
        if not args.json:
            raise
        # a bundle that cannot be read or built: still the JSON a script waits for, and the message on stderr
        print(json.dumps({"bundle": args.bundle, "forward_ok": False, "would_train": False, "errors": [str(error)]},
                         indent=1))
        raise
    print(json.dumps(result, indent=1) if args.json else format_inspection(result))
    return 0 if result.get("would_train") else 1
