"""The CNI network manager (streamsrv.runtime.cni): with fake plugins (shell scripts), then with
Debian's real plugins (bridge, host-local, loopback) inside network namespaces the tests create.

The real-plugin tests never touch this machine's own network namespace: the bridge and the host
ends of the veths live in a "host" namespace H (``plugin_netns``), the pods in P1 and P2, all
made with ``ip netns add`` under unique names and deleted by the fixture, also on failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from streamsrv.errors import BackendError
from streamsrv.runtime.cni import MAX_OUTPUT, Attachment, CniError, CniNetwork
from tests.conftest import host_processes, missing

POD = {"pod_name": "web-0", "pod_namespace": "default", "pod_uid": "0f1e2d3c-uid"}

# -- fake plugins -------------------------------------------------------------------------------


def result_of(name: str, *addresses: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": name}],
        "ips": [{"address": a, "interface": 0} for a in addresses or ("10.0.0.1/24",)],
    }


@dataclass
class Fake:
    """A sandbox for fake plugins: their bin dir, a conf dir, the state dir and a call log."""

    root: Path

    def __post_init__(self) -> None:
        for d in (self.bin, self.conf, self.log):
            d.mkdir(parents=True, exist_ok=True)
        self.netns.write_text("")  # fake plugins only pass the path around

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def conf(self) -> Path:
        return self.root / "net.d"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "log"

    @property
    def netns(self) -> Path:
        return self.root / "netns"

    def plugin(
        self,
        name: str,
        body: str | None = None,
        *,
        result: dict[str, Any] | None = None,
        where: Path | None = None,
    ) -> None:
        """A plugin that logs its call (command, stdin, exact environment), then runs ``body``
        (default: print ``result`` on ADD, nothing otherwise)."""
        if body is None:
            printed = json.dumps(result or result_of(name))
            body = f"[ \"$CNI_COMMAND\" = ADD ] && printf '%s' '{printed}'\nexit 0"
        script = f"""#!/bin/sh
input=$(cat)
printf '{{"plugin":"{name}","command":"%s","stdin":%s}}\\n' "$CNI_COMMAND" "$input" \
    >> {self.log}/calls.jsonl
