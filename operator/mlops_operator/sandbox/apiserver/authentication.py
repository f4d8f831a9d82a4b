"""Who is calling: bearer-token authentication, impersonation, a default authorizer, and the audit.

A real API server authenticates every request before it looks at the path, and the emulated one
must be no more forgiving, or a client that sends no credentials passes every test and fails on
every cluster (it happened: the operator's own client went out as ``system:anonymous``).
What this module copies from ``k8s.io/apiserver``:

- **Client certificates** signed by the cluster CA (``certificates.py``): the common name is the
  user, each organization a group; checked before tokens.
- **Bearer tokens** (``--token-auth-file``): ``Authorization: Bearer <token>``. An unknown token
  is 401 ``Unauthorized`` even where anonymous requests are allowed: a wrong credential is never
  downgraded to anonymous.
- **Anonymous requests** (``--anonymous-auth``): with it off, a request without credentials is
  401; with it on, it runs as ``system:anonymous`` in group ``system:unauthenticated``, which
  the default authorizer lets read only ``/version``, ``/healthz``, ``/livez`` and ``/readyz``
  (the ``system:public-info-viewer`` ClusterRole), so everything else is 403.
- **Impersonation** (``Impersonate-User``, ``Impersonate-Group`` (repeated), ``Impersonate-Uid``,
  ``Impersonate-Extra-<key>``): allowed only when the authorizer grants the caller the
  ``impersonate`` verb; the request then runs as the impersonated user, who is also put in
  ``system:authenticated``.
- **Request attributes** the way the authorizer sees them (``authorizer.Attributes``): verb
  (``get``/``list``/``watch``/``create``/``update``/``patch``/``delete``/``deletecollection``
  for resources, the lower-cased HTTP method for other paths), API group, resource, subresource,
  namespace and name; and the 403 message in the server's words.

The audit keeps the distinct attributes of every authenticated request, so a test can check a
client's requests against RBAC rules (``rbac.py``) the way the server's authorizer would.
"""

from __future__ import annotations

import collections
import dataclasses
import hmac
import json
import pathlib
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ApiError

MASTERS = "system:masters"
AUTHENTICATED = "system:authenticated"
UNAUTHENTICATED = "system:unauthenticated"
ANONYMOUS = "system:anonymous"
#: The paths ``system:public-info-viewer`` grants to everyone, anonymous included.
PUBLIC_PATHS = ("/version", "/version/", "/healthz", "/livez", "/readyz")


@dataclasses.dataclass(frozen=True)
class UserInfo:
    """An authenticated identity (``user.Info``)."""

    username: str
    groups: tuple[str, ...] = ()
    uid: str = ""

    @classmethod
    def service_account(cls, namespace: str, name: str) -> UserInfo:
        """The identity a ServiceAccount token authenticates as."""
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        )

    @classmethod
    def admin(cls, name: str = "kubernetes-admin") -> UserInfo:
        """A cluster administrator (kind's and kubeadm's admin.conf user is in system:masters)."""
        return cls(name, (MASTERS, AUTHENTICATED))


ANONYMOUS_USER = UserInfo(ANONYMOUS, (UNAUTHENTICATED,))


@dataclasses.dataclass(frozen=True)
class RequestAttributes:
    """What the authorizer sees of one request (``authorizer.Attributes``)."""

    user: str
    groups: tuple[str, ...]
    verb: str
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""
    resource_request: bool = True


def request_attributes(
    user: UserInfo,
    method: str,
    path: str,
    query: Mapping[str, str],
    parsed: Any | None,
) -> RequestAttributes:
    """The attributes of a request: ``parsed`` is the emulator's ParsedPath (None: not a resource)."""
    method = method.upper()
    if parsed is None:
        return RequestAttributes(
            user.username, user.groups, method.lower(), path=path, resource_request=False
        )
    watch = query.get("watch") in ("1", "t", "T", "true", "TRUE", "True")
    if method == "GET":
        verb = "watch" if watch else ("get" if parsed.name else "list")
    elif method == "DELETE":
        verb = "delete" if parsed.name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    namespace = parsed.namespace or ""
    name = parsed.name or ""
    resource = parsed.plural
    if parsed.group == "" and resource == "namespaces" and namespace == "" and name:
        namespace = name  # a Namespace is authorized in its own namespace, as the server does
    return RequestAttributes(
        user.username,
        user.groups,
        verb,
        api_group=parsed.group,
        resource=resource,
        subresource=parsed.subresource or "",
        namespace=namespace,
        name=name,
        path=path,
    )


