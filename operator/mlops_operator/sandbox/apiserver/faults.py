"""Faults a test injects into the emulated API server, answered the way kube-apiserver answers them.

A :class:`FaultInjector` (``emulator.faults``) holds rules. Each rule selects requests by verb
(``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``, ``delete``), resource (plural,
optionally group), namespace, name, subresource (``status``) and the client's ``User-Agent``
(``mlops-operator/`` for the operator's own client, ``kopf/`` for kopf's calls), and fires for
the next ``count`` matching requests, or for each with a ``probability`` drawn from a seeded
RNG, so a test is deterministic. What it answers is what the real server sends:

- ``conflict``: 409 ``Conflict``, "the object has been modified; please apply your changes to
  the latest version and try again" (optimistic concurrency lost);
- ``internal_error``: 500 ``InternalError`` (etcd hiccup, a webhook that failed), or any 5xx;
- ``stored_then_error``: the request is served (a create is stored) and *then* answered 500,
  as a real server does when the write reached etcd but the answer was lost; a retried create
  then meets 409 ``AlreadyExists``;
- ``too_many_requests``: 429 ``TooManyRequests`` with a ``Retry-After`` header and
  ``details.retryAfterSeconds``, as API Priority and Fairness rejects a request;
- ``refuse``: a 4xx the test words (403 ``Forbidden`` of a missing RBAC rule, 422 ``Invalid``
  of an admission webhook, ...): a refusal that retrying the same request cannot change;
- ``slow``: the request waits ``delay`` seconds before it is served;
- ``drop_watch``: a matching watch stream is cut (the connection closed without the end of the
  chunked body) after it has sent ``after_events`` events; :meth:`FaultInjector.drop_watches`
  cuts the streams open right now;
- ``expire_watch``: a watch resumed from a resourceVersion is answered with an ERROR event
  ``410 Expired`` "too old resource version", so the client relists.

``injected`` counts the faults answered, by fault name. Rules are kept under a lock: tests add
and lift them from their own thread while the server's loop reads them.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
from collections.abc import Callable
from typing import Any

from . import errors
from .errors import ApiError
from .request_urls import ParsedPath, is_true

JsonDict = dict[str, Any]

#: The faults a rule can inject (the keys of :attr:`FaultInjector.injected`).
FAULTS = (
    "refuse",
    "conflict",
    "internal_error",
    "stored_then_error",
    "too_many_requests",
    "slow",
    "drop_watch",
    "expire_watch",
)


def verb_of(method: str, parsed: ParsedPath | None, query: dict[str, str]) -> str:
    """The Kubernetes verb of a request (as authorization and audit name it)."""
    method = method.upper()
    if method == "GET":
        if is_true(query.get("watch")):
            return "watch"
        return "get" if parsed is not None and parsed.name else "list"
    if method == "DELETE":
        return "delete" if parsed is not None and parsed.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What a rule can select a request by."""

    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    subresource: str
    user_agent: str
    resource_version: str = ""  # the query's resourceVersion (a resumed watch has one)

    @classmethod
    def of(
        cls, method: str, parsed: ParsedPath | None, query: dict[str, str], user_agent: str
    ) -> RequestInfo:
        return cls(
            verb=verb_of(method, parsed, query),
            group="" if parsed is None else parsed.group,
            resource="" if parsed is None else parsed.plural,
            namespace="" if parsed is None else parsed.namespace or "",
            name="" if parsed is None else parsed.name or "",
            subresource="" if parsed is None else parsed.subresource or "",
            user_agent=user_agent,
            resource_version=query.get("resourceVersion", ""),
        )


@dataclasses.dataclass(eq=False)
class FaultRule:
    """One fault and the requests it applies to; ``None`` selectors match anything.

    ``subresource=""`` selects requests on the object itself (not ``/status``).
    """

    fault: str
    verb: str | None = None
    resource: str | None = None
    group: str | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    user_agent: str | None = None  # a substring of the User-Agent header
    count: int | None = 1  # the next N matching requests; None: every one (see probability)
    probability: float = 1.0
    code: int = 500  # internal_error / stored_then_error
    retry_after: int = 1  # too_many_requests
    delay: float = 0.0  # slow
    reason: str = ""  # refuse: the Status reason (Forbidden, Invalid, ...)
    message: str = ""  # refuse: the Status message
    after_events: int = 0  # drop_watch
    injected: int = 0  # how many requests this rule has answered

    def selects(self, request: RequestInfo) -> bool:
        wanted = (
            (self.verb, request.verb),
            (self.resource, request.resource),
            (self.group, request.group),
            (self.namespace, request.namespace),
            (self.name, request.name),
            (self.subresource, request.subresource),
        )
        if any(want is not None and want != have for want, have in wanted):
            return False
        if self.fault == "expire_watch" and not request.resource_version.strip("0"):
            return False  # only a resumed watch can be too old
        return self.user_agent is None or self.user_agent in request.user_agent

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.count <= 0


