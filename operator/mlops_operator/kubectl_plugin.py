"""``kubectl mlops``: read an InferenceService's rollout and steer it, request a training run.

kubectl runs any executable named ``kubectl-<name>`` on ``PATH`` as ``kubectl <name>``, passing
every later argument on, so this console script (``kubectl-mlops``) is a kubectl plugin once it
is installed. It authenticates as kubectl does (the same kubeconfig, context and namespace).

The rollout commands do not act themselves: they write the ``mlops.dev/rollout-command``
annotation, which the operator carries out, records in status and Events, and removes. The
plugin first checks what it can see in status (refusing at once, with exit code 1 and no write,
a command that cannot apply), then waits for the operator to take the annotation and reports
what happened. The operator checks again, so the plugin's check only needs to be a fast,
clear answer, never the last word.

Exit codes: 0 done, 1 error or refused, 2 the operator did not act before ``--timeout``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import kopf
import yaml

from mlops_operator import __version__
from mlops_operator.api.shared_fields import parse_duration
from mlops_operator.controllers.trainingjob_runs import ACTIVE, RUN_REQUEST_ANNOTATION, RUN_TRIGGER_ANNOTATION
from mlops_operator.credentials import DEFAULT_KUBECONFIG, CredentialsError, load_credentials
from mlops_operator.kube_client import Kube, NotFound

# The operator's own reading of status.history: where a bare rollback goes, which versions a
# rollback may go to. Reused rather than restated, so the plugin and the operator cannot disagree.
from mlops_operator.rollout.rollout_plan import (
    COMMAND_ANNOTATION,
    IN_PROGRESS,
    in_history,
    parse_command,
    previous_version,
)

PROG = "kubectl mlops"
ROLLOUT_ACTIONS = ("promote", "abort", "pause", "resume", "retry", "rollback")
#: Event reasons the operator uses when it refuses a command (rollout_plan.decide_rollout).
REFUSAL_REASONS = ("RolloutCommandIgnored", "InvalidRolloutCommand")
#: Event reasons about a command at all (the applied ones are "RolloutCommand").
COMMAND_REASONS = ("RolloutCommand", *REFUSAL_REASONS)
#: After the annotation is gone, how long to wait for the operator's Event about it: the
#: operator posts Events after it writes status and metadata, so they can trail by a moment.
SETTLE_SECONDS = 3.0
POLL_SECONDS = 0.5
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

EXIT_OK, EXIT_ERROR, EXIT_TIMEOUT = 0, 1, 2

_TIMEOUT = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")


class PluginError(Exception):
    """A failure to report as one line on stderr, with exit code 1."""


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    kind: str  # "InferenceService" or "TrainingJob"
    name: str

    @property
    def ref(self) -> str:
        """How kubectl names it: ``inferenceservice/iris``."""
        return f"{self.kind.lower()}/{self.name}"


_KIND_NAMES: dict[str, str] = {
    **dict.fromkeys(("mlisvc", "inferenceservice", "inferenceservices"), "InferenceService"),
    **dict.fromkeys(("tj", "trainingjob", "trainingjobs"), "TrainingJob"),
}
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def parse_target(text: str, kinds: Sequence[str]) -> Target:
    """``TYPE/NAME`` as kubectl writes it (``mlisvc/iris``, ``inferenceservice.mlops.dev/iris``)."""
    expected = " or ".join(
        sorted({short for short, kind in _KIND_NAMES.items() if kind in kinds and len(short) <= 6})
    )
    type_, sep, name = text.partition("/")
    if not sep:
        raise PluginError(f"{text!r}: expected TYPE/NAME, for example {expected}/NAME")
    type_ = type_.lower().removesuffix(".mlops.dev")
    kind = _KIND_NAMES.get(type_)
    if kind is None or kind not in kinds:
        raise PluginError(f"{text!r}: this command works on {expected}/NAME, not {type_!r}")
    if not _OBJECT_NAME.match(name) or len(name) > 253:
        raise PluginError(f"{text!r}: {name!r} is not a valid object name")
    return Target(kind, name)


# --- reading status (pure) --------------------------------------------------------------------


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], indent: str = "  ") -> list[str]:
    """Columns as kubectl prints them: upper-case headers, left-aligned, three spaces apart."""
    cells = [list(headers), *([_or_dash(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [
        indent + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def _served(served: Mapping[str, Any] | None) -> str:
    if not served or not served.get("modelVersion"):
        return "-"
    return (
        f"version {served['modelVersion']}, {served.get('readyReplicas', 0)}/{served.get('replicas', 0)} "
        f"replicas ready, weight {served.get('weight', 0)}%"
    )


def format_status(obj: Mapping[str, Any]) -> str:
    """The readable summary of an InferenceService that ``kubectl mlops status`` prints."""
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    status: Mapping[str, Any] = obj.get("status") or {}
    lines = [f"InferenceService {meta.get('namespace')}/{meta.get('name')}"]
    ready = _ready_condition(status)
    if ready is None:
        lines.append("Ready:       Unknown (the operator has not reported yet)")
    else:
        message = f": {ready['message']}" if ready.get("message") else ""
        lines.append(f"Ready:       {ready.get('status')} ({ready.get('reason')}){message}")
    if status.get("url"):
        lines.append(f"URL:         {status['url']}")
    lines.append(f"Stable:      {_served(status.get('stable'))}")
    lines.append(f"Canary:      {_served(status.get('canary'))}")

    rollout: Mapping[str, Any] = status.get("rollout") or {}
    analysis = (spec.get("rollout") or {}).get("analysis") or {}
    steps = analysis.get("stepWeights") or [10, 25, 50]
    threshold = analysis.get("threshold", 5)
    phase = rollout.get("phase", "Idle")
    reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
    lines.append(f"Rollout:     {phase}{reason}")
    shadow: Mapping[str, Any] = rollout.get("shadow") or {}
    if rollout.get("strategy") == "Shadow" and (phase in IN_PROGRESS or rollout.get("candidate")):
        lines.append(
            f"  candidate {_or_dash(rollout.get('candidate'))} in shadow (no traffic: a mirrored copy), "
            f"failed checks {rollout.get('failedChecks', 0)}/{threshold}"
        )
        if shadow:
            lines.append(
                f"  mirrored {shadow.get('mirrored', 0)} requests (dropped {shadow.get('dropped', 0)}, "
                f"failed {shadow.get('failed', 0)}), agreement {_or_dash(shadow.get('agreement'))} on "
                f"{shadow.get('compared', 0)} rows, {shadow.get('pairs', 0)} labelled pairs "
                f"(stable alone right {shadow.get('stableOnlyCorrect', 0)}, candidate alone right "
                f"{shadow.get('candidateOnlyCorrect', 0)}), accuracy difference "
                f"{_or_dash(shadow.get('difference'))} in [{_or_dash(shadow.get('lowerBound'))}, "
                f"{_or_dash(shadow.get('upperBound'))}]"
            )
    elif phase in IN_PROGRESS or rollout.get("candidate"):
        step = int(rollout.get("step") or 0)
        lines.append(
            f"  candidate {_or_dash(rollout.get('candidate'))}, step {min(step + 1, len(steps))}/{len(steps)} "
            f"(weights {', '.join(f'{w}%' for w in steps)}), canary weight {rollout.get('canaryWeight', 0)}%, "
            f"failed checks {rollout.get('failedChecks', 0)}/{threshold}"
        )
    if rollout.get("message"):
        lines.append(f"  {rollout['message']}")
    if rollout.get("rejectedVersions"):
        lines.append(f"  not tried again until the target changes: {', '.join(rollout['rejectedVersions'])}")
    last = rollout.get("lastAnalysis") or []
    if last:
        at = f" (at {rollout['lastCheckAt']})" if rollout.get("lastCheckAt") else ""
        lines.append(f"Last analysis{at}:")
        with_message = any(entry.get("message") for entry in last)
        headers = ["METRIC", "VALUE", "BOUND", "SAMPLES", "VERDICT"] + (["MESSAGE"] if with_message else [])
        rows = [
            [e.get("metric"), e.get("value"), e.get("bound"), e.get("samples", 0), e.get("verdict")]
            + ([e.get("message")] if with_message else [])
            for e in last
        ]
        lines += _table(headers, rows)

    monitoring: Mapping[str, Any] = status.get("monitoring") or {}
    if monitoring:
        drifted = monitoring.get("driftedFeatures") or []
        lines.append(f"Monitoring:  {monitoring.get('state', 'Unknown')}")
        lines.append(
            f"  drift share {_or_dash(monitoring.get('driftShare'))}"
            + (f" (drifted: {', '.join(drifted)})" if drifted else "")
            + f", accuracy {_or_dash(monitoring.get('accuracy'))}, "
            f"{monitoring.get('labelledSamples', 0)} labelled of {monitoring.get('samples', 0)} samples"
        )

    history = status.get("history") or []
    if history:
        lines.append("History:")
        lines += _table(
            ["VERSION", "PROMOTED-AT", "ROLLED-BACK-AT", "REASON"],
            [
                [e.get("modelVersion"), e.get("promotedAt"), e.get("rolledBackAt"), e.get("reason")]
                for e in history
            ],
        )
    pending = (meta.get("annotations") or {}).get(COMMAND_ANNOTATION)
    if pending is not None:
        lines.append(f"Pending command: {pending!r} (written; the operator has not carried it out yet)")
    return "\n".join(lines) + "\n"


# --- deciding whether a command can apply (pure) ----------------------------------------------


def command_value(action: str, version: str | None) -> str:
    """The annotation value: ``promote``, ..., ``rollback``, ``rollback:<version>``."""
    return f"{action}:{version}" if version is not None else action


def refusal(obj: Mapping[str, Any], action: str, version: str | None = None) -> str | None:
    """Why ``action`` cannot apply to what status shows, or None when it may.

    The same rules as the operator's (``rollout_plan._apply_command``), limited to what status
    holds: the operator sees pods and the live target too, so it may still refuse.
    """
    parsed = parse_command(command_value(action, version))
    if isinstance(parsed, str):
        return parsed
    status: Mapping[str, Any] = obj.get("status") or {}
    rollout: Mapping[str, Any] = status.get("rollout") or {}
    history: list[Mapping[str, Any]] = list(status.get("history") or [])
    phase = rollout.get("phase", "Idle")
    stable = (status.get("stable") or {}).get("modelVersion")
    rollback_from = rollout.get("rollbackFrom")
    running = phase in IN_PROGRESS and not rollback_from
    candidate = rollout.get("candidate")
    target = rollout.get("target")
    rejected = rollout.get("rejectedVersions") or []
    if stable is None:
        return f"{action}: nothing is served yet"
    if action == "promote":
        if running and phase == "Promoting":
            return f"promote: version {candidate} is being promoted already"
        if running:
            return None
        # The one promote outside a rollout: a new target waiting for a stable with no ready
        # replica (a broken stable), which promote replaces without analysis.
        strategy = ((obj.get("spec") or {}).get("rollout") or {}).get("strategy", "Replace")
        waiting = (
            phase not in IN_PROGRESS
            and target is not None
            and target != stable
            and target not in rejected
            and strategy == "Canary"
            and int((status.get("stable") or {}).get("readyReplicas") or 0) < 1
        )
        if waiting:
            return None
        return f"promote: no rollout in progress (rollout phase {phase})"
    if action == "abort":
        if rollback_from:
            return "abort: a rollback is in progress"
        return None if running else f"abort: no rollout in progress (rollout phase {phase})"
    if action == "pause":
        return None if phase == "Progressing" else f"pause: nothing to pause (rollout phase {phase})"
    if action == "resume":
        return None if phase == "Paused" else f"resume: the rollout is not paused (phase {phase})"
    if action == "retry":
        if target is None or target not in rejected:
            return "retry: the target version was not rejected"
        return None
    # rollback
    if rollback_from:
        return "rollback: a rollback is in progress"
    if version is None and running:
        return None
    to = version or previous_version(history, str(stable))
    if to is None:
        return f"rollback: no version before {stable} in status.history"
    if to == stable:
        return f"rollback: version {to} serves already"
    if not in_history(history, to):
        promoted = sorted({str(e["modelVersion"]) for e in history if e.get("promotedAt")}, key=int)
        return f"rollback: version {to} is not in status.history (promoted versions: {', '.join(promoted) or 'none'})"
    return None


def _event_uid(event: Mapping[str, Any]) -> str:
    return str((event.get("metadata") or {}).get("uid") or "")


def _event_key(event: Mapping[str, Any]) -> tuple[Any, ...]:
    return (event.get("count"), event.get("lastTimestamp"), event.get("eventTime"))


def _event_time(event: Mapping[str, Any]) -> str:
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def new_events(
    before: Mapping[str, tuple[Any, ...]], events: Iterable[Mapping[str, Any]], reasons: Sequence[str]
) -> list[Mapping[str, Any]]:
    """Events with one of ``reasons`` that appeared (or recurred) since ``before``, oldest first.

    "Since" by identity, not by clock: the plugin's clock and the API server's may differ, so
    an Event counts as new when its uid was not there before, or its count or time moved.
    """
    fresh = [e for e in events if e.get("reason") in reasons and before.get(_event_uid(e)) != _event_key(e)]
    return sorted(fresh, key=_event_time)


# --- talking to the API server ----------------------------------------------------------------


@dataclass
class Session:
    kube: Kube
    namespace: str

    def say(self, text: str) -> None:
        print(text, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace of the kubeconfig's context, the first file that sets each value winning.

    kubectl merges a ``$KUBECONFIG`` list that way; the ``kubernetes`` client reads one file.
    """
    paths = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)
    current: str | None = None
    contexts: dict[str, Any] = {}
    for path in paths.split(os.pathsep):
        full = os.path.expanduser(path) if path else ""
        if not full or not os.path.exists(full):
            continue
        try:
            with open(full) as handle:
                config = yaml.safe_load(handle) or {}
        except (OSError, yaml.YAMLError):
            continue  # load_credentials reports an unusable kubeconfig
        current = current or config.get("current-context")
        for entry in config.get("contexts") or []:
            contexts.setdefault(entry.get("name"), entry.get("context") or {})
    namespace = (contexts.get(context or current or "") or {}).get("namespace")
    return str(namespace) if namespace else None


