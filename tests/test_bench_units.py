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


def test_the_serving_section_replaces_itself_and_keeps_the_rest(tmp_path: Path) -> None:
    from benchmarks.serving_bench import BEGIN, END, write_section

    path = tmp_path / "BENCHMARKS.md"
    # A file from before the markers: the serving part first, other sections after it.
    path.write_text("# Serving benchmarks\n\n## Machine\n\nold\n\n## Results\n\nold\n\n## Rollouts\n\nkept\n")
    write_section(path, f"{BEGIN}\n# Serving benchmarks\n\nfirst\n{END}\n")
    write_section(path, f"{BEGIN}\n# Serving benchmarks\n\nsecond\n{END}\n")
    assert path.read_text() == f"{BEGIN}\n# Serving benchmarks\n\nsecond\n{END}\n\n## Rollouts\n\nkept\n"


def test_ratios_pair_servers_within_each_round() -> None:
    from benchmarks.serving_bench import Result, Target, _rps_ratio, paired_ratio

    def result(key: str, round_: int, rps: float) -> Result:
        target = Target(key, "rf", key, [], "/", "", "/")
        return Result(target, 16, rps=rps, p50_s=0.001, p99_s=0.002, round=round_)

    # Round 2 was slowed by a neighbour for both servers: the per-round ratio does not care.
    results = [
        result("a", 1, 200),
        result("b", 1, 100),
        result("a", 2, 60),
        result("b", 2, 30),
        result("a", 3, 150),
    ]
    ratio, rounds = paired_ratio(results, "a", "b", 16, _rps_ratio)
    assert rounds == [2.0, 2.0] and ratio == 2.0
