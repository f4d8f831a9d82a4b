"""The operator authenticates as kubectl would: tokens, token files, exec plugins, impersonation.

Against the emulated API server, which refuses anonymous and wrong credentials with 401 as a real
one does; the audit shows who each request ran as.
"""

from __future__ import annotations

import base64
import json
import pathlib
import sys
from collections.abc import Iterator

import httpx
import kopf
import pytest
import yaml
from kubernetes.config import incluster_config

from mlops_operator.credentials import (
    CredentialsError,
    Impersonation,
    connection_info,
    impersonation_of,
    load_credentials,
)
from mlops_operator.kube_client import Kube
from mlops_operator.sandbox.apiserver import ApiServerThread, Authenticator, UserInfo, write_kubeconfig
from mlops_operator.sandbox.apiserver.certificates import Certificates

OPERATOR = UserInfo.service_account("mlops-system", "mlops-operator")


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServerThread]:
    thread = ApiServerThread(authenticator=Authenticator({"admin-token": UserInfo.admin()})).start()
    try:
        yield thread
    finally:
        thread.stop()


def _kubeconfig(
    path: pathlib.Path, url: str, user: dict[str, object], ca: bytes | None = None
) -> pathlib.Path:
    cluster: dict[str, object] = {"server": url}
    if ca is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "ctx",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _users_of_namespace_lists(server: ApiServerThread) -> set[tuple[str, tuple[str, ...]]]:
    return {
        (attrs.user, attrs.groups)
        for attrs in server.emulator.audit.attributes()
        if (attrs.verb, attrs.resource) == ("list", "namespaces")
    }


def test_a_static_token_reaches_the_server(server: ApiServerThread, tmp_path: pathlib.Path) -> None:
    config = write_kubeconfig(tmp_path / "config", server.url, token="admin-token", ca=server.certificates.ca)
    names = [ns["metadata"]["name"] for ns in Kube.from_environment(str(config)).list("Namespace", None)]
    assert "default" in names


@pytest.mark.parametrize(
    "user",
    [pytest.param({}, id="no-credentials"), pytest.param({"token": "wrong"}, id="wrong-token")],
)
def test_missing_or_wrong_credentials_are_refused_with_401(
    server: ApiServerThread, tmp_path: pathlib.Path, user: dict[str, object]
) -> None:
    config = _kubeconfig(tmp_path / "config", server.url, user, server.certificates.ca)
    with pytest.raises(kopf.PermanentError, match="HTTP 401: Unauthorized"):
        Kube.from_environment(str(config)).list("Namespace", None)


def test_a_rewritten_token_file_is_read_again_after_a_401(
    server: ApiServerThread, tmp_path: pathlib.Path
) -> None:
    server.authenticator.add_token("first", OPERATOR)
    token_file = tmp_path / "token"
    token_file.write_text("first")
    kube = Kube.from_environment(
        str(
            write_kubeconfig(
                tmp_path / "config", server.url, token_file=token_file, ca=server.certificates.ca
            )
        )
    )
    assert kube.list("Namespace", None)
    server.authenticator.add_token("second", OPERATOR)
    token_file.write_text("second")
    server.authenticator.revoke("first")
    assert kube.list("Namespace", None)
    assert kube.credentials.authorization() == "Bearer second"


def _exec_plugin(tmp_path: pathlib.Path, token_file: pathlib.Path) -> dict[str, object]:
    """A client-go exec credential plugin (as aws/gke-gcloud-auth-plugin are) printing a token."""
    script = tmp_path / "plugin.py"
    script.write_text(
        "import json, pathlib, sys\n"
        f"token = pathlib.Path({str(token_file)!r}).read_text().strip()\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1', 'kind': 'ExecCredential',"
        " 'status': {'token': token}}))\n"
    )
    return {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(script)],
            "interactiveMode": "Never",
        }
    }


def test_an_exec_plugin_token_is_used_and_fetched_again_after_a_401(
    server: ApiServerThread, tmp_path: pathlib.Path
) -> None:
    server.authenticator.add_token("exec-1", OPERATOR)
    plugin_output = tmp_path / "current"
    plugin_output.write_text("exec-1")
    config = _kubeconfig(
        tmp_path / "config", server.url, _exec_plugin(tmp_path, plugin_output), server.certificates.ca
    )
    kube = Kube.from_environment(str(config))
    assert kube.list("Namespace", None)
    server.authenticator.add_token("exec-2", OPERATOR)
    plugin_output.write_text("exec-2")
    server.authenticator.revoke("exec-1")
    assert kube.list("Namespace", None)
    info = connection_info(load_credentials(str(config)))
    assert (info.scheme, info.token) == ("Bearer", "exec-2")  # kopf's watches get the same token


def test_impersonation_fields_are_sent_and_honoured(server: ApiServerThread, tmp_path: pathlib.Path) -> None:
    user = {
        "token": "admin-token",
        "as": "jane",
        "as-groups": ["team-a", "auditors"],
        "as-user-extra": {"reason": ["oncall"]},
    }
    config = _kubeconfig(tmp_path / "config", server.url, user, server.certificates.ca)
    Kube.from_environment(str(config)).list("Namespace", None)
    assert ("jane", ("team-a", "auditors", "system:authenticated")) in _users_of_namespace_lists(server)


