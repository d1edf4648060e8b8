"""The pure parts of the containerd client: the rootfs chain, user ids, the OCI spec."""

from __future__ import annotations

import hashlib

import pytest

from streamsrv.errors import BackendError
from streamsrv.runtime import ctdclient


def test_chain_id_is_the_oci_chain() -> None:
    a, b, c = ("sha256:" + hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"c"))
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert ctdclient.chain_id([a]) == a
    assert ctdclient.chain_id([a, b, c]) == abc
    with pytest.raises(BackendError):
        ctdclient.chain_id([])


@pytest.mark.parametrize(
    ("user", "ids"),
    [("", (0, 0)), ("1000", (1000, 0)), ("1000:50", (1000, 50)), ("nobody", (0, 0))],
)
def test_user_ids(user: str, ids: tuple[int, int]) -> None:
    assert ctdclient.user_ids(user) == ids


def test_spec_joins_namespaces_and_binds_volumes() -> None:
    process = ctdclient.process_spec(
        ["sh"], [("PATH", "/bin"), ("A", "1"), ("A", "2")], "", "", terminal=True
    )
    assert process["env"] == ["PATH=/bin", "A=2"]  # later wins, as the kubelet's
    assert process["cwd"] == "/" and process["terminal"] is True
    spec = ctdclient.oci_spec(
        process,
        cgroup="/ns/id",
        hostname=None,
        namespaces=[{"type": "network", "path": "/proc/1/ns/net"}, {"type": "mount"}],
        binds=[("/host/dir", "/data", True)],
        own_network=False,
    )
    assert spec["linux"]["namespaces"][0] == {"type": "network", "path": "/proc/1/ns/net"}
    assert "hostname" not in spec
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount["type"] == "bind"  # no sysfs of its own without a network namespace
    data = next(m for m in spec["mounts"] if m["destination"] == "/data")
    assert data["source"] == "/host/dir" and "ro" in data["options"]
