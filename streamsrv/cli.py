"""Command line: ``streamsrv serve``, ``streamsrv cri`` and ``streamsrv pod run|ls|rm``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import resource
import signal
import ssl
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from . import __version__
from .alloc import raise_mmap_threshold
from .app import make_app
from .certs import (
    CertificateAuthority,
    load_token,
    private_dir,
    server_ssl_context,
    write_kubeconfig,
)
from .client.config import load_kubeconfig
from .client.errors import ConfigError
from .connections import GuardedSite, quiet_accept_errors, runner_kwargs
from .files import volatile_dir
from .limits import Limits
from .metrics import instrument
from .podmanager import PodManager
from .recording import RecordConfig
from .runtime import ctdclient
from .runtime.base import StreamingRuntime
from .runtime.cni import CniNetwork
from .runtime.containerd import ContainerdImages, ContainerdRuntime
from .runtime.docker import DEFAULT_PAUSE_IMAGE, DockerRuntime
from .runtime.images import DockerImages, ImageStore, RecordedImages
from .runtime.process import ProcessRuntime
from .runtime.volumes import VolumeHost
from .server import Config, StreamServer

log = logging.getLogger("streamsrv")


def default_state_dir() -> Path:
    env = os.environ.get("STREAMSRV_STATE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "streamsrv"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class UsageError(Exception):
    pass


def docker_endpoint() -> str:
    return os.environ.get("DOCKER_HOST") or "the default socket"


DEFAULT_CNI_BIN_DIRS = (Path("/usr/lib/cni"), Path("/opt/cni/bin"))  # Debian's, then upstream's


@dataclasses.dataclass(frozen=True, slots=True)
class NetworkOptions:
    """Where the CNI network manager finds its config and plugins (docs/architecture.md,
    "Pod network")."""

    conf_dir: Path = Path("/etc/cni/net.d")
    bin_dirs: tuple[Path, ...] = DEFAULT_CNI_BIN_DIRS
    plugin_netns: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NetworkOptions:
        """From the flags :func:`add_network_args` adds."""
        return cls(
            conf_dir=args.cni_conf_dir,
            bin_dirs=tuple(args.cni_bin_dir or DEFAULT_CNI_BIN_DIRS),
            plugin_netns=args.cni_netns,
        )

    def manager(self, state_dir: Path) -> CniNetwork:
        return CniNetwork(
            state_dir / "cni",
            conf_dir=self.conf_dir,
            bin_dirs=self.bin_dirs,
            plugin_netns=self.plugin_netns,
        )


@dataclasses.dataclass(frozen=True, slots=True)
class ContainerdOptions:
    """Which containerd the containerd runtime uses (docs/containerd.md)."""

    address: str = ctdclient.DEFAULT_ADDRESS
    namespace: str = ctdclient.DEFAULT_NAMESPACE
    snapshotter: str = "overlayfs"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ContainerdOptions:
        return cls(args.containerd_address, args.containerd_namespace, args.containerd_snapshotter)


async def pick_runtime(
    kind: str,
    pause_image: str,
    state_dir: Path,
    network: NetworkOptions | None = None,
    containerd: ContainerdOptions | None = None,
) -> StreamingRuntime:
    """The runtime asked for; ``auto`` is Docker when an engine answers, else local processes."""
    if kind == "process":
        return ProcessRuntime(state_dir / "process-pods")
    if kind == "containerd":
        options = containerd or ContainerdOptions()
        # its own directories: it removes what an earlier server left there at start, which
        # must never be a Docker runtime's pods (they outlive the server)
        own = state_dir / "containerd"
        ctd = ContainerdRuntime(
            # the FIFOs in memory when a tmpfs is at hand: each exec makes and removes a few
            # (docs/containerd.md, "Where the FIFOs live")
            volatile_dir(own / "io") or own / "io",
            address=options.address,
            namespace=options.namespace,
            snapshotter=options.snapshotter,
            pause_image=pause_image,
            volumes=VolumeHost(own / "volumes"),
            network=(network or NetworkOptions()).manager(own),
        )
        try:
            if removed := await ctd.start():
                log.warning(
                    "removed %d containers an earlier server left in containerd namespace %s",
                    removed,
                    options.namespace,
                )
        except Exception as exc:
            await ctd.close()
            raise UsageError(f"containerd at {options.address}: {exc}") from exc
        return ctd
    runtime: DockerRuntime | None = None
    try:
        # the SDK asks the engine for its API version as it is made: in a thread
        runtime = await asyncio.to_thread(
            functools.partial(
                DockerRuntime,
                pause_image=pause_image,
                exec_journal=state_dir / "execs",
                volumes=VolumeHost(state_dir / "volumes"),
                network=(network or NetworkOptions()).manager(state_dir),
            )
        )
        await runtime.ping()
        if killed := await runtime.recover():
            log.warning("killed %d exec processes a previous server left running", killed)
    except Exception as exc:
        if runtime is not None:
            await runtime.close()
        where = docker_endpoint()
        if kind == "docker":
            raise UsageError(f"no Docker engine answered at {where}: {exc}") from exc
        log.warning(
            "--runtime auto: no Docker engine answered at %s (%s); using the process runtime",
            where,
            exc,
        )
        return ProcessRuntime(state_dir / "process-pods")
    return runtime


async def cri_nodes(endpoints: list[str], ca: Path | None, state_dir: Path) -> StreamingRuntime:
    """``--cri-endpoint [NAME=]unix:///PATH`` (repeated): each endpoint a node of the gateway.

    A node is named by NAME, else by the runtime's own name (``containerd``, ``streamsrv``),
    numbered when several share one. Each must answer Version now: a typo fails at start.
    """
    from .cri.remote import CriRuntime, NodeSet

    cafile = ca or CertificateAuthority(state_dir).cert_path
    trust = ssl.create_default_context(cafile=str(cafile))
    nodes: list[CriRuntime] = []
    try:
        for spec in endpoints:
            name, sep, endpoint = spec.partition("=")
            if not sep or "://" in name:
                name, endpoint = "", spec
            node = CriRuntime(endpoint, name, stream_ssl=trust)
            nodes.append(node)
            try:
                described = await node.identify()
            except Exception as exc:
                raise UsageError(f"CRI endpoint {endpoint}: {exc}") from exc
            node.node = node.node or described.split()[0]
            log.info("node %s: %s at %s", node.node or "?", described, endpoint)
        seen: dict[str, int] = {}
        for node in nodes:
            seen[node.node] = seen.get(node.node, 0) + 1
        for name in [n for n, count in seen.items() if count > 1]:
            for i, node in enumerate(n for n in nodes if n.node == name):
                node.node = f"{name}-{i}"
    except BaseException:
        for node in nodes:
            await node.close()
        raise
    return NodeSet(nodes)


async def describe(runtime: StreamingRuntime) -> str:
    from .cri.remote import NodeSet

    if isinstance(runtime, NodeSet):
        return "CRI: " + ", ".join(f"{n.node} at {n.endpoint}" for n in runtime.nodes)
    if isinstance(runtime, DockerRuntime):
        return f"docker {await runtime.version()} at {docker_endpoint()}"
    if isinstance(runtime, ContainerdRuntime):
        return (
            f"containerd {await runtime.version()} at {runtime.api.address} "
            f"(namespace {runtime.api.namespace})"
        )
    return "process (local processes, NO isolation: every container runs as this user on this host)"


def limits_from_args(args: argparse.Namespace) -> Limits:
    """The ``--idle-timeout``-style flags as a :class:`Limits`.

    Raises:
        UsageError: a limit that is not positive.
    """
    try:
        return Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)})
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _limit_help(name: str, default: float) -> str:  # int or float
    if isinstance(default, float):
        return f"seconds (default {default:g})"
    if any(word in name for word in ("size", "message", "buffer", "body")):
        return f"bytes (default {default})"
    return f"default {default}"


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: connections, engine sockets and pod dials each
    take a descriptor, and ``max_connections`` should be what runs out first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def own_ssl_context(ca: CertificateAuthority, host: str, client_ca: Path | None) -> ssl.SSLContext:
    """A serving context with our CA's certificate for ``host`` and the loopback names."""
    names = sorted({"localhost", "127.0.0.1", "::1", host} - {"", "0.0.0.0", "::"})
    return server_ssl_context(*ca.serving_cert(names), client_ca)


