"""The runtime side of CNI: a pod's network comes from the plugins of one network config list.

A pod's infra container owns its network namespace; this module attaches that namespace to the
network the first CNI config in ``conf_dir`` describes (the rule of libcni and of the kubelet's
runtimes), by running the config's plugins the way the CNI specification (0.3.x, 0.4.0, 1.0.0)
says: ADD in order, each plugin getting the previous one's result; DEL in reverse; CHECK with the
ADD result. Plugins are separate executables that receive their config on stdin and their
arguments in ``CNI_*`` environment variables.

What ADD left is recorded in ``state_dir/<container id>.json`` before :meth:`CniNetwork.add`
returns, with the config that was used: DEL must undo what was done (release that IPAM lease,
remove that veth) even after a restart, and even if the file in ``conf_dir`` changed meanwhile.
A record whose DEL failed stays, so the DEL can be retried; an ADD that failed half way is
undone at once (DEL of the whole list), so a failed pod start never leaks an address.

With ``plugin_netns`` the plugins run inside that network namespace (``nsenter --net``): the
bridge and the host ends of the veths then live there, never in our own namespace (tests and
nested setups use this).

This module imports only the standard library and :mod:`streamsrv.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BackendError

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
"""The spec versions whose configs we run; a config naming none of them is skipped at load."""
MAX_OUTPUT = 1 << 20
"""Bytes of stdout a plugin may print: a result is a few KiB, more is a broken plugin."""
STDERR_KEPT = 8 << 10
"""Bytes of a plugin's stderr kept for an error message (the rest is read and dropped)."""
MESSAGE_MAX = 2000
"""Characters of plugin output put into an error message, so it stays fit to show."""
KILL_GRACE = 5.0
"""Seconds to wait for a killed plugin's pipes to close before closing them ourselves."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
RECORD_KIND = "streamsrv-cni-attachment/v1"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")

# libcni's rules (utils.ValidateContainerID / ValidateNetworkName): these strings become file
# names (our records, host-local's lease directory), so nothing else may pass.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_CHUNK = 1 << 16


class CniError(BackendError):
    """A CNI operation failed; ``str(error)`` is fit to show to a user.

    ``plugin`` is the plugin type that failed ("" when no plugin did, e.g. a bad record) and
    ``code`` the CNI error code it reported (spec: 1-99 well known, 11 means try again later),
    None when it reported none.
    """

    def __init__(self, message: str, *, plugin: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.code = code


def _plugin_error(plugin: str, command: str, what: str, code: int | None = None) -> CniError:
    return CniError(f"CNI plugin {plugin} failed ({command}): {what}", plugin=plugin, code=code)


@dataclass(frozen=True, slots=True)
class Attachment:
    """What ADD left for one container, kept so DEL and CHECK can run later (also after a
    restart) with exactly the config, interface and arguments that ADD used."""

    container_id: str
    netns: str
    ifname: str
    network: str
    """The config list's ``name``."""
    config: dict[str, Any]
    """The whole network config list used at ADD (a ``.conf`` already turned into a list)."""
    result: dict[str, Any]
    """The final result of the chain (the last plugin's)."""
    args: dict[str, str]
    """The ``CNI_ARGS`` pairs used, in order."""

    @property
    def ips(self) -> tuple[str, ...]:
        """The result's addresses without their prefix length, IPv4 first ("10.88.0.5")."""
        v4: list[str] = []
        v6: list[str] = []
        ips = self.result.get("ips")
        for entry in ips if isinstance(ips, list) else ():
            address = entry.get("address") if isinstance(entry, dict) else None
            if not isinstance(address, str):
                continue
            try:
                ip = ipaddress.ip_interface(address).ip
            except ValueError:
                continue
            (v4 if ip.version == 4 else v6).append(str(ip))
        return (*v4, *v6)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _at_least_0_4(config: Mapping[str, Any]) -> bool:
    """CHECK, and prevResult on DEL, came with spec 0.4.0."""
    return _version(str(config["cniVersion"])) >= (0, 4, 0)


def _valid_plugin_type(kind: object) -> bool:
    # the type is a file name in the bin dirs: a path would run any program on the machine
    return isinstance(kind, str) and kind not in ("", ".", "..") and "/" not in kind


