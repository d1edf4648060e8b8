"""The signed single-use request cache behind stream URLs (docs/protocol.md §1.3), fake clock."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from itsdangerous import TimestampSigner

from streamsrv.errors import RequestError, StreamsrvError
from streamsrv.tokens import CacheFull, RequestCache, TokenError, TokenNotFound

SECRET = b"s" * 32
URL_SAFE = re.compile(r"[A-Za-z0-9_\-.]+")


@dataclass
class Clock:
    """One fake time source for both the monotonic and the wall clock."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> RequestCache[str]:
    return RequestCache(SECRET, clock=clock, wall_clock=clock)


def test_insert_then_consume(cache: RequestCache[str]) -> None:
    token = cache.insert("exec", "request-1")
    assert len(cache) == 1
    assert cache.consume("exec", token) == "request-1"
    assert len(cache) == 0


def test_reuse_is_not_found(cache: RequestCache[str]) -> None:
    token = cache.insert("exec", "request-1")
    cache.consume("exec", token)
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)


def test_tokens_are_url_safe_unique_and_short(cache: RequestCache[str]) -> None:
    tokens = {cache.insert("exec", str(i)) for i in range(1000)}
    assert len(tokens) == 1000
    for token in tokens:
        assert URL_SAFE.fullmatch(token), token
        assert len(token) <= 64


def test_each_token_finds_its_own_request(cache: RequestCache[str]) -> None:
    tokens = [(cache.insert("exec", f"r{i}"), f"r{i}") for i in range(10)]
    for token, request in reversed(tokens):
        assert cache.consume("exec", token) == request


def test_valid_until_the_ttl(cache: RequestCache[str], clock: Clock) -> None:
    token = cache.insert("exec", "request")
    clock.now += 60  # Go: expired only once now is *after* the expiry
    assert cache.consume("exec", token) == "request"


def test_expired_is_not_found(cache: RequestCache[str], clock: Clock) -> None:
    token = cache.insert("exec", "request")
    clock.now += 61
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)


def test_stale_token_is_refused_by_its_signature_before_the_lookup(clock: Clock) -> None:
    # Only the wall clock moves: the cache entry would still be valid, the signature is not.
    wall = Clock(clock.now)
    cache: RequestCache[str] = RequestCache(SECRET, clock=clock, wall_clock=wall)
    token = cache.insert("exec", "request")
    wall.now += 61
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)
    assert len(cache) == 1  # not even looked up
    wall.now -= 61
    assert cache.consume("exec", token) == "request"


def test_expired_entry_is_removed_on_consume(clock: Clock) -> None:
    # Only the monotonic clock moves: the signature passes, the cache's expiry does not.
    wall = Clock(clock.now)
    cache: RequestCache[str] = RequestCache(SECRET, clock=clock, wall_clock=wall)
    token = cache.insert("exec", "request")
    clock.now += 60.5
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)
    assert len(cache) == 0  # single use: removed even though it had expired


def test_token_from_the_future_is_refused(clock: Clock) -> None:
    wall = Clock(clock.now)
    cache: RequestCache[str] = RequestCache(SECRET, clock=clock, wall_clock=wall)
    token = cache.insert("exec", "request")
    wall.now -= 5  # wall clock stepped back
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)


def _flip(token: str, index: int) -> str:
    swap = "B" if token[index] == "A" else "A"
    return token[:index] + swap + token[index + 1 :]


@pytest.mark.parametrize("where", ["signature", "timestamp", "nonce"])
def test_forged_token_is_not_found(cache: RequestCache[str], where: str) -> None:
    token = cache.insert("exec", "request")
    nonce, timestamp, signature = token.split(".")
    index = {"nonce": 0, "timestamp": len(nonce) + 1, "signature": len(token) - 2}[where]
    with pytest.raises(TokenNotFound):
        cache.consume("exec", _flip(token, index))
    assert len(cache) == 1
    assert cache.consume("exec", token) == "request"