class FaultInjector:
    """The rules in force, and counts of what they injected (see the module docstring)."""

    def __init__(
        self, seed: int = 0, cut_watches: Callable[[str | None, str | None], int] | None = None
    ) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self.injected: collections.Counter[str] = collections.Counter()
        #: The watch server's: cuts the open streams of a resource (plural, group), or all.
        self._cut_watches = cut_watches

    # -- adding and lifting rules (any thread) --------------------------------------------------

    def add(self, rule: FaultRule) -> FaultRule:
        if rule.fault not in FAULTS:
            raise ValueError(f"unknown fault {rule.fault!r}: one of {', '.join(FAULTS)}")
        with self._lock:
            self._rules.append(rule)
        return rule

    def conflict(self, verb: str = "patch", **select: Any) -> FaultRule:
        """409 Conflict for the selected writes (``update``/``patch``)."""
        return self.add(FaultRule("conflict", verb=verb, **select))

    def internal_error(self, verb: str | None = None, *, code: int = 500, **select: Any) -> FaultRule:
        """A 5xx (500 InternalError by default; 503 ServiceUnavailable, 504 Timeout) before serving."""
        return self.add(FaultRule("internal_error", verb=verb, code=code, **select))

    def stored_then_error(self, verb: str = "create", *, code: int = 500, **select: Any) -> FaultRule:
        """Serve the request (store the write), then answer a 5xx as if the answer were lost."""
        return self.add(FaultRule("stored_then_error", verb=verb, code=code, **select))

    def too_many_requests(self, verb: str | None = None, *, retry_after: int = 1, **select: Any) -> FaultRule:
        """429 TooManyRequests with ``Retry-After: <retry_after>``."""
        return self.add(FaultRule("too_many_requests", verb=verb, retry_after=retry_after, **select))

    def refuse(
        self, verb: str | None = None, *, code: int = 403, reason: str, message: str, **select: Any
    ) -> FaultRule:
        """A 4xx Status with ``reason`` and ``message`` (e.g. 403 Forbidden), before serving."""
        if not 400 <= code < 500:
            raise ValueError(f"refuse answers a 4xx, not {code}")
        return self.add(FaultRule("refuse", verb=verb, code=code, reason=reason, message=message, **select))

    def slow(self, verb: str | None = None, *, delay: float, **select: Any) -> FaultRule:
        """Wait ``delay`` seconds before serving the selected requests."""
        return self.add(FaultRule("slow", verb=verb, delay=delay, **select))

    def drop_watch(self, *, after_events: int = 0, **select: Any) -> FaultRule:
        """Cut the selected watch streams after ``after_events`` events (0: before the first)."""
        return self.add(FaultRule("drop_watch", verb="watch", after_events=after_events, **select))

    def expire_watch(self, **select: Any) -> FaultRule:
        """Answer the selected resumed watches with an ERROR event 410 Expired."""
        return self.add(FaultRule("expire_watch", verb="watch", **select))

    def remove(self, rule: FaultRule) -> None:
        with self._lock:
            if rule in self._rules:
                self._rules.remove(rule)

    def clear(self) -> None:
        """Lift every fault (the counts stay)."""
        with self._lock:
            self._rules.clear()

    def drop_watches(self, resource: str | None = None, group: str | None = None) -> int:
        """Cut the open watch streams (of one resource, or all) now; how many were cut.

        Call it on the server's loop (``ApiServerThread.call``): it touches the streams' queues.
        """
        if self._cut_watches is None:
            return 0
        cut: int = self._cut_watches(resource, group)
        with self._lock:
            self.injected["drop_watch"] += cut
        return cut

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    # -- deciding (the server's loop) -----------------------------------------------------------

    def pick(self, request: RequestInfo, faults: tuple[str, ...]) -> FaultRule | None:
        """The first rule of one of ``faults`` that fires for ``request`` (and count it)."""
        if not self._rules:
            return None
        with self._lock:
            for rule in self._rules:
                if rule.fault not in faults or rule.exhausted or not rule.selects(request):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                rule.injected += 1
                self.injected[rule.fault] += 1
                return rule
        return None


def conflict_error(request: RequestInfo) -> ApiError:
    return errors.conflict(request.resource, request.group, request.name)


def server_error(code: int, request: RequestInfo) -> ApiError:
    """A 5xx as kube-apiserver words it (``InternalError``'s message wraps the cause)."""
    if code == 503:
        return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")
    if code == 504:
        return ApiError(504, "Timeout", "Timeout: request did not complete within requested timeout")
    cause = "rpc error: code = Unavailable desc = error reading from server: EOF"
    return ApiError(
        code,
        "InternalError",
        f"Internal error occurred: {cause}",
        {"name": request.name, "kind": request.resource, "causes": [{"message": cause}]}
        if request.name
        else {"causes": [{"message": cause}]},
    )


def too_many_requests(retry_after: int) -> tuple[ApiError, dict[str, str]]:
    """API Priority and Fairness' rejection: the Status and the ``Retry-After`` header."""
    error = ApiError(
        429,
        "TooManyRequests",
        "Too many requests, please try again later.",
        {"retryAfterSeconds": retry_after},
    )
    return error, {"Retry-After": str(retry_after)}