def connect(args: argparse.Namespace) -> Session:
    """The client and namespace, chosen as kubectl chooses them."""
    kube = Kube(lambda: load_credentials(args.kubeconfig, args.context))
    namespace = args.namespace
    if not namespace and kube.credentials.source.startswith("in-cluster"):
        try:
            with open(SERVICE_ACCOUNT_NAMESPACE) as handle:
                namespace = handle.read().strip()
        except OSError:
            namespace = None
    namespace = namespace or kubeconfig_namespace(args.kubeconfig, args.context) or "default"
    return Session(kube, namespace)


def fetch(session: Session, target: Target) -> dict[str, Any]:
    obj = session.kube.get(target.kind, session.namespace, target.name)
    if obj is None:
        raise PluginError(
            f'{target.kind.lower()} "{target.name}" not found in namespace "{session.namespace}"'
        )
    return obj


def _command_events(session: Session, name: str) -> list[dict[str, Any]]:
    # Filtered here rather than with a fieldSelector: Kube.list takes label selectors only.
    return [
        e
        for e in session.kube.list("Event", session.namespace)
        if (e.get("involvedObject") or {}).get("name") == name
        and (e.get("involvedObject") or {}).get("kind") in (None, "InferenceService")
        and e.get("reason") in COMMAND_REASONS
    ]