tr '\\0' '\\n' < /proc/$$/environ > {self.log}/{name}.$CNI_COMMAND.env
{body}
"""
        path = (where or self.bin) / name
        path.write_text(script)
        path.chmod(0o755)

    def config(self, *types: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
        config = {
            "cniVersion": version,
            "name": "testnet",
            "plugins": [{"type": t, "extra": i} for i, t in enumerate(types)],
            **extra,
        }
        self.write("10-test.conflist", config)
        return config

    def write(self, name: str, content: Any) -> None:
        text = content if isinstance(content, str) else json.dumps(content)
        (self.conf / name).write_text(text)

    def calls(self) -> list[dict[str, Any]]:
        path = self.log / "calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def steps(self) -> list[str]:
        return [f"{c['plugin']} {c['command']}" for c in self.calls()]

    def env(self, plugin: str, command: str) -> dict[str, str]:
        lines = (self.log / f"{plugin}.{command}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)

    def network(self, **kwargs: Any) -> CniNetwork:
        kwargs.setdefault("bin_dirs", (self.bin,))
        kwargs.setdefault("conf_dir", self.conf)
        return CniNetwork(self.state, **kwargs)


@pytest.fixture
def fake(tmp_path: Path) -> Fake:
    return Fake(tmp_path)


def cid() -> str:
    return uuid.uuid4().hex


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_add_runs_the_chain_in_order_passing_each_result_on(fake: Fake) -> None:
    a, b = result_of("a", "10.0.0.2/24"), result_of("b", "10.0.0.3/24")
    c = result_of("c", "fd00::5/64", "10.0.0.5/24")
    for name, result in (("a", a), ("b", b), ("c", c)):
        fake.plugin(name, result=result)
    config = fake.config("a", "b", "c")
    net = fake.network()
    container = cid()

    attachment = await net.add(container, str(fake.netns), **POD)

    assert attachment is not None
    assert fake.steps() == ["a ADD", "b ADD", "c ADD"]
    stdins = [call["stdin"] for call in fake.calls()]
    assert "prevResult" not in stdins[0]
    assert stdins[1]["prevResult"] == a and stdins[2]["prevResult"] == b
    for index, stdin in enumerate(stdins):
        # the plugin's own object, with the list's name and version
        assert stdin["name"] == "testnet" and stdin["cniVersion"] == "1.0.0"
        assert stdin["extra"] == index and stdin["type"] == "abc"[index]
    assert attachment.result == c
    assert attachment.ips == ("10.0.0.5", "fd00::5")
    assert attachment.network == "testnet" and attachment.ifname == "eth0"
    assert attachment.config == config and attachment.netns == str(fake.netns)
    # recorded before add returned, privately, and readable by a new instance (a restart)
    record = fake.state / f"{container}.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    assert fake.network().attachment(container) == attachment
    assert net.recorded() == [container]
    assert [p.name for p in fake.state.iterdir()] == [record.name]  # no temporary left


async def test_plugins_get_the_cni_environment_and_nothing_else_of_ours(
    fake: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAMSRV_TEST_SECRET", "must-not-leak")
    first = tmp_path / "first-bin"
    first.mkdir()
    fake.plugin("a", where=first, result=result_of("first"))
    fake.plugin("a", result=result_of("second"))  # the same type in the later dir: not used
    fake.config("a")
    net = fake.network(bin_dirs=(first, fake.bin), ifname="net1")
    container = cid()

    attachment = await net.add(container, str(fake.netns), **POD)

    assert attachment is not None and attachment.result == result_of("first")
    env = fake.env("a", "ADD")
    assert env.pop("PATH")
    assert env == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": container,
        "CNI_NETNS": str(fake.netns),
        "CNI_IFNAME": "net1",
        "CNI_PATH": f"{first}:{fake.bin}",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
        f"K8S_POD_INFRA_CONTAINER_ID={container};K8S_POD_UID=0f1e2d3c-uid",
    }
    assert attachment.args == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "default",
        "K8S_POD_NAME": "web-0",
        "K8S_POD_INFRA_CONTAINER_ID": container,
        "K8S_POD_UID": "0f1e2d3c-uid",
    }


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (
            """printf '{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no subnet"}'
            echo 'log noise' >&2; exit 1""",
            "CNI plugin a failed (ADD): bad config: no subnet",
            7,
        ),
        ("""printf '{"code":11,"msg":"try again"}'; exit 1""", "try again", 11),
        ("echo 'panic: oops' >&2; exit 2", "CNI plugin a failed (ADD): panic: oops", None),
        ("exit 3", "CNI plugin a failed (ADD): exit status 3", None),
        ("kill -9 $$", "CNI plugin a failed (ADD): killed by SIGKILL", None),
        ("printf 'not json'", "CNI plugin a failed (ADD): invalid result:", None),
        ("exit 0", "CNI plugin a failed (ADD): the plugin printed no result", None),
    ],
)
async def test_a_failing_plugin_becomes_a_cni_error_with_its_message(
    fake: Fake, body: str, message: str, code: int | None
) -> None:
    fake.plugin("a", body)
    fake.config("a")

    with pytest.raises(CniError) as caught:
        await fake.network().add(cid(), str(fake.netns), **POD)

    assert str(caught.value).endswith(message) or str(caught.value).startswith(message)
    assert isinstance(caught.value, BackendError)
    assert caught.value.plugin == "a" and caught.value.code == code


async def test_a_failure_in_the_second_plugin_deletes_the_whole_list_in_reverse(
    fake: Fake,
) -> None:
    fake.plugin("a")
    fake.plugin("b", """[ "$CNI_COMMAND" = ADD ] && { printf '{"code":5,"msg":"no"}'; exit 1; }""")
    fake.config("a", "b")
    net = fake.network()
    container = cid()

    with pytest.raises(CniError, match=r"^CNI plugin b failed \(ADD\): no$"):
        await net.add(container, str(fake.netns), **POD)

    assert fake.steps() == ["a ADD", "b ADD", "b DEL", "a DEL"]
    deletes = fake.calls()[2:]
    # the DELs see what was made so far (a's result), with the netns still there
    assert all(c["stdin"]["prevResult"] == result_of("a") for c in deletes)
    assert fake.env("a", "DEL")["CNI_NETNS"] == str(fake.netns)
    assert net.recorded() == [] and net.attachment(container) is None


async def test_a_missing_plugin_is_named_with_the_path_searched(fake: Fake, tmp_path: Path) -> None:
    fake.plugin("a")
    fake.config("a", "nope")
    other = tmp_path / "other"
    net = fake.network(bin_dirs=(fake.bin, other))

    with pytest.raises(CniError) as caught:
        await net.add("c1", str(fake.netns), **POD)

    assert str(caught.value) == (
        f'CNI plugin nope failed (ADD): failed to find plugin "nope" in path [{fake.bin} {other}]'
    )
    assert caught.value.plugin == "nope"
    assert fake.steps() == ["a ADD", "a DEL"]  # undone; nope's DEL could not run either
    assert net.recorded() == []


def test_the_first_valid_config_in_lexical_order_is_used(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    net = fake.network()
    fake.write("00-broken.conflist", "{not json")
    fake.write("01-noplugins.conflist", {"cniVersion": "1.0.0", "name": "x", "plugins": []})
    fake.write("02-oldversion.conf", {"cniVersion": "0.2.0", "name": "x", "type": "bridge"})
    fake.write("03-notype.conf", {"cniVersion": "1.0.0", "name": "x"})
    fake.write("04-ignored.txt", {"cniVersion": "1.0.0", "name": "txt", "type": "a"})
    (fake.conf / "05-dir.conflist").mkdir()
    fake.write("10-single.conf", {"cniVersion": "0.4.0", "name": "single", "type": "a", "k": 1})
    fake.write(
        "20-list.conflist", {"cniVersion": "1.0.0", "name": "list", "plugins": [{"type": "b"}]}
    )

    with caplog.at_level(logging.WARNING, logger="streamsrv.runtime.cni"):
        first = net.load_config()
        again = net.load_config()

    # a .conf is one plugin, made a list (as libcni's ConfListFromConf)
    expected = {
        "cniVersion": "0.4.0",
        "name": "single",
        "plugins": [{"cniVersion": "0.4.0", "name": "single", "type": "a", "k": 1}],
    }
    assert first == again == expected
    skipped = [r.getMessage() for r in caplog.records]
    assert len(skipped) == 4, skipped  # one warning per invalid file, not one per load
    for name in ("00-broken", "01-noplugins", "02-oldversion", "03-notype"):
        assert sum(name in m for m in skipped) == 1

    (fake.conf / "10-single.conf").unlink()
    loaded = net.load_config()
    assert loaded is not None and loaded["name"] == "list"


def test_cni_versions_picks_the_highest_supported(fake: Fake) -> None:
    fake.write(
        "10.conflist",
        {"cniVersions": ["0.3.1", "1.0.0", "1.1.0"], "name": "n", "plugins": [{"type": "a"}]},
    )
    loaded = fake.network().load_config()
    assert loaded is not None and loaded["cniVersion"] == "1.0.0"
    assert "cniVersions" not in loaded


async def test_no_config_means_no_attachment_and_one_log_line(
    fake: Fake, caplog: pytest.LogCaptureFixture
) -> None:
    net = fake.network()
    with caplog.at_level(logging.INFO, logger="streamsrv.runtime.cni"):
        assert net.load_config() is None
        assert await net.add("c1", str(fake.netns), **POD) is None
        assert fake.network(conf_dir=fake.root / "absent").load_config() is None
    said = [r.getMessage() for r in caplog.records if "no CNI config" in r.getMessage()]
    assert said == [
        f"no CNI config in {fake.conf}: pods get loopback only",
        f"no CNI config in {fake.root / 'absent'}: pods get loopback only",
    ]
    assert net.recorded() == []


async def test_a_plugin_over_its_time_is_killed_with_what_it_started(fake: Fake) -> None:
    marker = str(random.randint(3_000_000, 3_999_999))
    fake.plugin("a", f"sleep {marker}\necho late")  # the shell waits on a child of its own
    fake.config("a")
    net = fake.network(timeout=0.5)
    fds = open_fds()
    start = time.monotonic()

    with pytest.raises(CniError, match=r"^CNI plugin a failed \(ADD\): timed out after 0.5s"):
        await net.add("c1", str(fake.netns), **POD)

    assert time.monotonic() - start < 4
    assert host_processes(f"sleep {marker}") == []
    assert open_fds() == fds  # every pipe closed (the process reaped: no zombie)
    assert net.recorded() == []


async def test_a_cancelled_add_kills_the_plugin_and_undoes_the_list(fake: Fake) -> None:
    marker = str(random.randint(4_000_000, 4_999_999))
    fake.plugin("a")
    fake.plugin("b", f'[ "$CNI_COMMAND" = ADD ] && sleep {marker}\nexit 0')
    fake.config("a", "b")
    net = fake.network()
    adding = asyncio.create_task(net.add("c1", str(fake.netns), **POD))
    deadline = time.monotonic() + 10
    while not host_processes(f"sleep {marker}"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)

    adding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await adding

    assert fake.steps() == ["a ADD", "b ADD", "b DEL", "a DEL"]
    assert host_processes(f"sleep {marker}") == []
    assert net.recorded() == []


@pytest.mark.parametrize("body", ["exec yes 0123456789", f"head -c {MAX_OUTPUT + 1} /dev/zero"])
async def test_oversized_output_is_refused(fake: Fake, body: str) -> None:
    fake.plugin("a", body)
    fake.config("a")
    fds = open_fds()
    start = time.monotonic()

    with pytest.raises(CniError, match=r"^CNI plugin a failed \(ADD\): output over 1048576 bytes"):
        await fake.network().add("c1", str(fake.netns), **POD)

    assert time.monotonic() - start < 10  # an endless writer is killed, not waited out
    assert open_fds() == fds


def fails_when_flagged(command: str, flag: Path, error: dict[str, object]) -> str:
    """A plugin script ("b") that adds, and fails ``command`` with ``error`` once ``flag``
    exists."""
    return f"""case "$CNI_COMMAND" in
