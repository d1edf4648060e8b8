"""A pod network that lives in a network namespace a test makes, and vanishes with it.

The CNI plugins run inside that namespace (``--cni-netns``), so the bridge, the host end of
every pod's interface and every address stay there: nothing is added to the machine's own
network, and nothing is sent outside loopback and that namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import missing

CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
SUBNET_PREFIX = "10.251.0."


@dataclass
class PodNetwork:
    netns: Path  # where the plugins run (/var/run/netns/NAME)
    conf_dir: Path
    ipam_dir: Path  # host-local's dataDir
    bridge: str
    name: str

    def leases(self) -> list[str]:
        """host-local's lease files: one per address in use."""
        store = self.ipam_dir / self.name
        if not store.is_dir():
            return []
        return sorted(p.name for p in store.iterdir() if p.name.startswith(SUBNET_PREFIX))

    def in_netns(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", f"--net={self.netns}", "--", *cmd], capture_output=True, text=True
        )

    def server_args(self) -> list[str]:
        return [
            "--cni-conf-dir", str(self.conf_dir), "--cni-bin-dir", str(CNI_BIN),
            "--cni-netns", str(self.netns),
        ]  # fmt: skip


def require_cni() -> None:
    if os.geteuid() != 0:
        missing("CNI tests need root (network namespaces)")
    if not (CNI_BIN / "bridge").exists() or not (CNI_BIN / "host-local").exists():
        missing(
            "CNI plugins not in /usr/lib/cni (Debian containernetworking-plugins); run scripts/test"
        )
    if not shutil.which("nsenter") or not shutil.which("ip"):
        missing("nsenter and ip are needed for CNI tests")


def write_config(conf_dir: Path, name: str, bridge: str, ipam_dir: Path, subnet: str) -> None:
    conf_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": str(ipam_dir),
                },
            },
            {"type": "loopback"},
        ],
    }
    (conf_dir / "10-streamsrv-test.conflist").write_text(json.dumps(config, indent=1))


@contextlib.contextmanager
def pod_network(directory: Path, *, subnet: str = SUBNET_PREFIX + "0/24") -> Iterator[PodNetwork]:
    """A fresh network namespace and a bridge + host-local + loopback CNI config for it."""
    require_cni()
    tag = uuid.uuid4().hex[:8]
    ns_name = f"ssv-cni-{tag}"
    subprocess.run(["ip", "netns", "add", ns_name], check=True)
    try:
        net = PodNetwork(
            netns=Path("/var/run/netns") / ns_name,
            conf_dir=directory / "net.d",
            ipam_dir=directory / "ipam",
            bridge=f"ssvbr{tag[:6]}",
            name=f"ssv-test-{tag}",
        )
        write_config(net.conf_dir, net.name, net.bridge, net.ipam_dir, subnet)
        yield net
    finally:
        subprocess.run(["ip", "netns", "del", ns_name], check=False)
