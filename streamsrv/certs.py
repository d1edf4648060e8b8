"""The gateway's own CA and serving certificate, and the kubeconfig that trusts them.

kubectl sends no bearer token to a plain-http server (docs/protocol.md appendix G.12), so the
gateway serves https by default. The CA is generated once and kept in the state directory across
restarts; the serving certificate is re-issued when the names it must cover change or it nears
expiry. Private keys are written with mode 0600.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import ssl
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .files import write_private

_CA_DAYS = 3650
_CERT_DAYS = 365


def private_dir(path: Path) -> Path:
    """Make ``path`` (and its parents) if needed; ``path`` itself is left 0700 when it is ours:
    it holds the CA key, the token and the kubeconfig."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        path.chmod(0o700)
    return path


def load_token(path: Path, *, rotate: bool = False) -> str:
    """The gateway's bearer token, kept in ``path`` (0600) across restarts so that a copied
    kubeconfig keeps working; ``rotate`` makes a new one (every copy stops working)."""
    if not rotate:
        with contextlib.suppress(FileNotFoundError):
            token = path.read_text().strip()
            if len(token) >= 32:
                return token
    token = new_token()
    write_private(path, token.encode() + b"\n")
    return token


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san(names: list[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


class CertificateAuthority:
    """A CA under ``state_dir`` (``ca.crt``, ``ca.key``), created on first use."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        self.cert_path = state_dir / "ca.crt"
        self.key_path = state_dir / "ca.key"
        private_dir(self.dir)
        if self.cert_path.exists() and self.key_path.exists():
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self.key = key
        else:
            self._create()

    def _create(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        # A name of its own: a client that trusts several streamsrv CAs (a gateway fronting
        # several `streamsrv cri` nodes) finds each certificate's issuer by its name, and with
        # one shared name it tried the wrong CA ("certificate signature failure").
        cn = f"streamsrv CA {secrets.token_hex(4)}"
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = _now()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        write_private(self.key_path, _key_pem(self.key))
        write_private(self.cert_path, self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def serving_cert(self, names: list[str]) -> tuple[Path, Path]:
        """Paths of a server certificate for ``names``, issued now if the kept one won't do."""
        cert_path, key_path = self.dir / "server.crt", self.dir / "server.key"
        wanted = set(_san(names))
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                have = set(san.value)
            except x509.ExtensionNotFound:
                have = set()
            fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=7)
            if wanted <= have and fresh and cert.issuer == self.cert.subject:
                return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "streamsrv")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(list(wanted)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        write_private(key_path, _key_pem(key))
        write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def client_cert(self, name: str = "streamsrv-user") -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a client certificate for the kubeconfig's user,
        issued now if the kept one (``client.crt``, ``client.key``) won't do."""
        cert_path, key_path = self.dir / "client.crt", self.dir / "client.key"
        if cert_path.exists() and key_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            fresh = cert.not_valid_after_utc - _now() > dt.timedelta(days=7)
            if fresh and cert.issuer == self.cert.subject:
                return cert_path.read_bytes(), key_path.read_bytes()
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_CERT_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_pem, key_pem = cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)
        write_private(key_path, key_pem)
        write_private(cert_path, cert_pem)
        return cert_pem, key_pem


def server_ssl_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ with ``cert``; with ``client_ca``, every client must present a certificate it
    signed (mutual TLS: the handshake fails without one)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    # Upgrades (SPDY, WebSocket) need HTTP/1.1; never offer h2.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def new_token() -> str:
    return secrets.token_urlsafe(32)


def write_kubeconfig(
    path: Path,
    server: str,
    token: str,
    ca_pem: bytes | None,
    client: tuple[bytes, bytes] | None = None,
) -> None:
    """A kubeconfig with one cluster, user and context named ``streamsrv``; ``client`` is a
    (certificate, key) PEM pair the user presents (mutual TLS)."""
    cluster: dict[str, object] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    user: dict[str, str] = {"token": token}
    if client is not None:
        user["client-certificate-data"] = base64.b64encode(client[0]).decode()
        user["client-key-data"] = base64.b64encode(client[1]).decode()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "streamsrv", "cluster": cluster}],
        "users": [{"name": "streamsrv", "user": user}],
        "contexts": [
            {
                "name": "streamsrv",
                "context": {"cluster": "streamsrv", "user": "streamsrv", "namespace": "default"},
            }
        ],
        "current-context": "streamsrv",
    }
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(path, yaml.safe_dump(doc, sort_keys=False).encode())
