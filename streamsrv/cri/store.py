"""What the CRI server remembers of its sandboxes and containers (docs/cri.md, "State").

The runtime knows what runs; CRI also promises things no runtime keeps: the exact config a
sandbox or container was made from (metadata, labels, annotations, mounts, log path), the
attempt numbers that make names unique, and creation times to the nanosecond. Those are kept
here, one small file per object under ``STATE_DIR/cri/``, written atomically before the call
that made the object returns, so a restarted server answers List and Status calls the same
way. Each record holds the config exactly as the client sent it (its serialized bytes), so
labels and annotations round-trip byte for byte, unknown fields included.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import write_private

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9A-Za-z_.-]{1,128}")


@dataclass(slots=True)
class SandboxRecord:
    id: str
    config: bytes  # PodSandboxConfig, serialized as the client sent it
    created_at: int  # nanoseconds since the epoch
    runtime_handler: str = ""
    stopped: bool = False  # StopPodSandbox was called: NOTREADY from then on


@dataclass(slots=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    config: bytes  # ContainerConfig, serialized as the client sent it
    created_at: int
    log_path: str = ""  # the full path: the sandbox's log_directory joined with log_path
    image_ref: str = ""


class Store:
    """Records in memory, mirrored to files in ``root`` (0700; each file 0600)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sandboxes: dict[str, SandboxRecord] = {}
        self.containers: dict[str, ContainerRecord] = {}
        for sub in ("sandboxes", "containers"):
            (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        self._load()

    # ------------------------------------------------------------------------------ files

    def _path(self, kind: str, oid: str) -> Path:
        if not _ID.fullmatch(oid):  # ids come from the runtime; never a path of their own
            raise ValueError(f"unusable id {oid!r}")
        return self.root / kind / f"{oid}.json"

    def _write(self, kind: str, oid: str, data: dict[str, object]) -> None:
        write_private(self._path(kind, oid), json.dumps(data, separators=(",", ":")).encode())

    def _unlink(self, kind: str, oid: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(kind, oid).unlink()

    def _read(self, kind: str) -> Iterator[dict[str, Any]]:
        """Every record of ``kind`` that reads as JSON (one warning for each that does not)."""
        for path in sorted((self.root / kind).glob("*.json")):
            try:
                yield json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                log.warning("CRI record %s is unreadable (%s): ignored", path, exc)

    def _load(self) -> None:
        for d in self._read("sandboxes"):
            try:
                rec = SandboxRecord(
                    id=str(d["id"]),
                    config=base64.b64decode(d["config"]),
                    created_at=int(d["created_at"]),
                    runtime_handler=str(d.get("runtime_handler", "")),
                    stopped=bool(d.get("stopped", False)),
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("CRI sandbox record %.80r is unreadable (%s): ignored", d, exc)
                continue
            self.sandboxes[rec.id] = rec
        for d in self._read("containers"):
            try:
                crec = ContainerRecord(
                    id=str(d["id"]),
                    sandbox_id=str(d["sandbox_id"]),
                    config=base64.b64decode(d["config"]),
                    created_at=int(d["created_at"]),
                    log_path=str(d.get("log_path", "")),
                    image_ref=str(d.get("image_ref", "")),
                )
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("CRI container record %.80r is unreadable (%s): ignored", d, exc)
                continue
            self.containers[crec.id] = crec

    # ------------------------------------------------------------------------------ records

    def put_sandbox(self, rec: SandboxRecord) -> None:
        self._write(
            "sandboxes",
            rec.id,
            {
                "id": rec.id,
                "config": base64.b64encode(rec.config).decode(),
                "created_at": rec.created_at,
                "runtime_handler": rec.runtime_handler,
                "stopped": rec.stopped,
            },
        )
        self.sandboxes[rec.id] = rec

    def put_container(self, rec: ContainerRecord) -> None:
        self._write(
            "containers",
            rec.id,
            {
                "id": rec.id,
                "sandbox_id": rec.sandbox_id,
                "config": base64.b64encode(rec.config).decode(),
                "created_at": rec.created_at,
                "log_path": rec.log_path,
                "image_ref": rec.image_ref,
            },
        )
        self.containers[rec.id] = rec

    def drop_sandbox(self, oid: str) -> None:
        self._unlink("sandboxes", oid)
        self.sandboxes.pop(oid, None)

    def drop_container(self, oid: str) -> None:
        self._unlink("containers", oid)
        self.containers.pop(oid, None)

    def resolve(
        self, table: dict[str, SandboxRecord] | dict[str, ContainerRecord], ref: str
    ) -> str | None:
        """The full id ``ref`` names: itself, or the one id it is a unique prefix of."""
        if ref in table:
            return ref
        if not ref:
            return None
        found = [oid for oid in table if oid.startswith(ref)]
        return found[0] if len(found) == 1 else None