@pytest.mark.parametrize(
    "token", ["", "not-a-token", "a.b", "a.b.c", "....", "\u00e9.x.y", "A" * 47, "x" * 10_000]
)
def test_garbage_is_not_found(cache: RequestCache[str], token: str) -> None:
    cache.insert("exec", "request")
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)


def test_other_secret_is_not_found(clock: Clock) -> None:
    one: RequestCache[str] = RequestCache(SECRET, clock=clock, wall_clock=clock)
    other: RequestCache[str] = RequestCache(b"t" * 32, clock=clock, wall_clock=clock)
    token = one.insert("exec", "request")
    other.insert("exec", "request")
    with pytest.raises(TokenNotFound):
        other.consume("exec", token)


def test_exec_token_on_attach_is_not_found(cache: RequestCache[str]) -> None:
    token = cache.insert("exec", "request")
    with pytest.raises(TokenNotFound):
        cache.consume("attach", token)
    with pytest.raises(TokenNotFound):
        cache.consume("portforward", token)
    # Refused by the signature, so the request still works where it belongs.
    assert cache.consume("exec", token) == "request"


def test_kind_is_checked_against_the_entry_too(cache: RequestCache[str]) -> None:
    # Someone holding the secret signs an exec nonce for "attach": the entry's kind still says no.
    token = cache.insert("exec", "request")
    nonce = token.split(".")[0]
    forged = TimestampSigner(SECRET, salt="streamsrv.tokens.attach", key_derivation="hmac")
    forged.get_timestamp = lambda: 1_700_000_000  # type: ignore[method-assign]
    with pytest.raises(TokenNotFound):
        cache.consume("attach", forged.sign(nonce).decode())
    assert len(cache) == 0  # it got past the signature, and the lookup used it up


def test_capacity_and_retry_after(cache: RequestCache[str]) -> None:
    for i in range(1000):
        cache.insert("exec", str(i))
    with pytest.raises(CacheFull) as info:
        cache.insert("exec", "one too many")
    assert info.value.retry_after == 60
    assert str(info.value) == "maximum number of in-flight requests exceeded"


def test_consuming_frees_a_slot(cache: RequestCache[str]) -> None:
    tokens = [cache.insert("exec", str(i)) for i in range(1000)]
    cache.consume("exec", tokens[500])
    cache.insert("exec", "fits again")


def test_gc_of_expired_entries_frees_room(cache: RequestCache[str], clock: Clock) -> None:
    old = [cache.insert("exec", f"old{i}") for i in range(600)]
    clock.now += 30
    new = [cache.insert("attach", f"new{i}") for i in range(400)]
    with pytest.raises(CacheFull):
        cache.insert("exec", "full")
    clock.now += 30  # the first 600 reach their expiry: collected on the next insert
    token = cache.insert("exec", "room again")
    assert len(cache) == 401
    for i in range(599):
        cache.insert("exec", f"more{i}")
    with pytest.raises(CacheFull):
        cache.insert("exec", "full again")
    with pytest.raises(TokenNotFound):
        cache.consume("exec", old[0])
    assert cache.consume("attach", new[0]) == "new0"
    assert cache.consume("exec", token) == "room again"


def test_gc_stops_at_the_first_live_entry(cache: RequestCache[str], clock: Clock) -> None:
    first = cache.insert("exec", "first")
    clock.now += 10
    second = cache.insert("exec", "second")
    clock.now += 50  # first expires now, second in 10 s
    cache.insert("exec", "third")
    assert len(cache) == 2
    assert cache.consume("exec", second) == "second"
    with pytest.raises(TokenNotFound):
        cache.consume("exec", first)


def test_retry_after_is_the_ttl_rounded_up(clock: Clock) -> None:
    cache: RequestCache[int] = RequestCache(
        SECRET, ttl=2.5, max_in_flight=1, clock=clock, wall_clock=clock
    )
    token = cache.insert("exec", 1)
    with pytest.raises(CacheFull) as info:
        cache.insert("exec", 2)
    assert info.value.retry_after == 3
    clock.now += 2.5
    assert cache.consume("exec", token) == 1


