"""Kubeconfig reading as kubectl does it, and the TLS context the client builds from it."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamsrv.client.config import ClientConfig, load_kubeconfig
from streamsrv.client.errors import ConfigError


def write(path: Path, **sections: Any) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", **sections}
    path.write_text(yaml.safe_dump(doc))
    return path


def config_doc(name: str, server: str, user: dict[str, Any], **cluster: Any) -> dict[str, Any]:
    return {
        "clusters": [{"name": name, "cluster": {"server": server, **cluster}}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }


def test_current_context_token_namespace_and_ca_data(tmp_path: Path) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n"
    doc = config_doc(
        "a", "https://127.0.0.1:6443", {"token": "t0k"},
        **{"certificate-authority-data": base64.b64encode(ca).decode()},
    )  # fmt: skip
    doc["contexts"][0]["context"]["namespace"] = "ns1"
    path = write(tmp_path / "kc", **doc, **{"current-context": "a"})
    cfg = load_kubeconfig(path)
    assert (cfg.server, cfg.token, cfg.namespace, cfg.ca_data) == (
        "https://127.0.0.1:6443", "t0k", "ns1", ca,
    )  # fmt: skip
    assert cfg.websocket_base == "wss://127.0.0.1:6443"
    assert cfg.request_headers() == {"Authorization": "Bearer t0k"}


def test_named_context_files_relative_to_the_kubeconfig_and_token_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ca.pem").write_bytes(b"CA")
    (tmp_path / "sub" / "token").write_text("from-file\n")
    doc = config_doc(
        "b", "http://localhost:8080/prefix/", {"tokenFile": "sub/token"},
        **{"certificate-authority": "sub/ca.pem", "tls-server-name": "api.example"},
    )  # fmt: skip
    path = write(tmp_path / "kc", **doc)  # no current-context: a name is needed
    with pytest.raises(ConfigError, match="current-context"):
        load_kubeconfig(path)
    cfg = load_kubeconfig(path, context="b")
    assert (cfg.token, cfg.ca_data, cfg.tls_server_name) == ("from-file", b"CA", "api.example")
    assert cfg.websocket_base == "ws://localhost:8080/prefix"
    assert cfg.ssl_context() is None  # plain http


def test_kubeconfig_env_merges_first_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = write(tmp_path / "one", **config_doc("x", "https://first:1", {"token": "1"}),
                  **{"current-context": "x"})  # fmt: skip
    second = write(tmp_path / "two", **config_doc("x", "https://second:2", {"token": "2"}),
                   **{"current-context": "y"})  # fmt: skip
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    cfg = load_kubeconfig()
    assert (cfg.server, cfg.token) == ("https://first:1", "1")


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ({"exec": {"command": "aws"}}, "'exec'"),
        ({"auth-provider": {"name": "oidc"}}, "'auth-provider'"),
        ({"username": "u", "password": "p"}, "basic authentication"),
        ({"client-certificate-data": base64.b64encode(b"c").decode()}, "needs its key"),
        ({"client-key-data": "%%%"}, "not base64"),
    ],
)
def test_credentials_it_cannot_use_are_refused_by_name(
    tmp_path: Path, user: dict[str, Any], message: str
) -> None:
    doc = config_doc("c", "https://h:1", user)
    path = write(tmp_path / "kc", **doc, **{"current-context": "c"})
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "does not exist"),
        ("[1, 2", "not YAML"),
        ("- a list", "not a mapping"),
        ("current-context: nope\n", "no context named 'nope'"),
    ],
)
def test_unusable_files_say_why(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "kc"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_kubeconfig(path)


def test_server_must_be_an_http_url() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        ClientConfig(server="127.0.0.1:6443")


def test_tls_context_verifies_by_default_and_skips_only_when_told(tmp_path: Path) -> None:
    from streamsrv.certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path / "ca")
    pem = ca.cert_path.read_bytes()
    strict = ClientConfig(server="https://127.0.0.1:1", ca_data=pem).ssl_context()
    assert strict is not None
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    loose = ClientConfig(server="https://127.0.0.1:1", insecure_skip_tls_verify=True)
    ctx = loose.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE
    with pytest.raises(ConfigError, match="not PEM"):
        ClientConfig(server="https://h:1", ca_data=b"garbage").ssl_context()


def test_client_certificate_is_loaded_and_no_key_file_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamsrv.certs import CertificateAuthority

    cert, key = CertificateAuthority(tmp_path / "ca").client_cert()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    cfg = ClientConfig(server="https://h:1", client_cert=cert, client_key=key)
    assert cfg.ssl_context() is not None
    assert list(scratch.iterdir()) == []  # the key was written 0600 and removed at once
    with pytest.raises(ConfigError, match="not usable"):
        ClientConfig(server="https://h:1", client_cert=cert, client_key=b"junk").ssl_context()
