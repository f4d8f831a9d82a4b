"""``mlops-operator crds``: write the CRDs (and the API reference) generated from the API models.

The generators are pure (:mod:`mlops_operator.api.crdgen`, :mod:`mlops_operator.api.docgen`);
this module only reads the command line and writes files, so the imports run one way:
command -> docgen -> crdgen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlops_operator.api import crdgen, docgen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", "-o", default="crds", help="where to write the YAML files (default: crds)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the files on disk differ, write nothing"
    )
    parser.add_argument(
        "--docs",
        metavar="FILE",
        default=None,
        help="also write the Markdown API reference (docs/api-reference.md)",
    )


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    stale = []
    files = {out / name: text for name, text in crdgen.generate().items()}
    if args.docs:
        files[Path(args.docs)] = docgen.generate()
    for path, text in files.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    if stale:
        print("out of date (run `make crds`): " + ", ".join(stale))
        return 1
    return 0
