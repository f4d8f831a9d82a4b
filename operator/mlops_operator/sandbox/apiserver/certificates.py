"""The emulated API server's TLS: a cluster CA, a serving certificate, and client certificates.

A real API server speaks only HTTPS, and real clients rely on it: kubectl (client-go) does not
send a bearer token to a plain ``http://`` server at all. So the emulated server serves TLS with
a certificate from its own CA, every kubeconfig it writes carries that CA, and client
certificates signed by the CA authenticate as Kubernetes' x509 authenticator reads them: the
subject's common name is the user name, each organization a group.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import pathlib
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)
CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE = "ca.crt", "ca.key", "apiserver.crt", "apiserver.key"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str, organizations: tuple[str, ...] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    return x509.Name([*attributes, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclasses.dataclass(frozen=True)
class Certificates:
    """PEM bytes: the CA (certificate and key), and the server's certificate and key."""

    ca: bytes
    ca_key: bytes
    cert: bytes
    key: bytes

    @classmethod
    def generate(cls, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certificates:
        """A fresh CA and a serving certificate for ``hosts`` (IP addresses or DNS names)."""
        now = dt.datetime.now(dt.UTC)
        ca_key = _key()
        ca_name = _name("mlops-sandbox-ca")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("kube-apiserver"))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca=ca.public_bytes(serialization.Encoding.PEM),
            ca_key=_pem_key(ca_key),
            cert=cert.public_bytes(serialization.Encoding.PEM),
            key=_pem_key(key),
        )

    def client_certificate(self, username: str, groups: tuple[str, ...] = ()) -> tuple[bytes, bytes]:
        """A client certificate (and key) that authenticates as ``username`` in ``groups``."""
        ca = x509.load_pem_x509_certificate(self.ca)
        ca_key = serialization.load_pem_private_key(self.ca_key, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        now = dt.datetime.now(dt.UTC)
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(username, groups))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def save(self, directory: str | pathlib.Path) -> None:
        """Write the four PEM files (keys with mode 0600)."""
        target = pathlib.Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name, data, mode in (
            (CA_FILE, self.ca, 0o644),
            (CA_KEY_FILE, self.ca_key, 0o600),
            (CERT_FILE, self.cert, 0o644),
            (KEY_FILE, self.key, 0o600),
        ):
            path = target / name
            path.touch(mode=mode)
            path.chmod(mode)
            path.write_bytes(data)

    @classmethod
    def load_or_generate(cls, directory: str | pathlib.Path) -> Certificates:
        """The certificates kept in ``directory``, made there first if missing (a sandbox resumes)."""
        source = pathlib.Path(directory)
        files = [source / name for name in (CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE)]
        if all(path.exists() for path in files):
            ca, ca_key, cert, key = (path.read_bytes() for path in files)
            return cls(ca=ca, ca_key=ca_key, cert=cert, key=key)
        certificates = cls.generate()
        certificates.save(source)
        return certificates

    def server_context(self) -> ssl.SSLContext:
        """TLS for the server: its certificate, and client certificates from the CA verified if sent."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = pathlib.Path(tmp) / "cert.pem", pathlib.Path(tmp) / "key.pem"
            cert.write_bytes(self.cert)
            key.write_bytes(self.key)
            context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=self.ca.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # a client may also authenticate with a token
        return context

    def client_context(self) -> ssl.SSLContext:
        """TLS for a client of the server: trust the CA."""
        return ssl.create_default_context(cadata=self.ca.decode())


def identity_of(peercert: dict[str, object] | None) -> tuple[str, tuple[str, ...]] | None:
    """(user, groups) from a verified client certificate, as ``ssl`` reports it: CN and O."""
    if not peercert:
        return None
    common_name, organizations = None, []
    for rdn in peercert.get("subject", ()):  # type: ignore[attr-defined]
        for key, value in rdn:
            if key == "commonName":
                common_name = value
            elif key == "organizationName":
                organizations.append(value)
    if not common_name:
        return None
    return str(common_name), tuple(str(org) for org in organizations)
