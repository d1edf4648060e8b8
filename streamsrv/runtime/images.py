"""The image manager: what CRI's ImageService asks of a runtime (docs/cri.md, "Images").

Three stores behind one small interface: the Docker engine's images, containerd's
(``containerd.ContainerdImages``: in the containerd runtime's namespace; it does not pull), and
the process runtime's record of the names it was asked to pull (it runs host programs, so an
"image" there is only a name that CreateContainer must have seen pulled, as on a real runtime).

References are normalised as containerd's CRI plugin shows them (``busybox`` is
``docker.io/library/busybox:latest``), so a client sees the same names from either runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import docker.errors

from ..files import write_private
from .base import BackendError, ImageNotFound

if TYPE_CHECKING:
    from .docker import DockerRuntime

DEFAULT_DOMAIN = "docker.io"


#: The reference grammar of distribution/reference (what containerd and Docker accept).
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?)"  # noqa: E501
_REFERENCE = re.compile(
    rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?"
    r"(?:@sha256:[0-9a-f]{64})?"
)


def normalize_ref(ref: str) -> str:
    """The fully qualified form of an image reference (``docker.io/library/x:latest``).

    Raises:
        ValueError: not a reference at all.
    """
    if len(ref) > 4096 or not _REFERENCE.fullmatch(ref):
        raise ValueError(f"invalid reference format: {ref[:80]!r}")
    name, digest = (ref.split("@", 1) + [""])[:2] if "@" in ref else (ref, "")
    first, slash, rest = name.partition("/")
    if not slash:
        name = f"{DEFAULT_DOMAIN}/library/{name}"
    elif not ("." in first or ":" in first or first == "localhost"):
        name = f"{DEFAULT_DOMAIN}/{name}"
    if digest:
        return f"{name}@{digest}"
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def familiar(ref: str) -> str:
    """Docker's short form of a normalised reference (``busybox:latest``), for the engine."""
    for prefix in (f"{DEFAULT_DOMAIN}/library/", f"{DEFAULT_DOMAIN}/"):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


@dataclass(frozen=True, slots=True)
class ImageInfo:
    id: str  # sha256:...
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...] = ()
    size: int = 0
    uid: int | None = None
    username: str = ""


@dataclass(frozen=True, slots=True)
class FsUsage:
    mountpoint: str
    used_bytes: int
    inodes_used: int


class ImageStore(Protocol):
    async def list_images(self) -> list[ImageInfo]: ...

    async def image_status(self, ref: str) -> ImageInfo | None:
        """The image ``ref`` names (a reference or an image id), or None."""
        ...

    async def pull_image(self, ref: str) -> ImageInfo:
        """Raises ImageNotFound when it cannot be had."""
        ...

    async def remove_image(self, ref: str) -> None:
        """Remove it; an image that is not there is no error."""
        ...

    async def fs_usage(self) -> FsUsage: ...


def config_user(value: str) -> tuple[int | None, str]:
    """An image config's ``User`` as CRI's ImageStatus has it: (uid, "") or (None, name)."""
    user = value.split(":", 1)[0]
    if not user:
        return None, ""
    return (int(user), "") if user.isdigit() else (None, user)


class DockerImages:
    """The engine's images, through the runtime's engine connection and thread pool."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self.runtime = runtime

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self.runtime._call(fn, *args, **kwargs)

    def _info(self, inspect: dict[str, Any]) -> ImageInfo:
        uid, username = config_user(str((inspect.get("Config") or {}).get("User") or ""))
        return ImageInfo(
            id=str(inspect["Id"]),
            repo_tags=tuple(normalize_ref(t) for t in inspect.get("RepoTags") or ()),
            repo_digests=tuple(normalize_ref(d) for d in inspect.get("RepoDigests") or ()),
            size=int(inspect.get("Size") or 0),
            uid=uid,
            username=username,
        )

    async def list_images(self) -> list[ImageInfo]:
        summaries: Sequence[dict[str, Any]] = await self._call(self.runtime.api.images)
        out = []
        for s in summaries:
            with contextlib.suppress(BackendError):  # removed in between
                inspect = await self._call(self.runtime.api.inspect_image, s["Id"])
                out.append(self._info(inspect))
        return out

    async def image_status(self, ref: str) -> ImageInfo | None:
        if not ref:
            return None
        try:
            inspect = await self.runtime._thread(self.runtime.api.inspect_image, familiar(ref))
        except docker.errors.NotFound:
            return None
        except docker.errors.APIError as exc:
            if exc.status_code == 400:  # not a reference at all
                return None
            raise BackendError(str(exc.explanation or exc)) from exc
        except Exception as exc:
            raise BackendError(f"image {ref}: {exc}") from exc
        return self._info(inspect)

    async def pull_image(self, ref: str) -> ImageInfo:
        await self.runtime.ensure_image(familiar(normalize_ref(ref)))
        info = await self.image_status(ref)
        if info is None:
            raise ImageNotFound(ref, "not present after pull")
        return info

    async def remove_image(self, ref: str) -> None:
        info = await self.image_status(ref)
        if info is None:
            return
        try:
            await self.runtime._thread(self.runtime.api.remove_image, info.id, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise BackendError(str(exc.explanation or exc)) from exc

    async def fs_usage(self) -> FsUsage:
        info: dict[str, Any] = await self._call(self.runtime.api.info)
        root = str(info.get("DockerRootDir") or "")
        images = await self.list_images()
        return FsUsage(root, sum(i.size for i in images), 0)


class RecordedImages:
    """The process runtime's images: names recorded in ``path`` (a JSON list) when pulled."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        try:
            self._refs: list[str] = [str(r) for r in json.loads(path.read_text())]
        except (OSError, ValueError):
            self._refs = []

    @staticmethod
    def _id(ref: str) -> str:
        return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()

    def _info(self, ref: str) -> ImageInfo:
        return ImageInfo(id=self._id(ref), repo_tags=(ref,))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_private(self.path, json.dumps(self._refs).encode())

    def _find(self, ref: str) -> str | None:
        if not ref:
            return None
        try:
            norm = normalize_ref(ref) if not ref.startswith("sha256:") else ""
        except ValueError:
            return None
        for known in self._refs:
            if known == norm or self._id(known) == ref:
                return known
        return None

    async def list_images(self) -> list[ImageInfo]:
        return [self._info(r) for r in self._refs]

    async def image_status(self, ref: str) -> ImageInfo | None:
        found = self._find(ref)
        return None if found is None else self._info(found)

    async def pull_image(self, ref: str) -> ImageInfo:
        norm = normalize_ref(ref)
        async with self._lock:
            if norm not in self._refs:
                self._refs.append(norm)
                self._save()
        return self._info(norm)

    async def remove_image(self, ref: str) -> None:
        async with self._lock:
            found = self._find(ref)
            if found is not None:
                self._refs.remove(found)
                self._save()

    async def fs_usage(self) -> FsUsage:
        # nothing is stored for an image here: its record is all of it
        return FsUsage(str(self.path.parent), 0, 0)