ADD) printf '%s' '{json.dumps(result_of("b"))}' ;;
{command}) [ -e {flag} ] && {{ printf '%s' '{json.dumps(error)}'; exit 1; }} ;;
esac
exit 0"""


async def test_delete_without_a_record_does_nothing(fake: Fake) -> None:
    fake.plugin("a")
    fake.config("a")
    await fake.network().delete("never-added")
    assert fake.calls() == []


async def test_a_failed_delete_keeps_the_record_for_a_retry(fake: Fake) -> None:
    flag = fake.root / "fail-del"
    fake.plugin("a")
    fake.plugin(
        "b", fails_when_flagged("DEL", flag, {"code": 11, "msg": "busy", "details": "later"})
    )
    fake.config("a", "b")
    net = fake.network()
    container = cid()
    await net.add(container, str(fake.netns), **POD)
    flag.write_text("")

    with pytest.raises(CniError) as caught:
        await net.delete(container)

    assert str(caught.value) == "CNI plugin b failed (DEL): busy: later"
    assert caught.value.code == 11
    # a's DEL still ran (what it holds is released); the record stays for the retry
    assert fake.steps()[2:] == ["b DEL", "a DEL"]
    assert net.recorded() == [container]

    flag.unlink()
    await net.delete(container)
    assert net.recorded() == [] and net.attachment(container) is None
    await net.delete(container)  # idempotent
    assert fake.steps()[4:] == ["b DEL", "a DEL"]


@pytest.mark.parametrize(
    ("version", "previous"), [("1.0.0", True), ("0.4.0", True), ("0.3.1", False)]
)
async def test_delete_uses_the_record_not_todays_config(
    fake: Fake, version: str, previous: bool
) -> None:
    fake.plugin("a")
    fake.plugin("b")
    fake.config("a", "b", version=version)
    container = cid()
    attachment = await fake.network().add(container, str(fake.netns), **POD)
    assert attachment is not None
    (fake.conf / "10-test.conflist").unlink()  # the config went away (or changed)
    fake.netns.unlink()  # and so did the pod's namespace

    await fake.network().delete(container)  # a new instance: as after a restart

    assert fake.steps()[2:] == ["b DEL", "a DEL"]
    for call in fake.calls()[2:]:
        assert call["stdin"]["cniVersion"] == version
        assert ("prevResult" in call["stdin"]) is previous
        if previous:
            assert call["stdin"]["prevResult"] == attachment.result
    env = fake.env("a", "DEL")
    assert "CNI_NETNS" not in env  # the path is gone: plugins only release what they hold
    assert env["CNI_ARGS"].startswith("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;")


async def test_delete_passes_the_namespace_only_while_it_is_the_same(fake: Fake) -> None:
    fake.plugin("a")
    fake.config("a")
    net = fake.network()
    for container in ("c1", "c2", "c3", "c4"):
        await net.add(container, str(fake.netns), **POD)

    await net.delete("c1")  # still there, still the same
    assert fake.env("a", "DEL")["CNI_NETNS"] == str(fake.netns)
    await net.delete("c2", netns="")  # the caller knows it is gone
    assert "CNI_NETNS" not in fake.env("a", "DEL")
    other = fake.root / "now"
    await net.delete("c3", netns=str(other))  # the caller knows where it is now
    assert fake.env("a", "DEL")["CNI_NETNS"] == str(other)
    # the same path, but another namespace by now (as /proc/PID/ns/net after a pid is reused):
    # a DEL there would remove someone else's eth0
    fake.netns.rename(fake.root / "old")
    fake.netns.write_text("")
    await net.delete("c4")
    assert "CNI_NETNS" not in fake.env("a", "DEL")
    assert net.recorded() == []


async def test_check_runs_with_the_recorded_result(fake: Fake) -> None:
    flag = fake.root / "fail-check"
    fake.plugin("a")
    fake.plugin("b", fails_when_flagged("CHECK", flag, {"code": 3, "msg": "eth0 is gone"}))
    fake.config("a", "b")
    net = fake.network()
    container = cid()
    await net.add(container, str(fake.netns), **POD)

    await net.check(container)
    assert fake.steps()[2:] == ["a CHECK", "b CHECK"]
    assert all(c["stdin"]["prevResult"] == result_of("b") for c in fake.calls()[2:])

    flag.write_text("")
    with pytest.raises(CniError, match=r"^CNI plugin b failed \(CHECK\): eth0 is gone$"):
        await net.check(container)
    with pytest.raises(CniError, match="no CNI attachment recorded"):
        await net.check("other")


@pytest.mark.parametrize("extra", [{"version": "0.3.1"}, {"disableCheck": "true"}])
async def test_check_is_skipped_where_the_spec_says(fake: Fake, extra: dict[str, Any]) -> None:
    fake.plugin("a")
    fake.config("a", **extra)
    net = fake.network()
    await net.add("c1", str(fake.netns), **POD)
    await net.check("c1")
    assert fake.steps() == ["a ADD"]


async def test_a_second_add_for_the_same_container_is_refused(fake: Fake) -> None:
    fake.plugin("a")
    fake.config("a")
    net = fake.network()
    first = await net.add("c1", str(fake.netns), **POD)
    with pytest.raises(CniError, match="already has a CNI attachment"):
        await net.add("c1", str(fake.netns), **POD)
    assert fake.steps() == ["a ADD"]  # nothing ran, nothing undone
    assert net.attachment("c1") == first


@pytest.mark.parametrize("bad", ["../x", "", "a/b", ".hidden"])
async def test_container_ids_that_are_no_file_name_are_refused(fake: Fake, bad: str) -> None:
    with pytest.raises(CniError, match="invalid container id"):
        await fake.network().add(bad, str(fake.netns), **POD)


async def test_cni_args_separators_in_pod_fields_are_refused(fake: Fake) -> None:
    fake.plugin("a")
    fake.config("a")
    with pytest.raises(CniError, match="invalid K8S_POD_NAME"):
        await fake.network().add("c1", str(fake.netns), **{**POD, "pod_name": "a;IP=10.0.0.9"})
    assert fake.calls() == []


def test_ips_are_ipv4_first_without_prefix() -> None:
    attachment = Attachment(
        container_id="c",
        netns="/n",
        ifname="eth0",
        network="n",
        config={},
        result={"ips": [{"address": "fd00::2/64"}, {"address": "10.1.2.3/16"}, {"x": 1}]},
        args={},
    )
    assert attachment.ips == ("10.1.2.3", "fd00::2")


# -- real plugins, inside namespaces of our own -------------------------------------------------

PLUGINS = Path("/usr/lib/cni")
BRIDGE = "cnitest0"


def require_real_plugins() -> None:
    if os.geteuid() != 0:
        missing("real CNI plugins need root (network namespaces, veths)")
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed (iproute2, util-linux)")
    if shutil.which("ping") is None and shutil.which("busybox") is None:
        missing("neither ping nor busybox is installed")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (PLUGINS / plugin).is_file():
            missing(f"{PLUGINS / plugin} is missing (Debian's containernetworking-plugins)")


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=30)


def inside(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("nsenter", f"--net=/var/run/netns/{ns}", "--", *argv, check=check)


def ping(ns: str, address: str) -> bool:
    cmd = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
    return inside(ns, *cmd, "-c1", "-W2", address, check=False).returncode == 0


def links(ns: str) -> list[str]:
    out = inside(ns, "ip", "-o", "link", "show").stdout
    return sorted(line.split(": ")[1].split("@")[0] for line in out.splitlines())


@pytest.fixture
def namespaces() -> Iterator[Callable[[str], str]]:
    """Makes network namespaces with unique names; deletes each one at the end, also when
    the test failed (or deleted it itself)."""
    require_real_plugins()
    made: list[str] = []

    def make(role: str) -> str:
        name = f"stcni-{role}-{uuid.uuid4().hex[:8]}"
        run("ip", "netns", "add", name)
        made.append(name)
        return name

    yield make
    for name in made:
        if Path(f"/var/run/netns/{name}").exists():
            run("ip", "netns", "del", name, check=False)


@dataclass
class Real:
    host: str
    ipam: Path
    net: CniNetwork

    def leases(self) -> list[str]:
        leases = self.ipam / "cnitest"
        if not leases.exists():
            return []
        kept = ("lock",)
        return [
            p.name
            for p in leases.iterdir()
            if p.name not in kept and not p.name.startswith("last_reserved_ip")
        ]


def bridge_config(ipam: Path, *, subnet: str = "10.250.0.0/24", then: str = "loopback") -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": "cnitest",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(ipam)},
            },
            {"type": then},
        ],
    }


@pytest.fixture
def real(tmp_path: Path, namespaces: Callable[[str], str]) -> Real:
    host = namespaces("h")
    conf = tmp_path / "net.d"
    conf.mkdir()
    ipam = tmp_path / "ipam"
    (conf / "10-cnitest.conflist").write_text(json.dumps(bridge_config(ipam)))
    net = CniNetwork(
        tmp_path / "state",
        conf_dir=conf,
        bin_dirs=(PLUGINS,),
        plugin_netns=Path(f"/var/run/netns/{host}"),
    )
    return Real(host, ipam, net)


def netns_path(ns: str) -> str:
    return f"/var/run/netns/{ns}"


async def test_real_bridge_connects_two_pods_inside_our_namespaces(
    real: Real, namespaces: Callable[[str], str]
) -> None:
    p1, p2 = namespaces("p1"), namespaces("p2")
    c1, c2 = cid(), cid()

    a1 = await real.net.add(c1, netns_path(p1), **POD)
    a2 = await real.net.add(c2, netns_path(p2), **POD)

    assert a1 is not None and a2 is not None
    (ip1,), (ip2,) = a1.ips, a2.ips
    assert ip1.startswith("10.250.0.") and ip2.startswith("10.250.0.") and ip1 != ip2
    assert f"inet {ip1}/24" in inside(p1, "ip", "-o", "addr", "show", "dev", "eth0").stdout
    assert "UP" in inside(p1, "ip", "-o", "link", "show", "lo").stdout  # the loopback plugin
    assert ping(p1, ip2) and ping(p2, ip1)
    # the bridge and the host ends live in H; this machine's own namespace is untouched
    assert inside(real.host, "ip", "-o", "link", "show", BRIDGE).returncode == 0
    assert run("ip", "-o", "link", "show", BRIDGE, check=False).returncode != 0
    assert len(links(real.host)) == 4  # lo, the bridge, two veths
    assert sorted(real.leases()) == sorted([ip1, ip2])

    await real.net.check(c1)
    await real.net.check(c2)

    await real.net.delete(c1)
    await real.net.delete(c2)
    assert real.leases() == []
    assert real.net.recorded() == []
    assert inside(p1, "ip", "link", "show", "eth0", check=False).returncode != 0
    assert links(real.host) == sorted([BRIDGE, "lo"])


async def test_real_add_delete_cycles_leave_nothing(
    real: Real, namespaces: Callable[[str], str]
) -> None:
    pod = namespaces("p1")
    for _ in range(30):
        container = cid()
        attachment = await real.net.add(container, netns_path(pod), **POD)
        assert attachment is not None and len(real.leases()) == 1
        await real.net.delete(container)
    assert real.net.recorded() == []
    assert list((real.net.state_dir).iterdir()) == []
    assert real.leases() == []
    assert links(real.host) == sorted([BRIDGE, "lo"])
    assert links(pod) == ["lo"]


async def test_real_delete_after_the_pod_namespace_is_gone_releases_the_lease(
    real: Real, namespaces: Callable[[str], str]
) -> None:
    pod = namespaces("p1")
    container = cid()
    attachment = await real.net.add(container, netns_path(pod), **POD)
    assert attachment is not None and real.leases() == list(attachment.ips)

    run("ip", "netns", "del", pod)  # the infra container is gone, its veth with it
    await real.net.delete(container)

    assert real.leases() == []
    assert real.net.recorded() == []
    # The kernel tears a deleted namespace down later, in a work queue: its veth's host end
    # goes away then (seen still there once, right after the delete).
    for _ in range(600):  # 30 s at most
        if links(real.host) == sorted([BRIDGE, "lo"]):
            break
        await asyncio.sleep(0.05)
    assert links(real.host) == sorted([BRIDGE, "lo"])


@pytest.mark.parametrize(
    ("change", "failing", "message"),
    [
        ({"subnet": "10.250.0.0/garbage"}, "bridge", "invalid CIDR address"),
        ({"then": "stcni-no-such-plugin"}, "stcni-no-such-plugin", "failed to find plugin"),
    ],
)
async def test_real_broken_config_leaves_no_lease_and_no_record(
    real: Real,
    namespaces: Callable[[str], str],
    tmp_path: Path,
    change: dict[str, str],
    failing: str,
    message: str,
) -> None:
    pod = namespaces("p1")
    conf = tmp_path / "net.d" / "10-cnitest.conflist"
    conf.write_text(json.dumps(bridge_config(real.ipam, **change)))
    container = cid()

    with pytest.raises(CniError) as caught:
        await real.net.add(container, netns_path(pod), **POD)

    assert caught.value.plugin == failing and message in str(caught.value)
    assert real.leases() == []
    assert real.net.recorded() == []
    assert links(pod) == ["lo"]  # the veth of a bridge ADD that succeeded was removed again
    assert BRIDGE not in run("ip", "-o", "link", "show").stdout


async def test_real_plugins_run_concurrently_for_different_pods(
    real: Real, namespaces: Callable[[str], str]
) -> None:
    # One pod first: bridge 1.1.1 sets the bridge's MAC to itself, which the kernel refuses
    # (EINVAL) while a new bridge has no port yet and so an all-zero MAC; plugins racing to
    # create the bridge would hit that.
    first = cid()
    await real.net.add(first, netns_path(namespaces("p")), **POD)
    pods = [namespaces(f"p{i}") for i in range(4)]
    ids = [cid() for _ in pods]
    added = await asyncio.gather(
        *(real.net.add(c, netns_path(p), **POD) for c, p in zip(ids, pods, strict=True))
    )
    addresses = {ip for a in added if a is not None for ip in a.ips}
    assert len(addresses) == 4
    await asyncio.gather(*(real.net.delete(c) for c in [first, *ids]))
    assert real.leases() == [] and real.net.recorded() == []
