"""Signed, single-use, short-lived tokens for stream URLs (docs/protocol.md §1.3).

The kubelet's streaming library keeps each validated exec/attach/port-forward request in a
``requestCache`` (``pkg/kubelet/cri/streaming/request_cache.go``) under a random 8-character
token and hands the client ``<base>/exec/<token>``. :class:`RequestCache` keeps that contract --
60 s TTL, at most 1000 requests in flight, expired entries collected oldest-first on every
insert, and a consume that always removes the entry -- and adds an HMAC: a token is an
:mod:`itsdangerous` ``TimestampSigner`` signature over a random nonce, salted with the request
*kind*, so its kind and issue time are bound into it. A forged token, a token past its TTL, and
an exec token presented on ``/attach`` are refused before the cache is even looked at.

Purposes: every request is inserted for a *purpose* (``"default"`` unless the caller names one,
e.g. ``"browser"`` for a web console), and each purpose has its own count and its own cap, so
one noisy client population cannot lock the others out. The ``"default"`` purpose, and any
purpose not named in ``capacity``, may hold ``max_in_flight`` requests; a purpose named in
``capacity`` holds at most its own number. :class:`CacheFull` means *that* purpose is full; the
others still take requests. The purpose is kept in the entry, not in the token: ``consume``
finds the entry by its token alone and frees the slot of whatever purpose it was issued for.
The entries of all purposes share one expiry-ordered queue (the TTL is the same for all), so
collecting expired entries stays O(expired) per insert; per-purpose counters follow every
entry that is collected or consumed.

Token shape: ``<nonce>.<timestamp>.<signature>``, about 47 URL-safe characters
(``A-Z a-z 0-9 - _ .``): 12 characters of nonce (``secrets.token_urlsafe(9)``), the issue time
in base64 and an HMAC-SHA1 in base64.

Differences from Go, on purpose:

* A token of the wrong kind fails its signature check, so the request it names stays in the
  cache and still works on its own route (Go's ``Consume`` deletes it, then the handler
  answers 404 for the type mismatch).
* Capacity is per purpose (above); Go has one global limit.
* The signature's timestamp has 1 s resolution (and comes from the wall clock), so the
  signature check is a coarse guard; the cache's own expiry, taken from the monotonic clock,
  decides to the TTL exactly. A wall clock stepped backwards makes outstanding tokens fail
  until it catches up (they live 60 s at most).

HTTP mapping, in one place as Go's ``errors.go`` does it: every :class:`TokenError` has an
``http_status``: :class:`TokenNotFound` 404 (Go's ``http.NotFound``), :class:`CacheFull` 429 with
``Retry-After: <retry_after>`` (Go: ``ResourceExhausted`` with ``Retry-After: 60``).

Not thread-safe: use a cache from one event loop (nothing in it blocks or awaits).
"""

from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar, Generic, TypeVar

from itsdangerous import BadData, TimestampSigner

from .errors import RequestError

T = TypeVar("T")

#: Go's ``cacheTTL``.
DEFAULT_TTL = 60.0
#: Go's ``maxInFlight``.
DEFAULT_MAX_IN_FLIGHT = 1000
#: The purpose of an insert that names none; its cap is ``max_in_flight``.
DEFAULT_PURPOSE = "default"
# A real token is about 47 characters; anything much longer is not worth an HMAC.
_MAX_TOKEN_LENGTH = 256
_NONCE_BYTES = 9
_SALT_PREFIX = "streamsrv.tokens."


class TokenError(RequestError):
    """A token could not be issued or used.

    Attributes:
        http_status: the HTTP status to answer with (500 for an unexpected subclass, as Go's
            ``WriteError`` maps unknown errors).
    """

    http_status: ClassVar[int] = 500


class TokenNotFound(TokenError):
    """Unknown, forged, expired, already used, or issued for another kind: HTTP 404."""

    http_status: ClassVar[int] = 404

    def __init__(self, message: str = "token not found") -> None:
        super().__init__(message)


class CacheFull(TokenError):
    """Too many requests waiting for their client: HTTP 429 with ``Retry-After``.

    Attributes:
        retry_after: seconds after which a slot is sure to have freed up (the TTL, rounded up).
        purpose: the purpose that is full (other purposes may still have room). It is not in
            the message, which is meant for the client.
    """

    http_status: ClassVar[int] = 429

    def __init__(self, retry_after: int, purpose: str = DEFAULT_PURPOSE) -> None:
        super().__init__("maximum number of in-flight requests exceeded")
        self.retry_after = retry_after
        self.purpose = purpose


class _Signer(TimestampSigner):
    """A ``TimestampSigner`` whose clock is injected (itsdangerous reads ``time.time``)."""

    def __init__(self, secret: bytes, salt: str, clock: Callable[[], float]) -> None:
        super().__init__(secret, salt=salt, key_derivation="hmac")
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock())


@dataclass(slots=True)
class _Entry(Generic[T]):
    request: T
    kind: str
    purpose: str
    expires: float