def test_short_ttl_expiry(clock: Clock) -> None:
    cache: RequestCache[int] = RequestCache(SECRET, ttl=0.5, clock=clock, wall_clock=clock)
    token = cache.insert("exec", 1)
    clock.now += 0.6
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)


def test_random_secret_by_default() -> None:
    one: RequestCache[int] = RequestCache()
    two: RequestCache[int] = RequestCache(b"")
    token = one.insert("exec", 1)
    with pytest.raises(TokenNotFound):
        two.consume("exec", token)
    assert one.consume("exec", token) == 1


def test_real_clocks() -> None:
    cache: RequestCache[int] = RequestCache(SECRET)
    assert cache.consume("exec", cache.insert("exec", 7)) == 7


@pytest.mark.parametrize(("ttl", "max_in_flight"), [(0, 1), (-1, 1), (60, 0)])
def test_bad_settings(ttl: float, max_in_flight: int) -> None:
    with pytest.raises(ValueError):
        RequestCache(SECRET, ttl=ttl, max_in_flight=max_in_flight)


@pytest.mark.parametrize(
    ("capacity", "fragment"),
    [
        ({"browser": 0}, "'browser' must be at least 1, not 0"),
        ({"browser": 5, "batch": -1}, "'batch' must be at least 1, not -1"),
        ({"default": 5}, "max_in_flight"),
    ],
)
def test_bad_capacity(capacity: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        RequestCache(SECRET, capacity=capacity)


def test_http_mapping() -> None:
    assert issubclass(TokenError, RequestError) and issubclass(TokenError, StreamsrvError)
    assert issubclass(TokenNotFound, TokenError) and issubclass(CacheFull, TokenError)
    assert TokenNotFound.http_status == 404
    assert CacheFull.http_status == 429
    assert TokenError.http_status == 500
    assert CacheFull(60).retry_after == 60
    assert str(TokenNotFound()) == "token not found"


def test_a_nonce_already_in_flight_is_drawn_again(
    cache: RequestCache[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    draws = iter(["same-nonce00", "same-nonce00", "other-nonce0"])
    monkeypatch.setattr("streamsrv.tokens.secrets.token_urlsafe", lambda _n: next(draws))
    first = cache.insert("exec", "first")
    second = cache.insert("exec", "second")
    assert first.split(".")[0] == "same-nonce00"
    assert second.split(".")[0] == "other-nonce0"
    assert cache.consume("exec", second) == "second"
    assert cache.consume("exec", first) == "first"


# ---------------------------------------------------------------------------- purposes


@pytest.fixture
def purposes(clock: Clock) -> RequestCache[str]:
    return RequestCache(
        SECRET, max_in_flight=5, capacity={"browser": 3}, clock=clock, wall_clock=clock
    )


def test_default_purpose_and_capacity(cache: RequestCache[str]) -> None:
    token = cache.insert("exec", "request")
    assert cache.in_flight() == cache.in_flight("default") == 1
    assert cache.in_flight("browser") == 0
    assert dict(cache.capacity) == {}
    cache.consume("exec", token)
    assert cache.in_flight() == 0


def test_a_full_purpose_does_not_block_the_default_one(purposes: RequestCache[str]) -> None:
    for i in range(3):
        purposes.insert("exec", f"browser{i}", purpose="browser")
    with pytest.raises(CacheFull) as info:
        purposes.insert("exec", "one too many", purpose="browser")
    assert info.value.purpose == "browser"
    assert info.value.retry_after == 60
    assert str(info.value) == "maximum number of in-flight requests exceeded"
    token = purposes.insert("exec", "kubectl")  # the default purpose has its own 5 slots
    assert purposes.in_flight("browser") == 3
    assert purposes.in_flight("default") == 1
    assert len(purposes) == 4
    assert purposes.consume("exec", token) == "kubectl"


def test_the_default_purpose_is_capped_by_max_in_flight(purposes: RequestCache[str]) -> None:
    purposes.insert("exec", "browser", purpose="browser")
    for i in range(5):
        purposes.insert("exec", str(i))
    with pytest.raises(CacheFull) as info:
        purposes.insert("exec", "one too many")
    assert info.value.purpose == "default"
    purposes.insert("exec", "browser still fits", purpose="browser")


def test_an_unnamed_purpose_gets_max_in_flight_of_its_own(purposes: RequestCache[str]) -> None:
    for i in range(5):
        purposes.insert("exec", str(i))
    for i in range(5):
        purposes.insert("exec", f"batch{i}", purpose="batch")
    with pytest.raises(CacheFull) as info:
        purposes.insert("exec", "one too many", purpose="batch")
    assert info.value.purpose == "batch"
    assert (purposes.in_flight("default"), purposes.in_flight("batch")) == (5, 5)
    assert len(purposes) == 10


def test_consuming_frees_a_slot_of_the_entrys_purpose(purposes: RequestCache[str]) -> None:
    tokens = [purposes.insert("exec", f"b{i}", purpose="browser") for i in range(3)]
    purposes.insert("exec", "kubectl")
    assert purposes.consume("exec", tokens[1]) == "b1"  # no purpose given: the entry knows it
    assert purposes.in_flight("browser") == 2
    assert purposes.in_flight("default") == 1
    purposes.insert("exec", "fits again", purpose="browser")
    with pytest.raises(CacheFull):
        purposes.insert("exec", "full again", purpose="browser")


def test_expiry_frees_a_slot_of_the_entrys_purpose(
    purposes: RequestCache[str], clock: Clock
) -> None:
    old = purposes.insert("exec", "old", purpose="browser")
    clock.now += 30
    for i in range(2):
        purposes.insert("exec", f"new{i}", purpose="browser")
    kubectl = purposes.insert("exec", "kubectl")
    with pytest.raises(CacheFull):
        purposes.insert("exec", "full", purpose="browser")
    clock.now += 30  # "old" reaches its expiry: collected on the next insert, of any purpose
    assert purposes.in_flight("browser") == 3  # not collected yet
    purposes.insert("exec", "kubectl2")
    assert purposes.in_flight("browser") == 2
    assert purposes.in_flight("default") == 2
    purposes.insert("exec", "room again", purpose="browser")
    assert purposes.in_flight("browser") == 3
    with pytest.raises(TokenNotFound):
        purposes.consume("exec", old)
    assert purposes.in_flight("browser") == 3  # it was gone already: nothing freed twice
    assert purposes.consume("exec", kubectl) == "kubectl"
    assert len(purposes) == 4


def test_consuming_an_expired_entry_frees_its_slot(clock: Clock) -> None:
    # Only the monotonic clock moves: the signature passes, the cache's expiry does not.
    wall = Clock(clock.now)
    cache: RequestCache[str] = RequestCache(
        SECRET, capacity={"browser": 1}, clock=clock, wall_clock=wall
    )
    token = cache.insert("exec", "request", purpose="browser")
    clock.now += 60.5
    with pytest.raises(TokenNotFound):
        cache.consume("exec", token)
    assert cache.in_flight("browser") == 0  # freed by the consume, before any collection
    assert len(cache) == 0
    cache.insert("exec", "next", purpose="browser")
    assert cache.in_flight("browser") == 1


def test_a_wrong_kind_consume_keeps_the_entry_and_its_slot(purposes: RequestCache[str]) -> None:
    tokens = [purposes.insert("exec", f"b{i}", purpose="browser") for i in range(3)]
    with pytest.raises(TokenNotFound):
        purposes.consume("attach", tokens[0])
    assert purposes.in_flight("browser") == 3
    with pytest.raises(CacheFull):
        purposes.insert("exec", "still full", purpose="browser")
    assert purposes.consume("exec", tokens[0]) == "b0"
    assert purposes.in_flight("browser") == 2


def test_a_kind_mismatch_in_the_entry_frees_its_slot(purposes: RequestCache[str]) -> None:
    # Past the signature (someone holding the secret), the lookup uses the entry up.
    token = purposes.insert("exec", "request", purpose="browser")
    nonce = token.split(".")[0]
    forged = TimestampSigner(SECRET, salt="streamsrv.tokens.attach", key_derivation="hmac")
    forged.get_timestamp = lambda: 1_700_000_000  # type: ignore[method-assign]
    with pytest.raises(TokenNotFound):
        purposes.consume("attach", forged.sign(nonce).decode())
    assert purposes.in_flight("browser") == 0


def test_a_refused_insert_takes_no_slot(purposes: RequestCache[str]) -> None:
    for i in range(3):
        purposes.insert("exec", str(i), purpose="browser")
    for _ in range(3):
        with pytest.raises(CacheFull):
            purposes.insert("exec", "refused", purpose="browser")
    assert purposes.in_flight("browser") == 3
    assert len(purposes) == 3


def test_capacity_is_read_only(purposes: RequestCache[str]) -> None:
    assert dict(purposes.capacity) == {"browser": 3}
    with pytest.raises(TypeError):
        purposes.capacity["browser"] = 10  # type: ignore[index]


# One step of the property below: ("insert", purpose, kind), ("consume", token index, kind),
# or ("advance", seconds, "").
_KINDS = st.sampled_from(["exec", "attach"])
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(["default", "browser"]), _KINDS),
        st.tuples(st.just("consume"), st.integers(0, 40), _KINDS),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1, 5, 10, 11]), st.just("")),
    ),
    min_size=10,  # hypothesis draws short lists otherwise, which rarely fill a purpose
    max_size=80,
)