def _read_bool(raw: Mapping[str, Any], key: str) -> bool:
    """libcni accepts a JSON bool or the strings "true"/"false" (any case)."""
    value = raw.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"invalid value {value!r} for {key}")


def _choose_version(raw: Mapping[str, Any]) -> str:
    """The config's spec version: ``cniVersion``, or the highest of ``cniVersions`` (spec 1.1)
    that we support, so a config written for newer runtimes still works with older plugins."""
    candidates: list[str] = []
    version = raw.get("cniVersion")
    if version is not None:
        if not isinstance(version, str):
            raise ValueError(f"invalid cniVersion {version!r}")
        candidates.append(version)
    versions = raw.get("cniVersions")
    if versions is not None:
        if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
            raise ValueError(f"invalid cniVersions {versions!r}")
        candidates.extend(versions)
    usable = [v for v in candidates if v in SUPPORTED_VERSIONS]
    if not usable:
        shown = ", ".join(candidates) or "none"
        raise ValueError(
            f"unsupported cniVersion ({shown}); supported: {', '.join(SUPPORTED_VERSIONS)}"
        )
    return max(usable, key=_version)


def _as_list(raw: object, single: bool) -> dict[str, Any]:
    """A validated network config list from one file's JSON (``single``: a ``.conf`` plugin
    object, turned into a one-plugin list as libcni's ConfListFromConf does); ValueError says
    what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    if single:
        if not _valid_plugin_type(raw.get("type")):
            raise ValueError(f"missing or invalid plugin type {raw.get('type')!r}")
        raw = {"cniVersion": raw.get("cniVersion"), "name": raw.get("name"), "plugins": [raw]}
    name = raw.get("name")
    if not isinstance(name, str) or not _ID.match(name):
        raise ValueError(f"missing or invalid network name {name!r}")
    config = dict(raw)
    config["cniVersion"] = _choose_version(raw)
    config.pop("cniVersions", None)
    _read_bool(raw, "disableCheck")
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise ValueError("no plugins in list")
    for index, plugin in enumerate(plugins):
        if not isinstance(plugin, dict) or not _valid_plugin_type(plugin.get("type")):
            raise ValueError(f"plugin {index} has no valid type")
    return config


def _cni_args(args: Mapping[str, str]) -> str:
    return ";".join(f"{key}={value}" for key, value in args.items())


def _check_arg(what: str, value: str) -> None:
    # CNI_ARGS is split on ';' and '=' by the plugins (skel), and env values cannot hold NUL
    if any(c in value for c in ";=\0"):
        raise CniError(f"invalid {what} for CNI_ARGS: {value!r}")


def _netns_identity(path: str) -> list[int] | None:
    """The namespace's (device, inode): a path such as /proc/PID/ns/net may later name another
    process's namespace, and DEL must never tear down an interface in someone else's."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _failure(plugin: str, command: str, returncode: int, out: bytes, err: bytes) -> CniError:
    """The plugin's own error (``{"code":N,"msg":..,"details":..}`` on stdout, per the spec),
    else its stderr, else its exit status."""
    code: int | None = None
    what = ""
    try:
        reported = json.loads(out) if out.strip() else None
    except ValueError:
        reported = None
    if isinstance(reported, dict) and ("msg" in reported or "code" in reported):
        raw_code = reported.get("code")
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            code = raw_code
        msg = str(reported.get("msg") or "").strip()
        details = str(reported.get("details") or "").strip()
        what = f"{msg}: {details}" if msg and details else msg or details
        if not what and code is not None:
            what = f"error code {code}"
    if not what:
        what = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
    if not what:
        if returncode < 0:
            try:
                what = f"killed by {signal.Signals(-returncode).name}"
            except ValueError:
                what = f"killed by signal {-returncode}"
        else:
            what = f"exit status {returncode}"
    if len(what) > MESSAGE_MAX:
        what = what[:MESSAGE_MAX] + "..."
    return _plugin_error(plugin, command, what, code)


