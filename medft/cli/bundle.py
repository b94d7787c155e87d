"""load a bundle, adapt it and push a dummy batch through it

Loads a bundle (a folder in Model Zoo layout, or a Model Zoo name), adapts it to N output
classes (and C input channels), runs a dummy forward and backward pass, and reports which
pretrained tensors loaded. Exit 0 when it would train, 1 otherwise.

example:
  medft bundle inspect bundles/hippocampus_demo --out-channels 3
"""
from __future__ import annotations

import json

from medft.cli.common import add_command, count
from medft.errors import MedftError

GROUP = """work with MONAI bundles

Work with MONAI bundles: 'medft bundle COMMAND --help'.

example:
  medft bundle inspect bundles/hippocampus_demo --out-channels 3
"""


def add_to(commands) -> None:
    group = add_command(commands, "bundle", GROUP, lambda: group.print_help() or 2)
    inspect = add_command(group.add_subparsers(title="bundle commands", metavar="COMMAND"), "inspect", __doc__, run_inspect)
    inspect.add_argument("bundle", help="bundle folder or Model Zoo name")
    inspect.add_argument("--out-channels", type=count, default=None, help="output classes of the adapted network")
    inspect.add_argument("--in-channels", type=count, default=None, help="input channels of the adapted network")
    inspect.add_argument("--input-size", type=count, default=None,
                         help="edge of the dummy input in voxels (default: the bundle's own input shape or sliding "
                              "window, up to 128^3 voxels, else 32, then 64)")
    inspect.add_argument("--json", dest="as_json", action="store_true", help="print the report as JSON")


def run_inspect(bundle: str, out_channels: int | None = None, in_channels: int | None = None,
                input_size: int | None = None, as_json: bool = False) -> int:
    """The inspection report; 0 when the bundle would train."""
    from medft.bundle.inspect import format_inspection, inspect_bundle

    try:
        result = inspect_bundle(bundle, out_channels=out_channels, in_channels=in_channels, input_size=input_size)
    except MedftError as error:
        if not as_json:
            raise
        # a bundle that cannot be read or built: still the JSON a script waits for, and the message on stderr
        print(json.dumps({"bundle": bundle, "forward_ok": False, "would_train": False, "errors": [str(error)]}, indent=1))
        raise
    print(json.dumps(result, indent=1) if as_json else format_inspection(result))
    return 0 if result.get("would_train") else 1