class RequestCache(Generic[T]):
    """Requests waiting for their one stream connection, keyed by signed tokens.

    Args:
        secret: the HMAC key; ``None`` (or empty) draws 32 random bytes, so tokens die with
            the process, as Go's in-memory cache does. Share one secret between processes only
            if they share the cache too.
        ttl: seconds a token stays usable (Go: 1 minute).
        max_in_flight: unexpired requests held at most for the ``"default"`` purpose and for
            each purpose not in ``capacity`` (Go: 1000, for everything together).
        capacity: the cap of each named purpose, e.g. ``{"browser": 100}``; every purpose is
            counted on its own. Set the ``"default"`` purpose's cap with ``max_in_flight``.
        clock: monotonic seconds for the cache's expiry (injectable for tests).
        wall_clock: Unix seconds for the signature's timestamp (injectable for tests).
    """

    def __init__(
        self,
        secret: bytes | None = None,
        *,
        ttl: float = DEFAULT_TTL,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        capacity: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, not {ttl}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        caps = dict(capacity or {})
        if DEFAULT_PURPOSE in caps:
            raise ValueError(
                f"the {DEFAULT_PURPOSE!r} purpose's capacity is max_in_flight, not capacity[...]"
            )
        for purpose, cap in caps.items():
            if cap < 1:
                raise ValueError(f"capacity of purpose {purpose!r} must be at least 1, not {cap}")
        self.ttl = ttl
        self.max_in_flight = max_in_flight
        #: The caps of the named purposes (read-only); others have ``max_in_flight``.
        self.capacity: Mapping[str, int] = MappingProxyType(caps)
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock
        self._wall_clock = wall_clock
        # The signature's age is checked in whole seconds.
        self._max_age = math.ceil(ttl)
        self._signers: dict[str, _Signer] = {}
        # Insertion order is expiry order: the TTL is fixed and the clock monotonic.
        self._entries: OrderedDict[bytes, _Entry[T]] = OrderedDict()
        # Entries held per purpose; a purpose leaves the dict when its count drops to zero, so
        # purposes named only by callers cannot pile up.
        self._counts: dict[str, int] = {}

    def __len__(self) -> int:
        """Requests held for all purposes, including expired ones not yet collected."""
        return len(self._entries)

    def in_flight(self, purpose: str = DEFAULT_PURPOSE) -> int:
        """Requests held for ``purpose``, including expired ones not yet collected.

        Every insert collects first, so right after one this is the unexpired, unconsumed
        count, the number that insert compared with the purpose's cap.
        """
        return self._counts.get(purpose, 0)

    def usage(self) -> dict[str, tuple[int, int]]:
        """``{purpose: (held, cap)}`` for the default purpose, every named one and any other
        that holds requests now (the metrics' token gauges)."""
        purposes = {DEFAULT_PURPOSE, *self.capacity, *self._counts}
        return {p: (self._counts.get(p, 0), self._cap(p)) for p in purposes}

    def _cap(self, purpose: str) -> int:
        return self.capacity.get(purpose, self.max_in_flight)

    def _forget(self, entry: _Entry[T]) -> None:
        """Give back the slot of an entry just removed from ``_entries``."""
        left = self._counts[entry.purpose] - 1
        if left:
            self._counts[entry.purpose] = left
        else:
            del self._counts[entry.purpose]

    def _signer(self, kind: str) -> _Signer:
        signer = self._signers.get(kind)
        if signer is None:
            signer = self._signers[kind] = _Signer(
                self._secret, _SALT_PREFIX + kind, self._wall_clock
            )
        return signer

    def _collect(self, now: float) -> None:
        """Drop expired entries, oldest first (Go ``requestCache.gc``)."""
        entries = self._entries
        while entries:
            nonce, entry = next(iter(entries.items()))
            if now < entry.expires:
                return
            del entries[nonce]
            self._forget(entry)

    def insert(self, kind: str, request: T, *, purpose: str = DEFAULT_PURPOSE) -> str:
        """Keep ``request`` and return the token that fetches it once.

        Args:
            kind: what the token is for (``exec``, ``attach``, ``portforward``); a token only
                works with the same kind.
            request: the validated request.
            purpose: whose slot the request takes (see the module docstring); not part of the
                token.

        Returns:
            A URL-safe token (``A-Z a-z 0-9 - _ .``), unique among the tokens in flight.

        Raises:
            CacheFull: ``purpose`` holds as many unexpired requests as its cap allows already
                (HTTP 429); other purposes are not affected.
        """
        now = self._clock()
        self._collect(now)
        held = self._counts.get(purpose, 0)
        if held >= self._cap(purpose):
            raise CacheFull(math.ceil(self.ttl), purpose)
        nonce = secrets.token_urlsafe(_NONCE_BYTES).encode("ascii")
        while nonce in self._entries:  # 72 random bits: practically never taken
            nonce = secrets.token_urlsafe(_NONCE_BYTES).encode("ascii")
        self._entries[nonce] = _Entry(request, kind, purpose, now + self.ttl)
        self._counts[purpose] = held + 1
        return self._signer(kind).sign(nonce).decode("ascii")

    def consume(self, kind: str, token: str) -> T:
        """Return the request behind ``token`` and forget it (single use).

        The signature is checked first, with ``kind`` and the TTL: a forged, stale or
        other-kind token is refused without touching the cache. Otherwise the entry is
        removed whatever happens next, and an entry past its expiry is reported as not found
        (Go ``requestCache.Consume``). A removed entry frees a slot of its own purpose.

        Args:
            kind: the route's kind; must be the one the token was issued for.
            token: the token from the URL.

        Raises:
            TokenNotFound: forged, stale, of another kind, already used, or unknown (HTTP 404).
        """
        if len(token) > _MAX_TOKEN_LENGTH:
            raise TokenNotFound()
        try:
            nonce = self._signer(kind).unsign(token, max_age=self._max_age)
        except BadData:
            raise TokenNotFound() from None
        entry = self._entries.pop(nonce, None)
        if entry is None:
            raise TokenNotFound()
        self._forget(entry)
        if entry.kind != kind or self._clock() > entry.expires:
            raise TokenNotFound()
        return entry.request