async def serve(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir
    host, port = args.listen
    try:
        network = NetworkOptions.from_args(args)
        if args.cri_endpoint:
            runtime = await cri_nodes(args.cri_endpoint, args.cri_stream_ca, state_dir)
        else:
            runtime = await pick_runtime(
                args.runtime,
                args.pause_image,
                state_dir,
                network,
                ContainerdOptions.from_args(args),
            )
    except UsageError as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 2
    runtime_text = await describe(runtime)
    log.info("runtime: %s", runtime_text)

    ssl_ctx: ssl.SSLContext | None = None
    ca_pem: bytes | None = None
    client: tuple[bytes, bytes] | None = None  # the kubeconfig user's certificate (mTLS)
    client_ca: Path | None = None
    if args.client_ca == "auto":
        ca = CertificateAuthority(state_dir)
        client_ca, client = ca.cert_path, ca.client_cert()
    elif args.client_ca:
        client_ca = Path(args.client_ca)
    if args.insecure_http:
        log.warning("serving plain http: kubectl will not send its bearer token over it")
    elif args.tls_cert and args.tls_key:
        ssl_ctx = server_ssl_context(args.tls_cert, args.tls_key, client_ca)
    else:
        ca = CertificateAuthority(state_dir)
        ssl_ctx = own_ssl_context(ca, host, client_ca)
        ca_pem = ca.pem
    if client_ca is not None:
        log.info("mutual TLS: clients must present a certificate signed by %s", client_ca)

    token = load_token(state_dir / "token", rotate=args.rotate_token)
    try:
        limits = limits_from_args(args)
    except UsageError as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 2
    raise_fd_limit()
    quiet_accept_errors(asyncio.get_running_loop(), limits.log_interval)
    streams = StreamServer(runtime, Config(ssl=ssl_ctx, limits=limits, record=record_config(args)))
    instrument(runtime, RUNTIME_CALLS, streams.metrics.runtime_calls)
    app = make_app(PodManager(runtime, state_dir), token, streams)

    async def close_runtime(_: web.Application) -> None:
        await runtime.close()

    app.on_cleanup.append(close_runtime)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=log if args.verbose else None,
        **runner_kwargs(limits),
    )
    await runner.setup()
    site = GuardedSite(
        runner, host, port, limits=limits, metrics=streams.metrics, ssl_context=ssl_ctx
    )
    await site.start()
    actual_port = int(runner.addresses[0][1]) if runner.addresses else port
    scheme = "https" if ssl_ctx else "http"
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    url = f"{scheme}://{shown}:{actual_port}"
    streams.base_url = url
    kubeconfig: Path = args.kubeconfig or state_dir / "kubeconfig"
    write_kubeconfig(kubeconfig, url, token, ca_pem, client)
    print(f"streamsrv {__version__} listening on {url} (runtime: {runtime.name})", flush=True)
    print(f"runtime: {runtime_text}", flush=True)
    print(f"kubeconfig written to {kubeconfig}; try:", flush=True)
    print(f"  kubectl --kubeconfig {kubeconfig} get pods", flush=True)
    print(f"  streamsrv pod run -f pod.yaml --kubeconfig {kubeconfig}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)  # where every live task waits
    if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=N: SIGUSR2 logs where memory went
        loop.add_signal_handler(signal.SIGUSR2, log_memory)
    await stop.wait()
    # Stop accepting, give live sessions Limits.shutdown_grace, then end the rest with a
    # status that says why (their processes killed), and only then close the runtime.
    log.info("shutting down")
    await site.stop()
    await streams.shutdown()
    await runner.cleanup()
    log.info("stopped")
    return 0


def stream_ssl(args: argparse.Namespace, state_dir: Path, host: str) -> ssl.SSLContext | None:
    """The stream server's TLS for ``streamsrv cri``: our CA's certificate unless
    ``--stream-plain-http`` (what containerd and a stock kubelet use on loopback)."""
    if args.stream_plain_http:
        return None
    return own_ssl_context(CertificateAuthority(state_dir), host, None)


async def cri(args: argparse.Namespace) -> int:
    """``streamsrv cri``: CRI v1 over gRPC on a unix socket (docs/cri.md)."""
    from .cri.daemon import CriDaemon, EndpointError, install_signal_handlers, socket_path
    from .cri.server import NetworkStatus

    state_dir: Path = args.state_dir
    try:
        socket_path(args.listen)
        limits = limits_from_args(args)
        network = NetworkOptions.from_args(args)
        runtime = await pick_runtime(
            args.runtime, args.pause_image, state_dir, network, ContainerdOptions.from_args(args)
        )
    except (UsageError, EndpointError) as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 2
    log.info("runtime: %s", await describe(runtime))
    images: ImageStore
    if isinstance(runtime, DockerRuntime | ContainerdRuntime):
        images = (
            DockerImages(runtime)
            if isinstance(runtime, DockerRuntime)
            else ContainerdImages(runtime)
        )
        config = network.manager(state_dir).load_config()
        status = (
            NetworkStatus()
            if config is not None
            else NetworkStatus(
                False,
                "NetworkPluginNotReady",
                f"no CNI config in {network.conf_dir}: pods get loopback only",
            )
        )
        mounts = True
    else:
        images = RecordedImages(state_dir / "cri" / "images.json")
        status = NetworkStatus(True, "", "process runtime: containers use the host's network")
        mounts = False
    host, port = args.stream_address
    ssl_ctx = stream_ssl(args, state_dir, host)
    shown = f"[{host}]" if ":" in host else host
    daemon = CriDaemon(
        runtime,
        images,
        state_dir,
        Config(
            listen=f"{shown}:{port}",
            ssl=ssl_ctx,
            limits=limits,
            record=record_config(args),
            access_log=args.verbose,
        ),
        status,
        supports_mounts=mounts,
    )
    raise_fd_limit()
    stop = asyncio.Event()
    install_signal_handlers(stop)
    try:
        await daemon.run(args.listen, stop)
    except EndpointError as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 2
    finally:
        await runtime.close()
    return 0


def log_tasks() -> None:
    """SIGUSR1: log every live asyncio task with the stack it waits in (a stuck session)."""
    tasks = asyncio.all_tasks()
    log.warning("%d live tasks:", len(tasks))
    for task in tasks:
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        log.warning("%s", out.getvalue().rstrip())


def log_memory() -> None:
    top = tracemalloc.take_snapshot().statistics("traceback")[:15]
    log.info("memory: %d KiB traced", sum(s.size for s in top) // 1024)
    for stat in top:
        where = " < ".join(f.strip() for f in stat.traceback.format(most_recent_first=True)[::2])
        log.info("%d KiB in %d blocks: %s", stat.size // 1024, stat.count, where)


# ------------------------------------------------------------------------------- pod client


class Client:
    """A tiny client of the gateway, configured from a kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        if not kubeconfig.exists():
            raise UsageError(f"no kubeconfig at {kubeconfig}: is `streamsrv serve` running?")
        try:  # the same reading, credentials and TLS context as streamsrv.client's
            config = load_kubeconfig(kubeconfig)
            self.ssl: ssl.SSLContext | bool = config.ssl_context() or True
        except ConfigError as exc:
            raise UsageError(str(exc)) from exc
        self.server, self.namespace = config.server, config.namespace
        self.headers = config.request_headers()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.headers) as session,
            session.request(method, self.server + path, json=body, ssl=self.ssl) as resp,
        ):
            data = await resp.json(content_type=None)
            return resp.status, data


def _print_status(data: Any) -> None:
    if isinstance(data, dict) and data.get("kind") == "Status":
        print(f"Error from server ({data.get('reason')}): {data.get('message')}", file=sys.stderr)
    else:
        print(f"Error from server: {data}", file=sys.stderr)


async def pod_command(args: argparse.Namespace) -> int:
    client = Client(args.kubeconfig or args.state_dir / "kubeconfig")
    ns = getattr(args, "namespace", None) or client.namespace
    if args.pod_command == "run":
        try:
            manifest = yaml.safe_load(args.manifest_text)
        except yaml.YAMLError as exc:
            print(f"streamsrv: {args.file} is not valid YAML: {exc}", file=sys.stderr)
            return 1
        if isinstance(manifest, dict):
            ns = (manifest.get("metadata") or {}).get("namespace") or ns
        status, data = await client.request("POST", f"/api/v1/namespaces/{ns}/pods", manifest)
        if status != 201:
            _print_status(data)
            return 1
        print(f"pod/{data['metadata']['name']} created")
        return 0
    if args.pod_command == "ls":
        path = "/api/v1/pods" if args.all_namespaces else f"/api/v1/namespaces/{ns}/pods"
        status, data = await client.request("GET", path)
        if status != 200:
            _print_status(data)
            return 1
        if args.output == "json":
            print(json.dumps(data, indent=2))
            return 0
        rows = [("NAMESPACE", "NAME", "READY", "STATUS", "CONTAINERS")]
        for item in data["items"]:
            statuses = item["status"].get("containerStatuses", [])
            ready = sum(1 for s in statuses if s.get("ready"))
            names = ",".join(c["name"] for c in item["spec"]["containers"])
            rows.append(
                (
                    item["metadata"]["namespace"],
                    item["metadata"]["name"],
                    f"{ready}/{len(statuses)}",
                    item["status"]["phase"],
                    names,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return 0
    if args.pod_command == "rm":
        code = 0
        for name in args.names:
            status, data = await client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
            if status != 200:
                _print_status(data)
                code = 1
            else:
                print(f'pod "{name}" deleted')
        return code
    raise AssertionError(args.pod_command)


#: The runtime calls ``streamsrv serve`` times (``streamsrv_runtime_call_duration_seconds``);
#: exec and attach last as long as their sessions (``streamsrv_session_duration_seconds``).
RUNTIME_CALLS = (
    "ensure_image",
    "run_pod_sandbox",
    "stop_pod_sandbox",
    "remove_pod_sandbox",
    "list_pod_sandboxes",
    "create_container",
    "start_container",
    "stop_container",
    "remove_container",
    "list_containers",
    "container_stopped",
    "sandbox_ready",
    "dial",
)


def add_containerd_args(s: argparse.ArgumentParser) -> None:
    group = s.add_argument_group("containerd runtime (--runtime containerd; docs/containerd.md)")
    group.add_argument(
        "--containerd-address",
        default=ctdclient.DEFAULT_ADDRESS,
        metavar="PATH",
        help="containerd's gRPC socket (default: %(default)s)",
    )
    group.add_argument(
        "--containerd-namespace",
        default=ctdclient.DEFAULT_NAMESPACE,
        metavar="NAME",
        help="the containerd namespace of our pods and images (default: %(default)s); what is "
        "left there by an earlier server is removed at start",
    )
    group.add_argument(
        "--containerd-snapshotter",
        default="overlayfs",
        metavar="NAME",
        help="the snapshotter the images were unpacked with (default: %(default)s)",
    )


def add_network_args(s: argparse.ArgumentParser) -> None:
    net = s.add_argument_group(
        "pod network (CNI)",
        "pods that are not hostNetwork get their network from the first CNI config found "
        "(docker runtime; without a config: loopback only)",
    )
    net.add_argument(
        "--cni-conf-dir",
        type=Path,
        default=Path("/etc/cni/net.d"),
        help="the first *.conflist, *.conf or *.json here is used (default: %(default)s)",
    )
    net.add_argument(
        "--cni-bin-dir",
        type=Path,
        action="append",
        help="where the plugins are (repeatable; default /usr/lib/cni and /opt/cni/bin)",
    )
    net.add_argument(
        "--cni-netns",
        type=Path,
        metavar="PATH",
        help="run the CNI plugins inside this network namespace (e.g. /var/run/netns/pods): "
        "the bridge and the host end of each pod's interface then live there, not in the "
        "server's own namespace",
    )


_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or plain seconds; ``0`` for none."""
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * _SECONDS[t[-1]] if t and t[-1] in _SECONDS else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30d, 12h, 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a duration cannot be negative: {text!r}")
    return value


def parse_size(text: str) -> int:
    """``1G``, ``500M``, ``64K`` (powers of 1024), plain bytes; ``0`` for none."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1] if t and t[-1] in _BYTES else ""
    try:
        value = int(float(t[: len(t) - len(unit)]) * _BYTES[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 1G, 500M, 0)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a size cannot be negative: {text!r}")
    return value


def add_record_args(s: argparse.ArgumentParser) -> None:
    rec = s.add_argument_group(
        "recording and audit",
        "record exec and attach sessions as asciicast v2 files and write one JSON audit line "
        "per session (docs/recording.md)",
    )
    rec.add_argument(
        "--record",
        type=Path,
        metavar="DIR",
        help="record every exec and attach session in DIR (made 0700, files 0600) and write "
        "the audit log there (audit-YYYYMMDD.jsonl); off by default",
    )
    rec.add_argument(
        "--record-input",
        action="store_true",
        help="record what clients type too (off by default: input holds passwords typed at "
        "prompts that do not echo them)",
    )
    defaults = RecordConfig(Path())
    rec.add_argument(
        "--record-max-age",
        type=parse_duration,
        default=defaults.max_age,
        metavar="AGE",
        help="remove recordings and audit files older than this (e.g. 30d, 12h; 0 keeps them; "
        "default 30d)",
    )
    rec.add_argument(
        "--record-max-size",
        type=parse_size,
        default=defaults.max_bytes,
        metavar="SIZE",
        help="keep recordings and audit files under this total by removing the oldest (e.g. "
        "10G; 0 is no bound; default 1G)",
    )
    rec.add_argument(
        "--record-max-rate",
        type=parse_size,
        default=defaults.max_rate,
        metavar="SIZE",
        help="bytes per second one session's recording takes on average, in bursts of up to "
        "4M; faster output (cat of a large file) is left out, marked in the recording "
        "(default 1M; 0 is no bound)",
    )


#: ``--record-max-rate 0``: a rate no session reaches.
NO_RATE_BOUND = 1 << 62


def record_config(args: argparse.Namespace) -> RecordConfig | None:
    if args.record is None:
        return None
    return RecordConfig(
        args.record.absolute(),
        record_input=args.record_input,
        max_age=args.record_max_age,
        max_bytes=args.record_max_size,
        max_rate=args.record_max_rate or NO_RATE_BOUND,
    )


def add_limit_args(s: argparse.ArgumentParser) -> None:
    limits = s.add_argument_group(
        "limits", "bounds on time, memory and concurrency (docs/architecture.md, Limits)"
    )
    defaults = Limits()
    for f in dataclasses.fields(Limits):
        default = getattr(defaults, f.name)
        limits.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(default),
            default=default,
            metavar="N",
            help=_limit_help(f.name, default),
        )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamsrv", description=__doc__)
    p.add_argument("--version", action="version", version=f"streamsrv {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="CA, certificates and the kubeconfig (default: %(default)s)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the server")
    s.add_argument("--runtime", choices=["auto", "docker", "containerd", "process"], default="auto")
    s.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 6443),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:6443; port 0 picks one)",
    )
    s.add_argument("--kubeconfig", type=Path, help="where to write the kubeconfig")
    s.add_argument("--pause-image", default=DEFAULT_PAUSE_IMAGE)
    add_containerd_args(s)
    add_network_args(s)
    s.add_argument(
        "--cri-endpoint",
        action="append",
        metavar="[NAME=]unix:///PATH",
        help="front this CRI runtime instead of running one in-process (repeatable: each "
        "endpoint is a node); sessions are proxied to its stream server (docs/cri.md)",
    )
    s.add_argument(
        "--cri-stream-ca",
        type=Path,
        metavar="FILE",
        help="CA that https stream URLs of the CRI endpoints are checked against (default: "
        "STATE_DIR's CA, which `streamsrv cri` with the same state dir uses)",
    )
    s.add_argument("--tls-cert", type=Path, help="serve this certificate instead of our own CA's")
    s.add_argument("--tls-key", type=Path)
    s.add_argument(
        "--client-ca",
        metavar="FILE|auto",
        help="mutual TLS: every client (kubectl, stream URLs, the browser page) must present a "
        "certificate signed by this CA; 'auto' uses streamsrv's own CA and puts a client "
        "certificate into the kubeconfig",
    )
    s.add_argument(
        "--rotate-token",
        action="store_true",
        help="make a new bearer token: kubeconfigs copied earlier stop working (by default the "
        "token in STATE_DIR/token is kept across restarts)",
    )
    s.add_argument(
        "--insecure-http",
        action="store_true",
        help="plain http (kubectl then sends no bearer token, so only non-kubectl clients work)",
    )

    add_limit_args(s)
    add_record_args(s)

    c = sub.add_parser(
        "cri",
        help="serve CRI v1 over gRPC (for a kubelet, crictl, or `serve --cri-endpoint`)",
        description="CRI v1 (runtime.v1 RuntimeService and ImageService) over gRPC on a unix "
        "socket, with the stream server for Exec/Attach/PortForward in the same process "
        "(docs/cri.md).",
    )
    c.add_argument(
        "--listen",
        default="unix:///run/streamsrv/cri.sock",
        metavar="unix:///PATH",
        help="the socket (made 0600; default: %(default)s)",
    )
    c.add_argument("--runtime", choices=["auto", "docker", "containerd", "process"], default="auto")
    c.add_argument(
        "--stream-address",
        type=parse_listen,
        default=("127.0.0.1", 0),
        metavar="HOST:PORT",
        help="where the stream server listens (default 127.0.0.1:0, a free port)",
    )
    c.add_argument(
        "--stream-plain-http",
        action="store_true",
        help="stream URLs over plain http, as containerd's default (a stock kubelet does not "
        "trust our CA); by default https with STATE_DIR's CA",
    )
    c.add_argument("--pause-image", default=DEFAULT_PAUSE_IMAGE)
    add_containerd_args(c)
    add_network_args(c)
    add_limit_args(c)
    add_record_args(c)

    pod = sub.add_parser("pod", help="manage pods through a running server")
    pod.add_argument("--kubeconfig", type=Path)
    psub = pod.add_subparsers(dest="pod_command", required=True)
    run = psub.add_parser("run", help="create a pod from a v1 Pod manifest")
    run.add_argument("-f", "--file", required=True, help="manifest file, or - for stdin")
    run.add_argument("-n", "--namespace")
    ls = psub.add_parser("ls", help="list pods")
    ls.add_argument("-n", "--namespace")
    ls.add_argument("-A", "--all-namespaces", action="store_true")
    ls.add_argument("-o", "--output", choices=["table", "json"], default="table")
    rm = psub.add_parser("rm", help="delete pods")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.add_argument("-n", "--namespace")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "serve" and bool(args.tls_cert) != bool(args.tls_key):
        print("streamsrv: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if args.command == "serve" and args.client_ca and args.insecure_http:
        print("streamsrv: --client-ca needs TLS (not --insecure-http)", file=sys.stderr)
        return 2
    try:
        private_dir(args.state_dir)
        if getattr(args, "pod_command", None) == "run":
            args.manifest_text = (
                sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
            )
        if args.command in ("serve", "cri"):
            # Read buffers from the heap, not a fresh mmap each (docs/benchmarks.md, "glibc's
            # mmap threshold").
            raise_mmap_threshold()
        if args.command == "serve":
            return asyncio.run(serve(args))
        if args.command == "cri":
            return asyncio.run(cri(args))
        return asyncio.run(pod_command(args))
    except UsageError as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"streamsrv: {exc}", file=sys.stderr)
        return 1
    except aiohttp.ClientError as exc:
        print(f"streamsrv: cannot reach the server: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
