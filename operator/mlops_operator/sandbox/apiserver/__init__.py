"""The emulated Kubernetes API server of the sandbox and of the tests.

Built on kmock's ``KubernetesEmulator`` (subclassed in :mod:`.kmock_adapter`, the one module that
touches kmock's internals), it behaves like a real API server wherever kopf, kubectl and the
``kubernetes`` client look: see :class:`ApiEmulator` and the modules its docstring lists.

It authenticates every request with a bearer token and audits who asked for what
(:mod:`.authentication`): nothing gets in anonymously, as on a real cluster.

Run it with ``EmulatedApiServer.running(...)`` (async), ``ApiServerThread(...)`` (sync), or
``python -m mlops_operator.sandbox.apiserver --port 0 --crds crds/ --url-file url.txt``.
"""

from .authentication import AuditLog, Authenticator, RequestAttributes, UserInfo
from .catalog import ResourceType
from .emulator import ApiEmulator
from .errors import ApiError
from .server import (
    SANDBOX_IDENTITIES,
    ApiServerThread,
    EmulatedApiServer,
    sandbox_authenticator,
    sandbox_tokens,
    write_kubeconfig,
    write_token_auth_file,
)

__all__ = [
    "SANDBOX_IDENTITIES",
    "ApiEmulator",
    "ApiError",
    "ApiServerThread",
    "AuditLog",
    "Authenticator",
    "EmulatedApiServer",
    "RequestAttributes",
    "ResourceType",
    "UserInfo",
    "sandbox_authenticator",
    "sandbox_tokens",
    "write_kubeconfig",
    "write_token_auth_file",
]
