"""Rollout benchmark: ``python -m benchmarks.rollout_bench --output BENCHMARKS.md`` (``make bench``).

Two numbers the progressive-delivery issue asks for, written as a section of BENCHMARKS.md
(replacing the section of an earlier run, leaving the rest of the file alone):

1. **Time to safety.** From a bad canary's first failing check (``status.rollout.failedChecks``
   turns 1) to all traffic on stable (the stable Service selects only the stable version and the
   candidate Deployment is at zero replicas), measured through the whole operator (kopf,
   in-process) against the emulated API server, with model servers whose ``/monitoring``
   counters report a 20% error rate for the candidate (tests/fake_model_servers.py). Goal: at
   most ``interval x threshold`` plus one interval. The operator's timer (``reconcile_interval``)
   is what turns a due check into a reconciliation, so it is reported beside the result.
2. **False rollbacks of the accuracy gate** on equal models over many simulated rollouts, the
   gate as the operator runs it (mSPRT, checked at every interval) against a naive z-test
   checked at the same intervals; and how often each catches a candidate 5 points worse.
   Goal: the mSPRT's false rollback rate at most ``alpha``.

Timings are read with a 50 ms poll of the API; tests never assert them.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.markdown_sections import replace_section
from mlops_operator.rollout.significance import simulate_false_rollbacks

MARKER = "## Rollouts"
INTERVAL_S, THRESHOLD, RECONCILE_S = 2, 2, 1


def _canary(name: str) -> dict[str, Any]:
    from tests.fixtures_operator import example

    manifest = example("iris-inferenceservice.yaml")
    manifest["metadata"]["name"] = name
    manifest["spec"].pop("retraining")
    manifest["spec"]["replicas"] = 1
    manifest["spec"]["model"] = {"name": f"{name}-model", "version": "1"}
    manifest["spec"]["rollout"] = {
        "strategy": "Canary",
        "analysis": {
            "interval": f"{INTERVAL_S}s",
            "threshold": THRESHOLD,
            "stepWeights": [10, 50],
            "minRequests": 20,
            "minSamples": 100,
            "metrics": [{"name": "error-rate", "max": "0.05"}],
        },
    }
    return manifest


def time_to_safety(trials: int) -> list[float]:
    """Seconds from the first failing check to all traffic on stable, one per trial."""
    from tests.fake_model_servers import Traffic, start_pod
    from tests.fixtures_operator import running_operator
    from tests.fixtures_sandbox import wait_for

    results = []
    with tempfile.TemporaryDirectory() as tmp, running_operator(Path(tmp), RECONCILE_S) as cluster:
        traffic = Traffic()
        try:
            for trial in range(trials):
                name = f"bad-{trial}"
                cluster.create(_canary(name))
                start_pod(cluster, traffic, name, "1")

                def stable_ready(n: str = name) -> bool:
                    status = (cluster.get("InferenceService", n) or {}).get("status") or {}
                    return bool((status.get("stable") or {}).get("readyReplicas"))

                wait_for(stable_ready, message="stable ready")
                cluster.patch("InferenceService", name, {"spec": {"model": {"version": "2"}}})
                start_pod(cluster, traffic, name, "2", error_rate=0.2)

                def rollout(n: str = name) -> dict[str, Any]:
                    return dict(
                        ((cluster.get("InferenceService", n) or {}).get("status") or {}).get("rollout") or {}
                    )

                wait_for(
                    lambda: int(rollout().get("failedChecks") or 0) >= 1,
                    timeout=60,
                    interval=0.05,
                    message="the first failed check",
                )
                first_fail = time.monotonic()

                def safe(n: str = name) -> bool:
                    service = cluster.get("Service", n) or {}
                    candidate = cluster.get("Deployment", f"{n}-v2") or {}
                    return bool(
                        service.get("spec", {}).get("selector", {}).get("mlops.dev/model-version") == "1"
                        and candidate.get("spec", {}).get("replicas") == 0
                    )

                wait_for(safe, timeout=60, interval=0.05, message="all traffic on stable")
                results.append(time.monotonic() - first_fail)
        finally:
            traffic.close()
    return results


def false_rollbacks() -> list[dict[str, Any]]:
    rows = []
    for accuracy in (0.8, 0.9, 0.95):
        equal = simulate_false_rollbacks(rollouts=20_000, looks=50, accuracy=accuracy, seed=1)
        worse = simulate_false_rollbacks(
            rollouts=5_000, looks=50, accuracy=accuracy, candidate_accuracy=accuracy - 0.05, seed=2
        )
        rows.append({"accuracy": accuracy, "equal": equal, "worse": worse})
    return rows


def render(times: list[float], rows: list[dict[str, Any]]) -> str:
    goal = INTERVAL_S * THRESHOLD + INTERVAL_S
    lines = [
        MARKER,
        "",
        f"Generated by `python -m benchmarks.rollout_bench` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        "method in that module's docstring.",
        "",
        "### Time from a bad canary's first failing check to all traffic on stable",
        "",
        f"interval {INTERVAL_S} s, threshold {THRESHOLD}, operator timer {RECONCILE_S} s; goal <= interval x threshold + interval = {goal} s.",
        "",
        "| trials | min | median | max | goal met |",
        "| --- | --- | --- | --- | --- |",
        f"| {len(times)} | {min(times):.2f} s | {statistics.median(times):.2f} s | {max(times):.2f} s | "
        f"{'yes' if max(times) <= goal else 'NO'} |",
        "",
        "### False rollbacks of the accuracy gate (equal models), and detection of a 5-point drop",
        "",
        "50 checks per rollout, 40 labels per check (25% for the candidate), gate active from 200 candidate labels, alpha 0.05.",
        "",
        "| stable accuracy | rollouts | false rollbacks, mSPRT (ours) | false rollbacks, naive z-test at every check | caught 5 points worse, mSPRT | caught, naive |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        equal, worse = row["equal"], row["worse"]
        lines.append(
            f"| {row['accuracy']:.2f} | {equal.rollouts} | {equal.msprt_rate:.2%} | {equal.naive_rate:.2%} | "
            f"{worse.msprt_rate:.1%} | {worse.naive_rate:.1%} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the ``## Rollouts`` section of ``path`` (or append it), keeping everything else."""
    replace_section(path, MARKER, section)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rollout_bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--trials", type=int, default=5)
    args = parser.parse_args(argv)
    times = time_to_safety(args.trials)
    section = render(times, false_rollbacks())
    write_section(args.output, section)
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