# --- subcommands ------------------------------------------------------------------------------


def run_status(session: Session, args: argparse.Namespace) -> int:
    target: Target = args.target
    obj = fetch(session, target)
    if args.output == "json":
        session.say(json.dumps(obj.get("status") or {}, indent=2, sort_keys=True))
    elif args.output == "yaml":
        session.say(yaml.safe_dump(obj.get("status") or {}, sort_keys=True).rstrip())
    else:
        session.say(format_status(obj).rstrip("\n"))
    return EXIT_OK


def run_rollout_command(session: Session, args: argparse.Namespace) -> int:
    target: Target = args.target
    action: str = args.action
    version: str | None = getattr(args, "to_version", None)
    obj = fetch(session, target)
    why = refusal(obj, action, version)
    if why is not None:
        raise PluginError(f"{target.ref}: refused, nothing written: {why}")
    value = command_value(action, version)
    pending = ((obj.get("metadata") or {}).get("annotations") or {}).get(COMMAND_ANNOTATION)
    if pending is not None and pending != value:
        session.warn(
            f"{target.ref}: replacing the pending command {pending!r}, which the operator has not taken"
        )
    # Events are told apart by identity (see new_events), so take stock before writing.
    seen = (
        {} if args.no_wait else {_event_uid(e): _event_key(e) for e in _command_events(session, target.name)}
    )
    session.kube.patch(
        target.kind,
        session.namespace,
        target.name,
        {"metadata": {"annotations": {COMMAND_ANNOTATION: value}}},
    )
    if args.no_wait:
        session.say(
            f"{target.ref}: requested {value} ({COMMAND_ANNOTATION}={value}); not waiting for the operator"
        )
        return EXIT_OK
    return wait_for_outcome(session, target, value, seen, _rollout(obj), args.timeout)


