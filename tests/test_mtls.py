"""Optional mutual TLS (`serve --client-ca auto`): the kubeconfig carries a client
certificate; a client without one fails the handshake on every route, the stream URLs too."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Server, pod_manifest

pytestmark = pytest.mark.kubectl


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "state", runtime="process", extra=["--client-ca", "auto"])
    server.start()
    yield server
    server.stop()


def test_kubectl_and_the_pod_client_use_the_kubeconfigs_certificate(srv: Server) -> None:
    manifest = srv.state_dir / "pod.json"
    manifest.write_text(json.dumps(pod_manifest("m", {"name": "c", "image": "i",
                                                      "command": ["sleep", "1000"]})))  # fmt: skip
    r = srv.cli("pod", "run", "-f", str(manifest))
    assert r.returncode == 0, r.stderr
    for version in ("1.27", "1.33"):  # SPDY and WebSocket
        r = srv.kubectl(version, "exec", "m", "--", "echo", "ok")
        assert r.returncode == 0 and r.stdout == "ok\n", r


@pytest.mark.parametrize("path", ["/version", "/healthz", "/api/v1/pods", "/exec/x"])
def test_a_client_without_a_certificate_cannot_even_connect(srv: Server, path: str) -> None:
    ctx = ssl.create_default_context(cafile=str(srv.ca_file))  # trusts the server, no cert
    req = urllib.request.Request(srv.url + path, headers={"Authorization": f"Bearer {srv.token}"})
    with (
        pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)),
        urllib.request.urlopen(req, context=ctx, timeout=10) as resp,
    ):
        resp.read()


def test_client_ca_needs_tls(tmp_path: Path) -> None:
    srv = Server(tmp_path / "state", runtime="process",
                 extra=["--client-ca", "auto", "--insecure-http"])  # fmt: skip
    with pytest.raises(RuntimeError, match="--client-ca needs TLS"):
        srv.start()
