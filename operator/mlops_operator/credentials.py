"""Who the operator is to the API server: the same identity kubectl would use, loaded once.

In a pod, the ServiceAccount (its token file, which the kubelet rotates); elsewhere the current
context of ``$KUBECONFIG`` (every file of the list, merged as kubectl merges them) or
``~/.kube/config``. The ``kubernetes`` client does the loading: static bearer tokens and
``tokenFile``, client certificates, exec credential plugins (EKS, GKE, AKS), the ``oidc`` and
``gcp`` auth providers. It does not read the kubeconfig's impersonation fields (``as``,
``as-uid``, ``as-groups``, ``as-user-extra``), so this module reads them and turns them into the
``Impersonate-*`` headers that kubectl sends.

Both of the operator's clients take their identity from here: kopf's watches (through the login
handler, :func:`connection_info`) and the operator's own client (:class:`mlops_operator.kube_client.Kube`).
When the API server answers 401, both load the credentials again (kopf re-runs the login handler;
``Kube`` calls :func:`load_credentials`), which re-reads a rotated token file and re-runs an exec
plugin whose token expired.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes
import yaml

DEFAULT_KUBECONFIG = "~/.kube/config"


class CredentialsError(Exception):
    """Neither an in-cluster identity nor a usable kubeconfig."""


@dataclasses.dataclass(frozen=True)
class Impersonation:
    """The kubeconfig's ``as*`` fields: act as another user (kubectl ``--as``, ``--as-group``)."""

    user: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()

    def headers(self) -> list[tuple[str, str]]:
        """The ``Impersonate-*`` headers, a group or extra value per header (they repeat)."""
        headers = [("Impersonate-User", self.user)]
        if self.uid:
            headers.append(("Impersonate-Uid", self.uid))
        headers += [("Impersonate-Group", group) for group in self.groups]
        headers += [(f"Impersonate-Extra-{key}", value) for key, value in self.extra]
        return headers


@dataclasses.dataclass(frozen=True)
class Credentials:
    """A loaded identity: the client configuration, impersonation, and where it came from."""

    configuration: kubernetes.client.Configuration
    impersonation: Impersonation | None
    source: str

    def authorization(self) -> str | None:
        """The ``Authorization`` header value now (a refresh hook may reload an expired token)."""
        config = self.configuration
        token: str | None = config.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            return token
        if config.username or config.password:
            basic: str = config.get_basic_auth_token()
            return basic
        return None


def impersonation_of(user: Mapping[str, Any]) -> Impersonation | None:
    """Read a kubeconfig ``user`` entry's impersonation fields (pure)."""
    name = user.get("as")
    if not name:
        if user.get("as-groups") or user.get("as-uid") or user.get("as-user-extra"):
            # kubectl refuses this too: groups without a user mean nothing to impersonate.
            raise CredentialsError("kubeconfig: as-groups, as-uid or as-user-extra need as (the user)")
        return None
    extra = tuple(
        (key, str(value))
        for key, values in sorted((user.get("as-user-extra") or {}).items())
        for value in (values if isinstance(values, list) else [values])
    )
    return Impersonation(
        user=str(name),
        uid=str(user.get("as-uid") or ""),
        groups=tuple(str(group) for group in user.get("as-groups") or []),
        extra=extra,
    )


def _kubeconfig_paths(kubeconfig: str | None) -> str:
    return kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser(DEFAULT_KUBECONFIG)


def _current_context(paths: str, context: str | None) -> tuple[str | None, Mapping[str, Any]]:
    """The context kubectl would use and its ``user`` entry, merging the files as kubectl does.

    The first file that sets a value wins, ``current-context`` included; the ``kubernetes``
    client lets the *last* file's ``current-context`` win, so the caller passes this one on.
    """
    current: str | None = None
    contexts: dict[str, Any] = {}
    users: dict[str, Any] = {}
    for path in paths.split(os.pathsep):
        if not path or not os.path.exists(os.path.expanduser(path)):
            continue
        with open(os.path.expanduser(path)) as handle:
            config = yaml.safe_load(handle) or {}
        current = current or config.get("current-context")
        for entry in config.get("contexts") or []:
            contexts.setdefault(entry.get("name"), entry.get("context") or {})
        for entry in config.get("users") or []:
            users.setdefault(entry.get("name"), entry.get("user") or {})
    chosen = context or current
    user_name = contexts.get(chosen or "", {}).get("user")
    return chosen, dict(users.get(user_name) or {})


def load_credentials(kubeconfig: str | None = None, context: str | None = None) -> Credentials:
    """The operator's identity: in-cluster when in a pod, else the kubeconfig (read now, not at import).

    ``kubeconfig`` may be a list of paths separated like ``$KUBECONFIG``; without it,
    ``$KUBECONFIG`` as it is now (the ``kubernetes`` client reads it once, at import), then
    ``~/.kube/config``.
    """
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and context is None:
        try:
            # try_refresh_token: re-read the projected token file every minute, as client-go does.
            kubernetes.config.load_incluster_config(
                client_configuration=configuration, try_refresh_token=True
            )
            return Credentials(configuration, None, "in-cluster service account")
        except kubernetes.config.ConfigException:
            pass
    paths = _kubeconfig_paths(kubeconfig)
    try:
        chosen, user = _current_context(paths, context)
        kubernetes.config.load_kube_config(
            config_file=paths, context=chosen, client_configuration=configuration, persist_config=False
        )
    except (kubernetes.config.ConfigException, OSError, ValueError, yaml.YAMLError) as exc:
        raise CredentialsError(
            f"no in-cluster service account and no usable kubeconfig at {paths}: {exc}"
        ) from exc
    return Credentials(configuration, impersonation_of(user), f"kubeconfig {paths} (context {chosen})")


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """The same identity for kopf's watches (what ``kopf.login_via_client`` does, minus the globals).

    kopf 1.45 cannot send extra headers, so impersonation does not reach its watch streams:
    they run as the authenticated identity, while every call of the operator's own client
    impersonates. The caller logs that.
    """
    config = credentials.configuration
    header = credentials.authorization()
    scheme, token = None, None
    if header and not header.lower().startswith("basic "):
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )
