"""Where the client connects and how it proves who it is: a kubeconfig, or explicit values.

:func:`load_kubeconfig` reads the files kubectl reads (``$KUBECONFIG``, a colon-separated list
merged first-wins as kubectl merges it, else ``~/.kube/config``), picks the current context or a
named one, and returns a :class:`ClientConfig`. Supported: ``server``,
``certificate-authority``/``-data``, ``insecure-skip-tls-verify``, ``tls-server-name``,
``proxy-url``, ``token``/``tokenFile``, ``client-certificate``/``-data`` with
``client-key``/``-data``, the context's ``namespace``. Exec plugins and auth providers are
refused with a :class:`~streamsrv.client.errors.ConfigError` that names them rather than
ignored.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError


@dataclass(frozen=True)
class ClientConfig:
    """One API server and the credentials for it.

    Attributes:
        server: ``https://host:port`` (or ``http://`` for a server without TLS).
        namespace: the namespace used when a call names none.
        token: a bearer token, sent as ``Authorization: Bearer``.
        ca_data: PEM of the CA certificates to trust (``None``: the system's).
        client_cert: PEM of a client certificate (with ``client_key``) for mutual TLS.
        client_key: PEM of its private key.
        insecure_skip_tls_verify: do not check the server's certificate (never by default).
        tls_server_name: the name to check the server's certificate against, if not the host.
        proxy_url: an HTTP or SOCKS proxy for the connection (no proxy when ``None``; the
            environment's ``HTTPS_PROXY`` is not used unless given here).
        headers: extra request headers.
    """

    server: str
    namespace: str = "default"
    token: str | None = None
    ca_data: bytes | None = None
    client_cert: bytes | None = None
    client_key: bytes | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    proxy_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.server)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ConfigError(f"server {self.server!r} is not an http(s)://host[:port] URL")
        if (self.client_cert is None) != (self.client_key is None):
            raise ConfigError("a client certificate needs its key, and a key its certificate")

    @property
    def websocket_base(self) -> str:
        """The server as a ``wss://`` (or ``ws://``) URL without a trailing slash."""
        parts = urlsplit(self.server)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for this server (``None`` for ``http://``)."""
        if urlsplit(self.server).scheme != "https":
            return None
        # PROTOCOL_TLS_CLIENT verifies the certificate and the host name. The system's CA store
        # is loaded only when the kubeconfig names no CA: loading it costs about 40 ms, which
        # every exec would pay (create_default_context always loads it).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_data is not None:
            try:
                ctx.load_verify_locations(cadata=self.ca_data.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                raise ConfigError(f"the certificate authority data is not PEM: {exc}") from exc
        else:
            ctx.load_default_certs()
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.client_cert is not None and self.client_key is not None:
            _load_client_pair(ctx, self.client_cert, self.client_key)
        return ctx

    def request_headers(self) -> dict[str, str]:
        """``Authorization`` (when there is a token) and the extra headers."""
        out = dict(self.headers)
        if self.token:
            out["Authorization"] = f"Bearer {self.token}"
        return out


def _load_client_pair(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads certificates only from files: a private directory, removed at once."""
    with tempfile.TemporaryDirectory(prefix="streamsrv-client-") as tmp:
        paths = []
        for name, data in (("cert.pem", cert), ("key.pem", key)):
            path = Path(tmp) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            paths.append(str(path))
        try:
            ctx.load_cert_chain(paths[0], paths[1])
        except ssl.SSLError as exc:
            raise ConfigError(f"the client certificate or key is not usable: {exc}") from exc


def kubeconfig_paths(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The files to read: ``path``, else ``$KUBECONFIG`` (colon-separated), else
    ``~/.kube/config``."""
    if path is not None:
        return [Path(path).expanduser()]
    env = os.environ.get("KUBECONFIG", "")
    found = [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return found or [Path.home() / ".kube" / "config"]


def load_kubeconfig(
    path: str | os.PathLike[str] | None = None, *, context: str | None = None
) -> ClientConfig:
    """A :class:`ClientConfig` from kubeconfig files, as kubectl reads them.

    Args:
        path: one kubeconfig file; default ``$KUBECONFIG`` or ``~/.kube/config``.
        context: a context name; default the ``current-context``.

    Raises:
        ConfigError: no readable file, no such context/cluster/user, an unsupported
            credential (exec plugin, auth provider), or data that does not decode.
    """
    files = kubeconfig_paths(path)
    docs: list[tuple[Path, dict[str, Any]]] = []
    for file in files:
        try:
            text = file.read_text()
        except FileNotFoundError:
            if path is not None or len(files) == 1:
                raise ConfigError(f"kubeconfig {file} does not exist") from None
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read kubeconfig {file}: {exc}") from exc
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"kubeconfig {file} is not YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"kubeconfig {file} is not a mapping")
        docs.append((file, doc))
    if not docs:
        raise ConfigError(f"no kubeconfig found in {os.pathsep.join(map(str, files))}")

    current = (d.get("current-context") for _, d in docs if d.get("current-context"))
    name = context or next(current, None)
    if not name:
        raise ConfigError("the kubeconfig has no current-context; name a context")
    ctx, ctx_file = _named(docs, "contexts", "context", name)
    cluster, cluster_file = _named(docs, "clusters", "cluster", _text(ctx, "cluster", name))
    user_name = ctx.get("user")
    user, user_file = _named(docs, "users", "user", str(user_name)) if user_name else ({}, ctx_file)
    for unsupported in ("exec", "auth-provider"):
        if user.get(unsupported):
            raise ConfigError(
                f"user {user_name!r} authenticates with {unsupported!r}, which streamsrv.client "
                "does not run; use a token or a client certificate"
            )
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = _file(user_file, str(user["tokenFile"])).decode().strip()
    if user.get("username") or user.get("password"):
        raise ConfigError(f"user {user_name!r} uses basic authentication, which is not supported")
    return ClientConfig(
        server=_text(cluster, "server", name),
        namespace=str(ctx.get("namespace") or "default"),
        token=str(token) if token else None,
        ca_data=_data(cluster, cluster_file, "certificate-authority"),
        client_cert=_data(user, user_file, "client-certificate"),
        client_key=_data(user, user_file, "client-key"),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=cluster.get("tls-server-name") or None,
        proxy_url=cluster.get("proxy-url") or None,
    )


def _named(
    docs: list[tuple[Path, dict[str, Any]]], section: str, key: str, name: str
) -> tuple[dict[str, Any], Path]:
    """The first entry called ``name`` in ``section`` across the files (kubectl's merge)."""
    for file, doc in docs:
        for entry in doc.get(section) or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                body = entry.get(key) or {}
                if not isinstance(body, dict):
                    raise ConfigError(f"{section} entry {name!r} in {file} is not a mapping")
                return body, file
    raise ConfigError(f"the kubeconfig has no {key} named {name!r}")


def _text(obj: dict[str, Any], key: str, context: str) -> str:
    value = obj.get(key)
    if not value:
        raise ConfigError(f"context {context!r}: no {key} given")
    return str(value)


def _file(base: Path, name: str) -> bytes:
    """A file a kubeconfig names; relative names are relative to that kubeconfig, as kubectl
    resolves them."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base.parent / path
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def _data(obj: dict[str, Any], base: Path, key: str) -> bytes | None:
    """``KEY-data`` (base64) or the file ``KEY`` names, or None."""
    data = obj.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"{key}-data is not base64: {exc}") from exc
    if obj.get(key):
        return _file(base, str(obj[key]))
    return None


__all__ = ["ClientConfig", "kubeconfig_paths", "load_kubeconfig"]
