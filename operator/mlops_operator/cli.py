"""The one command, ``mlops-operator``, and its subcommands.

Each subcommand lives in the module that owns its behaviour and exposes two functions:
``add_arguments(parser)`` and ``run(args) -> int``. They are imported lazily, so that the
operator image does not need the trainer's or the server's dependencies and the other way
round.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mlops_operator import __version__

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("mlops_operator.operator_command", "run the operator (kopf) against the current cluster"),
    "crds": (
        "mlops_operator.crds_command",
        "write the CustomResourceDefinitions generated from the API models",
    ),
    "train": (
        "mlops_operator.trainer.train_command",
        "run one training (the entry point of a TrainingJob's pod)",
    ),
    "serve": (
        "mlops_operator.serving.serve_command",
        "serve a registered model over HTTP (/predict and Open Inference v2)",
    ),
    "sandbox": (
        "mlops_operator.sandbox.sandbox_command",
        "a local cluster on this machine: emulated API server + runtime",
    ),
    "demo": ("mlops_operator.demo", "the product's story, end to end, in the local sandbox"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (None: every subcommand's).

    Importing a subcommand's module is what costs: ``serve`` brings the model server's stack,
    ``sandbox`` and ``demo`` the runtime. The operator process (``run``) loads none of them.
    """
    parser = argparse.ArgumentParser(prog="mlops-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mlops-operator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if command is not None and name != command:
            continue  # its arguments matter only when it is the one run
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            # The image this runs in lacks the extra this subcommand needs: say which.
            sub_parser.set_defaults(_unavailable=f"{name}: not installed in this environment ({exc})")
            continue
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    # The subcommand is the first word that is not an option (the top level has only flags).
    command = next((word for word in words if not word.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(words)
    unavailable = getattr(args, "_unavailable", None)
    if unavailable:
        print(f"mlops-operator {unavailable}", file=sys.stderr)
        return 2
    result: int = args._run(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
