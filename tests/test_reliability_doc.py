"""docs/reliability.md: every promise names the test that keeps it, and that test exists."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def _promise_rows() -> list[tuple[str, str]]:
    """(promise, test column) of every row of the promise tables."""
    rows, in_table = [], False
    for line in DOC.read_text().splitlines():
        if line.startswith("| promise |"):
            in_table = True
            continue
        if not line.startswith("|"):
            in_table = False
            continue
        if in_table and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            rows.append((cells[0], cells[1]))
    return rows


def _defined_tests() -> set[tuple[str, str]]:
    return {
        (path.name, name)
        for path in (ROOT / "tests").glob("test_*.py")
        for name in re.findall(r"^(?:async )?def (test_\w+)\(", path.read_text(), re.MULTILINE)
    }


def test_every_promise_names_a_test_that_exists() -> None:
    rows = _promise_rows()
    assert len(rows) > 80, "the promise tables were not found"
    defined = _defined_tests()
    problems = []
    for promise, column in rows:
        if column.startswith("not a test"):  # a benchmark's figure: the bench must exist
            # `benchmarks/x.py` or `python -m benchmarks.x`
            benches = re.findall(r"benchmarks[/.](\w+?)(?:\.py)?\b", column)
            if not benches or not all((ROOT / "benchmarks" / f"{bench}.py").exists() for bench in benches):
                problems.append(f"{promise[:60]}: names no existing benchmark")
            continue
        named, current = [], None
        # `tests/test_x.py::test_a`, then `::test_b` of the same file.
        for file, name in re.findall(r"(tests/test_\w+\.py)?::(test_\w+)", column):
            current = pathlib.Path(file).name if file else current
            named.append((current, name))
        files = re.findall(r"tests/(test_\w+\.py)(?!::)", column)
        if not named and not files:
            problems.append(f"{promise[:60]}: names no test")
        problems += [f"{promise[:60]}: {f}::{n} does not exist" for f, n in named if (f, n) not in defined]
        problems += [
            f"{promise[:60]}: {f} does not exist" for f in files if not (ROOT / "tests" / f).exists()
        ]
    assert problems == []
