"""BENCHMARKS.md is written by several benchmarks, each owning one ``## Title`` section."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, marker: str, section: str) -> None:
    """Replace the section that starts with the heading line ``marker`` (or append it).

    The section runs to the next ``## `` heading; everything else in the file is kept.
    """
    text = path.read_text() if path.exists() else ""
    heading = marker + "\n"
    if heading in text:
        before, _, rest = text.partition(heading)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
