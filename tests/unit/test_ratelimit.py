"""The per-key token bucket, on a fake clock.

Rates and times are powers of two where a wait is asserted, so the expected values are exact in binary
floating point. The key-count bound is checked on the limiter's private table, the only place it shows.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pingpull.ratelimit import TokenBucketLimiter

MESSAGE = "rate_per_s must be positive and burst at least 1"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(rate: float, burst: int, clock: FakeClock, max_keys: int = 100_000) -> TokenBucketLimiter:
    return TokenBucketLimiter(rate, burst, clock=clock, max_keys=max_keys)


def tracked(lim: TokenBucketLimiter) -> int:
    return len(lim._buckets)


def drain(lim: TokenBucketLimiter, key: int) -> int:
    """Take tokens for `key` until refused; return how many were granted."""
    granted = 0
    while lim.try_acquire(key) == 0.0:
        granted += 1
        assert granted <= 10_000, "the bucket never ran dry"
    return granted


# --- burst and refusal ------------------------------------------------------------------------------


def test_burst_is_allowed_then_refused_with_the_wait() -> None:
    clock = FakeClock()
    lim = limiter(2.0, 3, clock)
    assert [lim.try_acquire(1) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.try_acquire(1) == 0.5  # one whole token at 2/s
    assert lim.try_acquire(1) == 0.5  # a refusal takes nothing


def test_wait_shrinks_as_time_passes() -> None:
    clock = FakeClock()
    lim = limiter(4.0, 1, clock)
    assert lim.try_acquire(1) == 0.0
    assert lim.try_acquire(1) == 0.25
    clock.advance(0.125)
    assert lim.try_acquire(1) == 0.125
    clock.advance(0.0625)
    assert lim.try_acquire(1) == 0.0625
    clock.advance(0.0625)
    assert lim.try_acquire(1) == 0.0


def test_burst_of_one() -> None:
    clock = FakeClock()
    lim = limiter(0.5, 1, clock)
    assert lim.try_acquire(7) == 0.0
    assert lim.try_acquire(7) == 2.0


def test_refill_over_time_follows_the_rate() -> None:
    clock = FakeClock()
    lim = limiter(2.0, 10, clock)
    assert drain(lim, 1) == 10
    clock.advance(1.0)
    assert drain(lim, 1) == 2
    clock.advance(2.5)
    assert drain(lim, 1) == 5
    assert lim.try_acquire(1) == 0.5


def test_partial_tokens_carry_over() -> None:
    clock = FakeClock()
    lim = limiter(1.0, 2, clock)
    assert drain(lim, 1) == 2
    clock.advance(0.5)
    assert lim.try_acquire(1) == 0.5
    clock.advance(0.5)
    assert lim.try_acquire(1) == 0.0
    assert lim.try_acquire(1) == 1.0


def test_capacity_caps_at_burst_after_a_long_idle() -> None:
    clock = FakeClock()
    lim = limiter(5.0, 4, clock)
    assert drain(lim, 1) == 4
    clock.advance(1_000_000.0)
    assert drain(lim, 1) == 4


def test_clock_going_backwards_refills_nothing() -> None:
    clock = FakeClock()
    lim = limiter(1.0, 2, clock)
    assert drain(lim, 1) == 2
    clock.advance(-100.0)
    assert lim.try_acquire(1) == 1.0  # no refill, and no negative elapsed time draining it further
    clock.advance(0.5)
    assert lim.try_acquire(1) == 0.5
    clock.advance(0.5)
    assert lim.try_acquire(1) == 0.0


def test_keys_are_independent() -> None:
    clock = FakeClock()
    lim = limiter(1.0, 3, clock)
    assert drain(lim, 1) == 3
    assert lim.try_acquire(1) == 1.0
    assert drain(lim, 2) == 3
    assert drain(lim, -5) == 3
    clock.advance(0.5)
    assert lim.try_acquire(1) == 0.5
    assert lim.try_acquire(2) == 0.5


def test_default_clock_is_usable() -> None:
    lim = TokenBucketLimiter(1000.0, 2)
    assert lim.try_acquire(1) == 0.0
    assert lim.try_acquire(1) == 0.0


@given(
    rate=st.sampled_from([0.25, 0.5, 1.0, 2.0, 8.0, 20.0, 1000.0]),
    burst=st.integers(min_value=1, max_value=50),
    steps=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=1, max_size=60),
)
def test_grants_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[float]
) -> None:
    clock = FakeClock(0.0)
    lim = limiter(rate, burst, clock)
    granted = 0
    for step in steps:
        clock.advance(step)
        if lim.try_acquire(1) == 0.0:
            granted += 1
    assert granted <= burst + rate * clock.now + 1e-9


@given(
    rate=st.floats(min_value=0.01, max_value=1000.0),
    burst=st.integers(min_value=1, max_value=20),
    taken=st.integers(min_value=0, max_value=40),
    pause=st.floats(min_value=0.0, max_value=10.0),
)
def test_the_returned_wait_is_exactly_enough(rate: float, burst: int, taken: int, pause: float) -> None:
    clock = FakeClock(0.0)
    lim = limiter(rate, burst, clock)
    for _ in range(taken):
        lim.try_acquire(1)
    clock.advance(pause)
    wait = lim.try_acquire(1)
    if wait == 0.0:
        return
    assert 0.0 < wait <= 1.0 / rate + 1e-12
    clock.advance(wait * 0.99)
    assert lim.try_acquire(1) > 0.0
    clock.advance(wait * 0.01 + 1e-9)
    assert lim.try_acquire(1) == 0.0


# --- the key-count bound ----------------------------------------------------------------------------


def test_full_buckets_are_forgotten_first() -> None:
    clock = FakeClock(0.0)
    lim = limiter(1.0, 5, clock, max_keys=3)
    lim.try_acquire(1)
    lim.try_acquire(2)
    clock.advance(10.0)  # 1 and 2 are full again by now
    assert drain(lim, 3) == 5  # 3 is active and empty
    lim.try_acquire(4)  # at the bound: 1 and 2 go, 3 stays
    assert tracked(lim) == 2
    assert lim.try_acquire(3) == 1.0  # still drained: its state survived the sweep


def test_active_keys_are_halved_oldest_first_when_nothing_is_full() -> None:
    clock = FakeClock(0.0)
    lim = limiter(1.0, 5, clock, max_keys=4)
    for key in range(4):
        assert drain(lim, key) == 5
        clock.advance(0.125)
    assert tracked(lim) == 4
    assert lim.try_acquire(4) == 0.0  # the fifth key: drops 0 and 1, the two oldest
    assert tracked(lim) == 3
    assert lim.try_acquire(3) > 0.0  # kept: still drained
    assert lim.try_acquire(2) > 0.0  # kept: still drained
    assert tracked(lim) == 3
    assert lim.try_acquire(0) == 0.0  # forgotten: starts again with a full bucket
    assert tracked(lim) <= 4


def test_existing_keys_never_trigger_eviction() -> None:
    clock = FakeClock(0.0)
    lim = limiter(1.0, 5, clock, max_keys=2)
    lim.try_acquire(1)
    lim.try_acquire(2)
    for _ in range(10):
        lim.try_acquire(1)
        lim.try_acquire(2)
    assert tracked(lim) == 2


@given(
    max_keys=st.integers(min_value=2, max_value=40),
    actions=st.lists(
        st.tuples(st.integers(min_value=0, max_value=100), st.floats(min_value=0.0, max_value=3.0)),
        max_size=200,
    ),
)
def test_key_count_never_exceeds_the_bound(max_keys: int, actions: list[tuple[int, float]]) -> None:
    clock = FakeClock(0.0)
    lim = limiter(1.0, 4, clock, max_keys=max_keys)
    for key, step in actions:
        clock.advance(step)
        lim.try_acquire(key)
        assert tracked(lim) <= max_keys


def test_key_count_never_exceeds_a_bound_of_one() -> None:
    # When the table is full of active keys, `_forget_full_buckets` drops `len // 2` of them; with
    # max_keys=1 that is 1 // 2 == 0, so the new key is added on top and the table holds two.
    clock = FakeClock(0.0)
    lim = limiter(1.0, 5, clock, max_keys=1)
    sizes = []
    for key in range(5):
        lim.try_acquire(key)
        sizes.append(tracked(lim))
    assert max(sizes) <= 1, f"BUG: with max_keys=1 the limiter tracked {max(sizes)} keys (sizes {sizes})"


# --- constructor arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (-math.inf, 5), (1.0, 0), (1.0, -3), (0.0, 0)]
)
def test_invalid_rate_or_burst_raise_value_error(rate: float, burst: int) -> None:
    with pytest.raises(ValueError, match=f"^{MESSAGE}$"):
        TokenBucketLimiter(rate, burst)


def test_smallest_valid_arguments_are_accepted() -> None:
    lim = TokenBucketLimiter(1e-9, 1, clock=FakeClock())
    assert lim.try_acquire(1) == 0.0


def test_nan_rate_raises_value_error() -> None:
    # `rate_per_s <= 0` is False for NaN, so NaN is accepted; every refill then resets the bucket to
    # `burst` (min(burst, nan) is burst) and the limiter never refuses anything.
    clock = FakeClock()
    try:
        lim = TokenBucketLimiter(math.nan, 2, clock=clock)
    except ValueError:
        return
    waits = [lim.try_acquire(1) for _ in range(10)]
    pytest.fail(f"BUG: rate_per_s=nan was accepted and the limiter granted everything: {waits}")


@pytest.mark.parametrize("max_keys", [0, -1])
def test_non_positive_max_keys_raises_value_error(max_keys: int) -> None:
    # max_keys is not validated: 0 or a negative bound is accepted and silently behaves like 2.
    try:
        lim = TokenBucketLimiter(1.0, 1, clock=FakeClock(), max_keys=max_keys)
    except ValueError:
        return
    for key in range(5):
        lim.try_acquire(key)
    pytest.fail(f"BUG: max_keys={max_keys} was accepted; the limiter then tracked {tracked(lim)} keys")


# --- weighted actions (the media byte quota) ----------------------------------------------------------


def test_a_cost_takes_that_many_tokens_and_waits_for_the_shortfall() -> None:
    clock = FakeClock()
    lim = limiter(4.0, 16, clock)
    assert lim.try_acquire(1, cost=12) == 0.0
    assert lim.try_acquire(1, cost=8) == 1.0  # 4 left, 4 short at 4/s
    assert lim.try_acquire(1, cost=4) == 0.0  # the refusal took nothing
    clock.advance(4.0)
    assert lim.try_acquire(1, cost=16) == 0.0


@pytest.mark.parametrize("cost", [0, -1, 17, math.nan])
def test_a_cost_outside_one_burst_is_refused(cost: float) -> None:
    lim = limiter(4.0, 16, FakeClock())
    with pytest.raises(ValueError, match="cost"):
        lim.try_acquire(1, cost=cost)