@dataclass
class _Issued:
    token: str
    kind: str
    purpose: str
    expires: float
    gone: bool = False  # consumed, refused for its expiry (removed as well), or collected


@given(steps=_STEPS)
def test_in_flight_matches_a_model_of_unexpired_unconsumed_entries(
    steps: list[tuple[str, object, str]],
) -> None:
    clock = Clock()
    wall = Clock(clock.now)  # frozen: the cache's own expiry decides, not the signature
    caps = {"default": 4, "browser": 2}
    cache: RequestCache[int] = RequestCache(
        SECRET,
        ttl=10,
        max_in_flight=caps["default"],
        capacity={"browser": caps["browser"]},
        clock=clock,
        wall_clock=wall,
    )
    issued: list[_Issued] = []

    def live(purpose: str) -> int:
        return sum(
            1 for e in issued if e.purpose == purpose and not e.gone and clock.now < e.expires
        )

    for action, arg, kind in steps:
        if action == "advance":
            assert isinstance(arg, int | float)
            clock.now += arg
        elif action == "insert":
            assert isinstance(arg, str)
            for e in issued:  # every insert collects what has reached its expiry, of any purpose
                e.gone = e.gone or clock.now >= e.expires
            expect_full = live(arg) >= caps[arg]
            try:
                token = cache.insert(kind, len(issued), purpose=arg)
            except CacheFull as full:
                assert expect_full and full.purpose == arg
            else:
                assert not expect_full
                issued.append(_Issued(token, kind, arg, clock.now + 10))
            # The insert collected: held entries are exactly the unexpired, unconsumed ones.
            for purpose in caps:
                assert cache.in_flight(purpose) == live(purpose)
        elif issued:
            assert isinstance(arg, int)
            index = arg % len(issued)
            entry = issued[index]
            # Consume still takes an entry at its expiry exactly, if no insert collected it.
            expect = entry.kind == kind and not entry.gone and clock.now <= entry.expires
            try:
                got = cache.consume(kind, entry.token)
            except TokenNotFound:
                assert not expect
            else:
                assert expect and got == index
            if entry.kind == kind:  # another kind fails its signature and leaves the entry be
                entry.gone = True
        # Between inserts the counts also include expired entries not collected yet.
        for purpose in caps:
            held = sum(1 for e in issued if e.purpose == purpose and not e.gone)
            assert cache.in_flight(purpose) == held
            assert live(purpose) <= held
        assert len(cache) == sum(cache.in_flight(p) for p in caps)