async def _drain(
    stream: asyncio.StreamReader, keep: int, overflow: Callable[[], None] | None = None
) -> tuple[bytes, bool]:
    """Read ``stream`` to its end, keeping at most ``keep`` bytes: reading on past the bound
    (rather than stopping) lets the pipe reach EOF, so asyncio closes the process's transport."""
    kept = bytearray()
    over = False
    while chunk := await stream.read(_CHUNK):
        room = keep - len(kept)
        if len(chunk) <= room:
            kept += chunk
            continue
        kept += chunk[: max(room, 0)]
        if not over:
            over = True
            if overflow is not None:
                overflow()
    return bytes(kept), over


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write the config and close stdin; a plugin that exits without reading it is no error
    here (its exit status says what happened)."""
    try:
        stdin.write(data)
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stdin.close()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            await stdin.wait_closed()


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the plugin and whatever it started (its own session, see ``start_new_session``): a
    child left holding stdout would keep the pipe open after the plugin itself died."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


class _Users:
    """One container id's lock and how many callers hold or wait for it."""

    __slots__ = ("lock", "count")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.count = 0


class CniNetwork:
    """Attaches pods' network namespaces to the CNI network of ``conf_dir`` (see the module
    docstring); one instance per runtime, its records in ``state_dir``."""

    def __init__(
        self,
        state_dir: Path,
        *,
        conf_dir: Path = Path("/etc/cni/net.d"),
        bin_dirs: Sequence[Path] = (Path("/usr/lib/cni"), Path("/opt/cni/bin")),
        plugin_netns: Path | None = None,
        ifname: str = "eth0",
        timeout: float = 60.0,
    ) -> None:
        # libcni's ValidateInterfaceName: the kernel's IFNAMSIZ, and no path characters
        if not 0 < len(ifname) < 16 or ifname in (".", "..") or any(c in "/: \t\n" for c in ifname):
            raise ValueError(f"invalid interface name {ifname!r}")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.state_dir = state_dir
        self.conf_dir = conf_dir
        self.bin_dirs = tuple(bin_dirs)
        self.plugin_netns = plugin_netns
        self.ifname = ifname
        self.timeout = timeout
        self._path = os.environ.get("PATH") or DEFAULT_PATH
        self._said_no_config = False
        self._warned: set[tuple[str, int, int]] = set()
        self._users: dict[str, _Users] = {}

    # -- configuration ------------------------------------------------------------------------

    def load_config(self) -> dict[str, Any] | None:
        """The network config list to use: the first file of ``conf_dir`` (``*.conflist``,
        ``*.conf``, ``*.json``, in lexical order) that loads and is valid, as libcni and the
        kubelet's runtimes choose it. A ``.conf`` (or a ``.json`` without ``plugins``) is one
        plugin, turned into a list. Read on every call, so a changed config applies to the
        next pod; invalid files are skipped with one warning each (per version of the file)."""
        try:
            entries = sorted(os.scandir(self.conf_dir), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        except OSError as exc:
            raise CniError(f"cannot read the CNI config directory {self.conf_dir}: {exc}") from exc
        for entry in entries:
            suffix = os.path.splitext(entry.name)[1]
            if suffix not in CONF_EXTENSIONS:
                continue
            try:
                if not entry.is_file():
                    continue
                with open(entry.path, "rb") as file:
                    raw = json.loads(file.read())
                single = suffix == ".conf" or (
                    suffix == ".json" and not (isinstance(raw, dict) and "plugins" in raw)
                )
                return _as_list(raw, single)
            except (OSError, ValueError, RecursionError) as exc:
                key = (entry.path, *self._stamp(entry))
                if key not in self._warned:
                    self._warned.add(key)
                    log.warning("skipping invalid CNI config %s: %s", entry.path, exc)
        if not self._said_no_config:
            self._said_no_config = True
            log.warning("no CNI config in %s: pods get loopback only", self.conf_dir)
        return None

    @staticmethod
    def _stamp(entry: os.DirEntry[str]) -> tuple[int, int]:
        try:
            st = entry.stat()
        except OSError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_size)

    # -- operations ---------------------------------------------------------------------------

    async def add(
        self, container_id: str, netns: str, *, pod_name: str, pod_namespace: str, pod_uid: str
    ) -> Attachment | None:
        """Attach ``netns`` (the infra container's network namespace) to the network; None
        when there is no CNI config. The attachment is recorded before this returns; if any
        plugin fails, the whole list is deleted again (so IPAM leases are released) and
        CniError is raised, nothing recorded."""
        self._check_id(container_id)
        if not netns or "\0" in netns:
            raise CniError(f"invalid network namespace path {netns!r}")
        args = {
            "IgnoreUnknown": "1",
            "K8S_POD_NAMESPACE": pod_namespace,
            "K8S_POD_NAME": pod_name,
            "K8S_POD_INFRA_CONTAINER_ID": container_id,
            "K8S_POD_UID": pod_uid,
        }
        for key, value in args.items():
            _check_arg(key, value)
        async with self._exclusive(container_id):
            if self._record_path(container_id).exists():
                # a second ADD would fail on the existing interface, and its undo would tear
                # down the attachment the first one made
                raise CniError(
                    f"container {container_id} already has a CNI attachment: delete it first"
                )
            config = self.load_config()
            if config is None:
                return None
            identity = _netns_identity(netns)
            result: dict[str, Any] | None = None
            try:
                for plugin in config["plugins"]:
                    out = await self._invoke(
                        config, plugin, "ADD", container_id, netns, self.ifname, args, result
                    )
                    result = self._parse_result(plugin["type"], out)
                assert result is not None  # a list has at least one plugin
                attachment = Attachment(
                    container_id=container_id,
                    netns=netns,
                    ifname=self.ifname,
                    network=config["name"],
                    config=config,
                    result=result,
                    args=args,
                )
                self._write_record(attachment, identity)
            except BaseException:
                # also on cancellation: a half-made attachment would hold its lease forever
                errors = await self._delete_list(
                    config, container_id, netns, self.ifname, args, result
                )
                for error in errors:
                    log.warning("undoing the failed CNI ADD of %s: %s", container_id, error)
                raise
            return attachment

    async def delete(self, container_id: str, *, netns: str | None = None) -> None:
        """Detach the container: DEL of the recorded list in reverse order, then the record is
        removed. No record: nothing to do. If a plugin fails, the others still run (so what
        they hold is released), the record stays for a retry and CniError is raised.

        CNI_NETNS is passed only while the recorded namespace still exists (and is still the
        same namespace): without it the plugins only release what they hold (host-local's
        lease); the interfaces went with the namespace. A caller that knows better says so:
        ``netns`` is then the path to pass now ("" for none), e.g. the infra container's
        current ``/proc/PID/ns/net``."""
        self._check_id(container_id)
        async with self._exclusive(container_id):
            found = self._read_record(container_id)
            if found is None:
                return
            attachment, identity = found
            if netns is None:
                netns = attachment.netns
                now = _netns_identity(netns)
                if now is None or (identity is not None and now != identity):
                    netns = None
            elif not netns:
                netns = None
            elif "\0" in netns:
                raise CniError(f"invalid network namespace path {netns!r}")
            errors = await self._delete_list(
                attachment.config,
                container_id,
                netns,
                attachment.ifname,
                attachment.args,
                attachment.result,
            )
            if errors:
                for extra in errors[1:]:
                    log.warning("CNI DEL of %s: %s", container_id, extra)
                raise errors[0]
            self._remove_record(container_id)

    async def check(self, container_id: str) -> None:
        """CHECK the recorded attachment (configs of spec 0.4.0 and later without
        ``disableCheck``; for others there is nothing to run); CniError when it fails."""
        self._check_id(container_id)
        async with self._exclusive(container_id):
            found = self._read_record(container_id)
            if found is None:
                raise CniError(f"no CNI attachment recorded for container {container_id}")
            attachment = found[0]
            config = attachment.config
            if not _at_least_0_4(config) or _read_bool(config, "disableCheck"):
                return
            for plugin in config["plugins"]:
                await self._invoke(
                    config,
                    plugin,
                    "CHECK",
                    container_id,
                    attachment.netns,
                    attachment.ifname,
                    attachment.args,
                    attachment.result,
                )

    def attachment(self, container_id: str) -> Attachment | None:
        """The container's record, or None."""
        self._check_id(container_id)
        found = self._read_record(container_id)
        return None if found is None else found[0]

    def recorded(self) -> list[str]:
        """The container ids that have records (e.g. to DEL the attachments of pods that no
        longer exist after a restart)."""
        try:
            names = os.listdir(self.state_dir)
        except FileNotFoundError:
            return []
        ids = (name[: -len(".json")] for name in names if name.endswith(".json"))
        return sorted(i for i in ids if _ID.match(i))

    # -- the plugin chain ---------------------------------------------------------------------

    async def _delete_list(
        self,
        config: Mapping[str, Any],
        container_id: str,
        netns: str | None,
        ifname: str,
        args: Mapping[str, str],
        result: dict[str, Any] | None,
    ) -> list[CniError]:
        """DEL of every plugin of the list in reverse; the errors, in the order they came.
        Unlike libcni we go on past a failed plugin: DEL is idempotent, a retry runs them all
        again, and meanwhile the others have released what they hold."""
        previous = result if _at_least_0_4(config) else None
        errors: list[CniError] = []
        for plugin in reversed(config["plugins"]):
            try:
                await self._invoke(
                    config, plugin, "DEL", container_id, netns, ifname, args, previous
                )
            except CniError as exc:
                errors.append(exc)
        return errors

    @staticmethod
    def _parse_result(plugin: str, out: bytes) -> dict[str, Any]:
        if not out.strip():
            raise _plugin_error(plugin, "ADD", "the plugin printed no result")
        try:
            result = json.loads(out)
        except ValueError as exc:
            raise _plugin_error(plugin, "ADD", f"invalid result: {exc}") from None
        if not isinstance(result, dict):
            raise _plugin_error(plugin, "ADD", "invalid result: not a JSON object")
        return result

    def _find_plugin(self, kind: str, command: str) -> str:
        if _valid_plugin_type(kind):
            for directory in self.bin_dirs:
                path = directory / kind
                if path.is_file():
                    return str(path)
        dirs = " ".join(str(d) for d in self.bin_dirs)
        raise _plugin_error(kind, command, f'failed to find plugin "{kind}" in path [{dirs}]')

    async def _invoke(
        self,
        config: Mapping[str, Any],
        plugin: Mapping[str, Any],
        command: str,
        container_id: str,
        netns: str | None,
        ifname: str,
        args: Mapping[str, str],
        previous: dict[str, Any] | None,
    ) -> bytes:
        """Run one plugin; its stdout on success, else CniError."""
        kind = str(plugin["type"])
        path = self._find_plugin(kind, command)
        # the plugin's own object, with the list's name and version (libcni's buildOneConfig)
        stdin_conf = dict(plugin)
        stdin_conf["name"] = config["name"]
        stdin_conf["cniVersion"] = config["cniVersion"]
        stdin_conf.pop("prevResult", None)
        if previous is not None:
            stdin_conf["prevResult"] = previous
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_IFNAME": ifname,
            "CNI_PATH": ":".join(str(d) for d in self.bin_dirs),
            "CNI_ARGS": _cni_args(args),
            "PATH": self._path,
        }
        if netns is not None:
            env["CNI_NETNS"] = netns
        argv = [path]
        if self.plugin_netns is not None:
            nsenter = shutil.which("nsenter", path=self._path)
            if nsenter is None:
                raise _plugin_error(kind, command, "nsenter (util-linux) not found in PATH")
            argv = [nsenter, f"--net={self.plugin_netns}", "--", path]
        data = json.dumps(stdin_conf).encode()
        log.debug("CNI %s %s for %s", command, kind, container_id)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            raise _plugin_error(kind, command, f"cannot run {path}: {exc}") from None
        out, err, over = await self._communicate(proc, data, kind, command)
        if err:
            log.debug("CNI %s %s stderr: %s", command, kind, err.decode(errors="replace"))
        if over:
            raise _plugin_error(kind, command, f"output over {MAX_OUTPUT} bytes (killed)")
        assert proc.returncode is not None
        if proc.returncode != 0:
            raise _failure(kind, command, proc.returncode, out, err)
        return out

    async def _communicate(
        self, proc: asyncio.subprocess.Process, data: bytes, kind: str, command: str
    ) -> tuple[bytes, bytes, bool]:
        """Feed stdin and read stdout (bounded) and stderr until the plugin exits; kill its
        process group on timeout, on oversized output and on cancellation. The process is
        always reaped and its pipes closed before this returns."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        feeder = asyncio.ensure_future(_feed(proc.stdin, data))
        reader = asyncio.ensure_future(_drain(proc.stdout, MAX_OUTPUT, lambda: _kill_group(proc)))
        errors = asyncio.ensure_future(_drain(proc.stderr, STDERR_KEPT))
        tasks = (feeder, reader, errors)
        finished = False
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*tasks)
                await proc.wait()
            finished = True
        except TimeoutError:
            raise _plugin_error(
                kind, command, f"timed out after {self.timeout:g}s (killed)"
            ) from None
        finally:
            if not finished:
                _kill_group(proc)
                await self._reap(proc, tasks)
        out, over = reader.result()
        err = errors.result()[0]
        return out, err, over

    @staticmethod
    async def _reap(proc: asyncio.subprocess.Process, tasks: Sequence[asyncio.Future[Any]]) -> None:
        """After the kill: let the readers reach EOF and the process be reaped. A process that
        left the plugin's session may still hold a pipe; then we close the pipes ourselves
        (asyncio offers no public way, hence the transport) rather than hang."""
        try:
            async with asyncio.timeout(KILL_GRACE):
                await asyncio.gather(*tasks, return_exceptions=True)
                await proc.wait()
        except TimeoutError:
            log.warning("a killed CNI plugin (pid %d) left a process holding its pipes", proc.pid)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                transport.close()

    # -- records ------------------------------------------------------------------------------

    @staticmethod
    def _check_id(container_id: str) -> None:
        if not _ID.match(container_id) or len(container_id) > 255:
            raise CniError(f"invalid container id {container_id!r}")

    def _record_path(self, container_id: str) -> Path:
        return self.state_dir / f"{container_id}.json"

    def _write_record(self, attachment: Attachment, identity: list[int] | None) -> None:
        """Write atomically (a temporary file renamed over) and durably (fsync of the file and
        of the directory): after a crash the record is either whole or absent, never torn."""
        record = {
            "kind": RECORD_KIND,
            "containerId": attachment.container_id,
            "netns": attachment.netns,
            "netnsIdentity": identity,
            "ifName": attachment.ifname,
            "network": attachment.network,
            "config": attachment.config,
            "result": attachment.result,
            "args": attachment.args,
        }
        try:
            self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self.state_dir, prefix=f".{attachment.container_id}.", suffix=".tmp"
            )
            try:
                with os.fdopen(fd, "w") as file:
                    json.dump(record, file)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(tmp, self._record_path(attachment.container_id))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._sync_dir()
        except (OSError, TypeError, ValueError) as exc:
            raise CniError(
                f"cannot record the CNI attachment of {attachment.container_id}: {exc}"
            ) from exc

    def _read_record(self, container_id: str) -> tuple[Attachment, list[int] | None] | None:
        path = self._record_path(container_id)
        try:
            with open(path, "rb") as file:
                raw = json.loads(file.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CniError(f"unreadable CNI record {path}: {exc}") from exc
        try:
            if not isinstance(raw, dict) or raw.get("kind") != RECORD_KIND:
                raise ValueError(f"not a {RECORD_KIND} record")
            args = raw["args"]
            if not isinstance(args, dict):
                raise ValueError("args is not an object")
            attachment = Attachment(
                container_id=str(raw["containerId"]),
                netns=str(raw["netns"]),
                ifname=str(raw["ifName"]),
                network=str(raw["network"]),
                config=_as_list(raw["config"], single=False),
                result=dict(raw["result"]),
                args={str(k): str(v) for k, v in args.items()},
            )
            identity = raw.get("netnsIdentity")
            if identity is not None and (
                not isinstance(identity, list) or not all(isinstance(i, int) for i in identity)
            ):
                raise ValueError("invalid netnsIdentity")
        except (KeyError, TypeError, ValueError) as exc:
            raise CniError(f"unreadable CNI record {path}: {exc}") from exc
        return attachment, identity

    def _remove_record(self, container_id: str) -> None:
        try:
            self._record_path(container_id).unlink(missing_ok=True)
            self._sync_dir()
        except OSError as exc:
            raise CniError(f"cannot remove the CNI record of {container_id}: {exc}") from exc

    def _sync_dir(self) -> None:
        fd = os.open(self.state_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @contextlib.asynccontextmanager
    async def _exclusive(self, container_id: str) -> AsyncIterator[None]:
        """One operation per container at a time: a DEL racing an ADD would find no record
        and leave the ADD's attachment behind."""
        users = self._users.get(container_id)
        if users is None:
            users = self._users[container_id] = _Users()
        users.count += 1
        try:
            async with users.lock:
                yield
        finally:
            users.count -= 1
            if users.count == 0:
                del self._users[container_id]


__all__ = ["Attachment", "CniError", "CniNetwork"]