def forbidden(attrs: RequestAttributes, reason: str = "") -> ApiError:
    """The server's 403: ``pods "x" is forbidden: User "u" cannot get resource "pods" ...``."""
    if not attrs.resource_request:
        message = f'forbidden: User "{attrs.user}" cannot {attrs.verb} path "{attrs.path}"'
        return ApiError(403, "Forbidden", message + (f": {reason}" if reason else ""))
    resource = attrs.resource + (f"/{attrs.subresource}" if attrs.subresource else "")
    qualified = attrs.resource + (f".{attrs.api_group}" if attrs.api_group else "")
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    where = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    message = (
        f'{subject} is forbidden: User "{attrs.user}" cannot {attrs.verb} resource "{resource}" '
        f'in API group "{attrs.api_group}" {where}'
    )
    if reason:
        message += f": {reason}"
    return ApiError(
        403,
        "Forbidden",
        message,
        details={"name": attrs.name, "group": attrs.api_group, "kind": attrs.resource},
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


#: An authorizer: (allowed, reason). An ``rbac.Authorizer`` is one (calling it authorizes).
Authorize = Callable[[RequestAttributes], tuple[bool, str]]


def default_authorize(attrs: RequestAttributes) -> tuple[bool, str]:
    """What a fresh cluster allows without extra RBAC objects.

    ``system:masters`` may do anything; any other authenticated identity may do anything but
    impersonate (so impersonation needs an administrator); anonymous requests may read only the
    public-info paths.
    """
    if MASTERS in attrs.groups:
        return True, "system:masters"
    if AUTHENTICATED in attrs.groups:
        if attrs.verb == "impersonate":
            return False, "impersonation needs an administrator"
        return True, "authenticated"
    if not attrs.resource_request and attrs.verb == "get" and attrs.path in PUBLIC_PATHS:
        return True, "system:public-info-viewer"
    return False, ""


class Authenticator:
    """Bearer tokens to identities, and whether anonymous requests are allowed.

    Thread-safe: tests rotate tokens from their own thread while the server serves.
    """

    def __init__(self, tokens: Mapping[str, UserInfo] | None = None, *, anonymous: bool = False) -> None:
        self._tokens: dict[str, UserInfo] = dict(tokens or {})
        self._lock = threading.Lock()
        self.anonymous = anonymous

    @classmethod
    def from_token_file(cls, path: str | pathlib.Path, *, anonymous: bool = False) -> Authenticator:
        """Read kube-apiserver's ``--token-auth-file`` CSV: ``token,user,uid,"group1,group2"``."""
        import csv

        tokens: dict[str, UserInfo] = {}
        with open(path, newline="") as handle:
            for row in csv.reader(handle):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 3:
                    raise ValueError(f"{path}: a row needs token,user,uid[,groups]: {row!r}")
                groups = tuple(g for g in (row[3].split(",") if len(row) > 3 else []) if g)
                tokens[row[0]] = UserInfo(row[1], (*groups, AUTHENTICATED), row[2])
        return cls(tokens, anonymous=anonymous)

    def add_token(self, token: str, user: UserInfo) -> None:
        with self._lock:
            self._tokens[token] = user

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def authenticate(
        self, authorization: str | None, client: tuple[str, tuple[str, ...]] | None = None
    ) -> UserInfo:
        """The identity of a request, or a 401 ApiError.

        ``client`` is the (common name, organizations) of a verified client certificate: as in
        Kubernetes, the x509 authenticator comes before tokens.
        """
        if client is not None:
            name, groups = client
            return UserInfo(name, tuple(dict.fromkeys((*groups, AUTHENTICATED))))
        if not authorization:
            if self.anonymous:
                return ANONYMOUS_USER
            raise unauthorized()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized()
        token = token.strip()
        with self._lock:
            for known, user in self._tokens.items():
                if hmac.compare_digest(known, token):
                    return user
        raise unauthorized()


def impersonate(
    user: UserInfo,
    headers: Any,
    authorize: Authorize,
) -> UserInfo:
    """Apply ``Impersonate-*`` headers (a multidict: ``getall``), each checked with ``authorize``."""
    target = headers.get("Impersonate-User")
    groups = list(headers.getall("Impersonate-Group", []))
    uid = headers.get("Impersonate-Uid", "")
    extras = [key for key in headers if key.lower().startswith("impersonate-extra-")]
    if target is None:
        if groups or uid or extras:
            raise ApiError(
                500,
                "InternalError",
                "requested impersonation of groups, uid or extras without impersonating a user",
            )
        return user
    checks: list[tuple[str, str, str]] = [("", "users", target)]
    if target.startswith("system:serviceaccount:"):
        namespace, _, name = target.removeprefix("system:serviceaccount:").partition(":")
        checks = [("", "serviceaccounts", name)]
    else:
        namespace = ""
    checks += [("", "groups", group) for group in groups]
    if uid:
        checks.append(("authentication.k8s.io", "uids", uid))
    checks += [
        ("authentication.k8s.io", "userextras", key[len("impersonate-extra-") :].lower()) for key in extras
    ]
    for group, resource, name in checks:
        attrs = RequestAttributes(
            user.username,
            user.groups,
            "impersonate",
            api_group=group,
            resource=resource,
            name=name,
            namespace=namespace if resource == "serviceaccounts" else "",
        )
        allowed, reason = authorize(attrs)
        if not allowed:
            raise forbidden(attrs, reason)
    if target.startswith("system:serviceaccount:"):
        base = UserInfo.service_account(namespace, target.rsplit(":", 1)[-1])
        return UserInfo(base.username, tuple(dict.fromkeys((*base.groups, *groups))), uid)
    return UserInfo(target, tuple(dict.fromkeys((*groups, AUTHENTICATED))), uid)


class AuditLog:
    """Every authorized request: distinct attributes (unbounded but small), recent events (bounded).

    ``path`` appends one JSON object per request in the shape of ``audit.k8s.io/v1`` Events at
    level Metadata, like kube-apiserver's ``--audit-log-path``.
    """

    def __init__(self, path: str | pathlib.Path | None = None, keep: int = 10_000) -> None:
        self._counts: collections.Counter[RequestAttributes] = collections.Counter()
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._path = pathlib.Path(path) if path is not None else None

    def record(self, attrs: RequestAttributes, request_uri: str) -> None:
        """Record an authorized request when it is received (stage ``RequestReceived``)."""
        event: dict[str, Any] = {
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "stage": "RequestReceived",
            "requestURI": request_uri,
            "verb": attrs.verb,
            "user": {"username": attrs.user, "groups": list(attrs.groups)},
        }
        if attrs.resource_request:
            event["objectRef"] = {
                key: value
                for key, value in (
                    ("resource", attrs.resource),
                    ("namespace", attrs.namespace),
                    ("name", attrs.name),
                    ("apiGroup", attrs.api_group),
                    ("subresource", attrs.subresource),
                )
                if value
            }
        with self._lock:
            self._counts[attrs] += 1
            self.events.append(event)
            if self._path is not None:
                with self._path.open("a") as handle:
                    handle.write(json.dumps(event) + "\n")

    def attributes(self, user: str | None = None) -> set[RequestAttributes]:
        """The distinct requests seen (of one user, if given)."""
        with self._lock:
            return {attrs for attrs in self._counts if user is None or attrs.user == user}

    def count(self, user: str | None = None) -> int:
        with self._lock:
            return sum(n for attrs, n in self._counts.items() if user is None or attrs.user == user)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()
            self.events.clear()
