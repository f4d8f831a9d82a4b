"""The emulated Kubernetes API server of the sandbox and of the tests.

Built on kmock's ``KubernetesEmulator`` (subclassed in :mod:`.emulator`), it behaves like a real
API server wherever kopf, kubectl and the ``kubernetes`` client look: see :class:`ApiEmulator`.

Run it with ``EmulatedApiServer.running(...)`` (async), ``ApiServerThread(...)`` (sync), or
``python -m mlops_operator.sandbox.apiserver --port 0 --crds crds/ --url-file url.txt``.
"""

from .catalog import ResourceType
from .emulator import ApiEmulator
from .errors import ApiError
from .server import ApiServerThread, EmulatedApiServer, write_kubeconfig

__all__ = [
    "ApiEmulator",
    "ApiError",
    "ApiServerThread",
    "EmulatedApiServer",
    "ResourceType",
    "write_kubeconfig",
]
