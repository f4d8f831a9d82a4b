"""The benchmark's reading of wrk (logic only: tests never assert timings)."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.serving_bench import parse_wrk

WRK = """Running 5s test @ http://127.0.0.1:8080/predict
  2 threads and 64 connections
  Latency Distribution
     50%    5.95ms
     75%    9.00ms
     90%   40.00ms
     99%  579.43ms
  20000 requests in 5.00s, 3.00MB read
{extra}Requests/sec:   4000.00
Transfer/sec:    600.00KB
"""


@pytest.mark.parametrize(
    ("extra", "rps", "errors"),
    [
        ("", 4000.0, 0),
        ("  Non-2xx or 3xx responses: 19000\n", 200.0, 19000),
        ("  Socket errors: connect 0, read 3, write 0, timeout 2\n", 4000.0, 5),
    ],
    ids=["all-ok", "load-shed-503s-do-not-count", "socket-errors"],
)
def test_parse_wrk_counts_only_successful_requests(extra: str, rps: float, errors: int) -> None:
    parsed_rps, p50, p99, parsed_errors = parse_wrk(WRK.format(extra=extra))
    assert parsed_rps == pytest.approx(rps)
    assert p50 == pytest.approx(0.00595) and p99 == pytest.approx(0.57943)
    assert parsed_errors == errors


def test_the_rollout_section_replaces_itself_and_keeps_the_rest(tmp_path: Path) -> None:
    from benchmarks.rollout_bench import write_section

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Serving\n\nnumbers\n")
    write_section(path, "## Rollouts\n\nfirst\n")
    write_section(path, "## Rollouts\n\nsecond\n")
    assert path.read_text() == "# Benchmarks\n\n## Serving\n\nnumbers\n\n## Rollouts\n\nsecond\n"