def _rollout(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    rollout: Mapping[str, Any] = (obj.get("status") or {}).get("rollout") or {}
    return rollout


def _applied(before: Mapping[str, Any], after: Mapping[str, Any]) -> bool:
    """Status shows a command took effect: the rollout's reason moved to a ``Manual*`` one."""
    moved = (after.get("phase"), after.get("reason")) != (before.get("phase"), before.get("reason"))
    return moved and str(after.get("reason") or "").startswith("Manual")


def wait_for_outcome(
    session: Session,
    target: Target,
    value: str,
    seen: Mapping[str, tuple[Any, ...]],
    before: Mapping[str, Any],
    timeout: float,
) -> int:
    """Poll until the operator removed the annotation, then report its Event or the new status.

    ``seen`` are the command Events there were before writing, ``before`` the rollout status.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            obj: dict[str, Any] | None = fetch(session, target)
        except kopf.TemporaryError:
            obj = None  # a busy or briefly unreachable API server: try again until the deadline
        if obj is not None and (obj["metadata"].get("annotations") or {}).get(COMMAND_ANNOTATION) != value:
            break
        if time.monotonic() >= deadline:
            session.warn(
                f"{target.ref}: the operator has not acted on {value!r} within {timeout:g}s (is it running?); "
                f"the command stays pending (remove it: kubectl annotate {target.ref} {COMMAND_ANNOTATION}-)"
            )
            return EXIT_TIMEOUT
        time.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))  # the deadline decides
    # The annotation is gone; the Event saying how it went may trail the metadata write.
    settle = min(deadline, time.monotonic() + SETTLE_SECONDS)
    while True:
        events = new_events(seen, _command_events(session, target.name), COMMAND_REASONS)
        if events or _applied(before, _rollout(obj)) or time.monotonic() >= settle:
            break
        time.sleep(POLL_SECONDS)  # polling interval; the settle deadline decides
        obj = fetch(session, target)
    refusals = [e for e in events if e.get("reason") in REFUSAL_REASONS]
    if refusals:
        session.warn(f"{target.ref}: the operator refused {value!r}: {refusals[-1].get('message')}")
        return EXIT_ERROR
    rollout = _rollout(obj)
    taken = "carried out" if events or _applied(before, rollout) else "took"
    session.say(f"{target.ref}: the operator {taken} {value!r}")
    for event in events:
        session.say(f"  {event.get('message')}")
    reason = f" ({rollout['reason']})" if rollout.get("reason") else ""
    message = f": {rollout['message']}" if rollout.get("message") else ""
    session.say(f"  rollout: {rollout.get('phase', 'Idle')}{reason}{message}")
    return EXIT_OK


def run_retrain(session: Session, args: argparse.Namespace) -> int:
    target: Target = args.target
    obj = fetch(session, target)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    # A new value is what asks for a run (the operator compares it with status.lastHandledRequest);
    # the trigger annotation goes, so the run is recorded as Manual, not as a drift Retrain.
    annotations = {RUN_REQUEST_ANNOTATION: stamp, RUN_TRIGGER_ANNOTATION: None}
    session.kube.patch(
        target.kind, session.namespace, target.name, {"metadata": {"annotations": annotations}}
    )
    session.say(f"{target.ref}: requested a run ({RUN_REQUEST_ANNOTATION}={stamp})")
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    active = [run for run in status.get("runs") or [] if run.get("phase") in ACTIVE]
    if spec.get("suspend"):
        session.say("  note: spec.suspend is true, so the run waits until the TrainingJob is resumed")
    elif active and spec.get("concurrencyPolicy", "Forbid") == "Forbid":
        session.say(
            f"  note: run {active[0].get('name')} is still active; the request waits for it (concurrencyPolicy: Forbid)"
        )
    else:
        session.say(f"  follow it: kubectl get {target.ref} -w")
    return EXIT_OK


def run_version(session: Session | None, args: argparse.Namespace) -> int:
    print(f"kubectl-mlops {__version__}")
    return EXIT_OK


# --- the command line -------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """kubectl's habit: a usage error exits 1 (2 is kept for "the operator did not act in time")."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message}\n")


def parse_timeout(value: str) -> float:
    """``30s``, ``2m``, ``1m30s`` or plain seconds."""
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    if not _TIMEOUT.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration (30s, 2m, 1m30s)")
    return parse_duration(value)


_ROLLOUT_HELP = {
    "promote": "skip the rest of the analysis: the candidate goes to full size and becomes stable",
    "abort": "stop the rollout: the candidate is scaled to zero, stable keeps all traffic",
    "pause": "hold the rollout at its weight (no checks, no deadlines) until resume",
    "resume": "continue a paused rollout (the step's analysis starts again)",
    "retry": "allow a rejected (aborted or rolled back) target version to be rolled out again",
    "rollback": "roll back: during a rollout, drop the candidate; else return to the version stable replaced",
}
_REFUSALS = {
    "promote": "Refused when no rollout is in progress (unless a new version waits on a stable with no ready replica).",
    "abort": "Refused when no rollout is in progress.",
    "pause": "Refused unless the rollout is Progressing.",
    "resume": "Refused unless the rollout is Paused.",
    "retry": "Refused when the target version was not rejected.",
    "rollback": "Refused when --to-version is not a promoted version in status.history.",
}


_EPILOG = f"""\
examples:
  kubectl mlops status mlisvc/iris                 the rollout, last analysis, monitoring, history
  kubectl mlops status mlisvc/iris -o json         the status as JSON
  kubectl mlops pause mlisvc/iris                  hold the canary at its weight
  kubectl mlops promote mlisvc/iris                skip the rest of the analysis
  kubectl mlops rollback mlisvc/iris --to-version 3
  kubectl mlops retrain tj/iris-train              request a training run now

Rollout commands write the {COMMAND_ANNOTATION} annotation, wait until the operator has
carried it out and removed it, and print the outcome. Exit codes: 0 done, 1 error or refused,
2 the operator did not act within --timeout.
"""


def build_parser() -> argparse.ArgumentParser:
    # Flags work before and after the subcommand, as with kubectl: the subcommands' copies
    # default to SUPPRESS so they never overwrite a value given before the subcommand.
    def connection_flags(parser: argparse.ArgumentParser, default: Any) -> None:
        group = parser.add_argument_group("connection (as kubectl)")
        group.add_argument(
            "--kubeconfig", default=default, help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
        )
        group.add_argument(
            "--context", default=default, help="kubeconfig context (default: the current context)"
        )
        group.add_argument(
            "-n",
            "--namespace",
            default=default,
            help="namespace (default: the context's namespace, else default)",
        )

    parser = _Parser(
        prog=PROG,
        description="Watch and steer mlops-operator InferenceService rollouts; request TrainingJob runs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-mlops {__version__}")
    connection_flags(parser, None)
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
        sub_parser = sub.add_parser(name, help=help_text, description=description or help_text)
        connection_flags(sub_parser, argparse.SUPPRESS)
        return sub_parser

    status = add(
        "status",
        "show an InferenceService's serving versions, rollout, last analysis, monitoring and history",
    )
    status.add_argument(
        "target", metavar="mlisvc/NAME", help="the InferenceService (mlisvc/NAME, inferenceservice/NAME)"
    )
    status.add_argument(
        "-o", "--output", choices=["text", "json", "yaml"], default="text", help="json/yaml: the status as is"
    )
    status.set_defaults(_run=run_status, _kinds=["InferenceService"])

    for action in ROLLOUT_ACTIONS:
        command = add(
            action,
            _ROLLOUT_HELP[action],
            f"{_ROLLOUT_HELP[action]}. {_REFUSALS[action]} Writes {COMMAND_ANNOTATION}={action}"
            f"{' (rollback:<version> with --to-version)' if action == 'rollback' else ''}, then waits for the "
            "operator to carry it out and prints the outcome.",
        )
        command.add_argument("target", metavar="mlisvc/NAME", help="the InferenceService")
        if action == "rollback":
            command.add_argument(
                "--to-version", metavar="V", help="roll back to this promoted version (see status.history)"
            )
        command.add_argument(
            "--timeout",
            type=parse_timeout,
            default=30.0,
            metavar="DURATION",
            help="how long to wait for the operator (default 30s); exit code 2 when it has not acted",
        )
        command.add_argument("--no-wait", action="store_true", help="write the command and return at once")
        command.set_defaults(_run=run_rollout_command, _kinds=["InferenceService"], action=action)

    retrain = add(
        "retrain",
        "request a TrainingJob run now",
        f"request a TrainingJob run now: sets {RUN_REQUEST_ANNOTATION} to the current time (the operator "
        "starts a run unless the TrainingJob is suspended or, with concurrencyPolicy Forbid, a run is active).",
    )
    retrain.add_argument("target", metavar="tj/NAME", help="the TrainingJob (tj/NAME, trainingjob/NAME)")
    retrain.set_defaults(_run=run_retrain, _kinds=["TrainingJob"])

    version = add("version", "print the plugin's version")
    version.set_defaults(_run=run_version, _offline=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "_offline", False):
            return int(args._run(None, args))
        args.target = parse_target(args.target, args._kinds)  # a typo fails before any connection
        session = connect(args)
        return int(args._run(session, args))
    except PluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (kopf.PermanentError, kopf.TemporaryError, NotFound, CredentialsError) as exc:
        # Forbidden, invalid, unreachable: Kube's messages name the call and the server's answer.
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