def test_impersonation_needs_the_right_to_impersonate(
    server: ApiServerThread, tmp_path: pathlib.Path
) -> None:
    server.authenticator.add_token("plain-user", UserInfo("bob", ("system:authenticated",)))
    config = _kubeconfig(
        tmp_path / "config", server.url, {"token": "plain-user", "as": "jane"}, server.certificates.ca
    )
    with pytest.raises(
        kopf.PermanentError, match='HTTP 403: users "jane" is forbidden: User "bob" cannot impersonate'
    ):
        Kube.from_environment(str(config)).list("Namespace", None)


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        pytest.param({"token": "t"}, None, id="none"),
        pytest.param({"as": "jane"}, Impersonation("jane"), id="user"),
        pytest.param(
            {"as": "jane", "as-uid": "42", "as-groups": ["a", "b"], "as-user-extra": {"scopes": ["x", "y"]}},
            Impersonation("jane", "42", ("a", "b"), (("scopes", "x"), ("scopes", "y"))),
            id="everything",
        ),
    ],
)
def test_impersonation_of_a_kubeconfig_user(user: dict[str, object], expected: Impersonation | None) -> None:
    assert impersonation_of(user) == expected


def test_impersonated_groups_without_a_user_are_refused() -> None:
    with pytest.raises(CredentialsError, match="need as"):
        impersonation_of({"as-groups": ["a"]})


def test_impersonation_headers_repeat_per_group() -> None:
    headers = Impersonation("jane", "", ("a", "b"), (("scopes", "x"),)).headers()
    assert headers == [
        ("Impersonate-User", "jane"),
        ("Impersonate-Group", "a"),
        ("Impersonate-Group", "b"),
        ("Impersonate-Extra-scopes", "x"),
    ]


def test_kubeconfig_lists_merge_with_the_first_file_winning(
    server: ApiServerThread, tmp_path: pathlib.Path
) -> None:
    first = write_kubeconfig(tmp_path / "first", server.url, token="admin-token", ca=server.certificates.ca)
    second = _kubeconfig(tmp_path / "second", "http://127.0.0.1:9", {"token": "other"})
    credentials = load_credentials(f"{first}:{second}")
    assert credentials.configuration.host == server.url
    assert credentials.authorization() == "Bearer admin-token"


def test_in_cluster_service_account_token_is_read_from_its_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token-1")
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    credentials = load_credentials()
    assert credentials.configuration.host == "https://10.96.0.1:443"
    assert credentials.authorization() == "bearer sa-token-1"
    assert credentials.source == "in-cluster service account"
    token.write_text("sa-token-2")  # the kubelet rotated it: a reload (after a 401) reads it again
    assert load_credentials().authorization() == "bearer sa-token-2"


def test_a_client_certificate_authenticates_as_its_subject(
    server: ApiServerThread, tmp_path: pathlib.Path
) -> None:
    """Kubernetes' x509 authenticator: the common name is the user, each organization a group."""
    cert = server.certificates.client_certificate("carol", ("team-c",))
    config = write_kubeconfig(
        tmp_path / "config", server.url, client_certificate=cert, ca=server.certificates.ca
    )
    credentials = load_credentials(str(config))
    assert credentials.authorization() is None
    Kube(lambda: credentials).list("Namespace", None)
    assert ("carol", ("team-c", "system:authenticated")) in _users_of_namespace_lists(server)
    info = connection_info(credentials)  # kopf gets the same certificate and key
    assert pathlib.Path(str(info.certificate_path)).read_bytes() == cert[0]
    assert pathlib.Path(str(info.private_key_path)).read_bytes() == cert[1]


def test_a_certificate_from_another_ca_is_refused(server: ApiServerThread, tmp_path: pathlib.Path) -> None:
    stranger = Certificates.generate().client_certificate("mallory", ("system:masters",))
    config = write_kubeconfig(
        tmp_path / "config", server.url, client_certificate=stranger, ca=server.certificates.ca
    )
    with pytest.raises(kopf.TemporaryError, match="unreachable"):  # the TLS handshake fails
        Kube.from_environment(str(config)).list("Namespace", None)


def test_the_api_server_answers_401_in_kubernetes_shape(server: ApiServerThread) -> None:

    tls = server.certificates.client_context()
    response = httpx.get(server.url + "/api/v1/namespaces", verify=tls, timeout=5)
    assert response.status_code == 401
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Unauthorized",
        "reason": "Unauthorized",
        "code": 401,
    }
    assert json.loads(httpx.get(server.url + "/version", verify=tls, timeout=5).text)["code"] == 401


def test_anonymous_requests_may_read_only_public_info_where_anonymous_auth_is_on() -> None:

    with ApiServerThread(authenticator=Authenticator({"t": UserInfo.admin()}, anonymous=True)) as server:
        tls = server.certificates.client_context()
        assert httpx.get(server.url + "/version", verify=tls, timeout=5).status_code == 200
        forbidden = httpx.get(
            server.url + "/apis/mlops.dev/v1alpha1/namespaces/holdout/trainingjobs/x", verify=tls, timeout=5
        )
        assert forbidden.status_code == 403
        assert forbidden.json()["reason"] == "Forbidden"
        assert forbidden.json()["message"] == (
            'trainingjobs.mlops.dev "x" is forbidden: User "system:anonymous" cannot get resource '
            '"trainingjobs" in API group "mlops.dev" in the namespace "holdout"'
        )
        wrong = httpx.get(
            server.url + "/version", headers={"Authorization": "Bearer nope"}, verify=tls, timeout=5
        )
        assert wrong.status_code == 401  # a wrong credential is never downgraded to anonymous


def test_token_auth_file_is_kube_apiservers_csv(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text('# comment\nabc,alice,1,"team-a,team-b"\ndef,bob,2\n')
    authenticator = Authenticator.from_token_file(path)
    assert authenticator.authenticate("Bearer abc") == UserInfo(
        "alice", ("team-a", "team-b", "system:authenticated"), "1"
    )
    assert authenticator.authenticate("Bearer def").groups == ("system:authenticated",)
