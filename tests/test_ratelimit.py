"""eventd.delivery.ratelimit: the GCRA limiter on a fake clock: every wait exact, no sleeps.

A "caller" here does what a dispatcher worker does: ``reserve(n)``, wait what it
was told (by moving the fake clock), then send.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventd.delivery.ratelimit import RateLimiter

START = 1000.0  # like time.monotonic(): some point far from zero


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


def limiter(rate: float | None) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(rate, clock=clock), clock


def send_paced(
    rl: RateLimiter, clock: FakeClock, sizes: list[int], late: float = 0.0
) -> list[float]:
    """Book and send each batch as a worker does; the times the batches went out.

    ``late`` is how long after its wait each send really happens (a busy loop)."""
    sent = []
    for n in sizes:
        clock.advance(rl.reserve(n) + late)
        sent.append(clock.now)
    return sent


# -- unlimited -----------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [None, 0.0])
def test_no_rate_never_waits(rate: float | None) -> None:
    rl, _ = limiter(rate)
    assert [rl.reserve(1000) for _ in range(100)] == [0.0] * 100


def test_without_a_clock_it_paces_on_the_real_one() -> None:
    rl = RateLimiter(1.0)
    assert rl.reserve(5) == 0.0
    # 5 events at 1/s were just booked against the real clock: the next waits about 5 s.
    assert 4.0 < rl.reserve(1) <= 5.0


# -- burst allowance -------------------------------------------------------------------------


def test_the_first_batch_goes_at_once_whatever_its_size() -> None:
    rl, _ = limiter(10.0)
    assert rl.reserve(500) == 0.0
    assert rl.reserve(1) == pytest.approx(50.0)  # the 500 events are paid for after the fact


def test_idle_time_banks_no_burst() -> None:
    """The burst allowance is one batch: an hour of silence does not let 36,000 events
    through at once, only the next batch."""
    rl, clock = limiter(10.0)
    assert rl.reserve(1) == 0.0
    clock.advance(3600)
    assert rl.reserve(1) == 0.0
    assert rl.reserve(1) == pytest.approx(0.1)
    assert rl.reserve(1) == pytest.approx(0.2)


# -- the waiting time ---------------------------------------------------------------------------


def test_bookings_at_the_same_moment_queue_up_behind_each_other() -> None:
    """Batches in flight at once (max_in_flight > 1): each waits for those booked before."""
    rl, _ = limiter(10.0)
    assert [rl.reserve(n) for n in (5, 10, 1, 4)] == pytest.approx([0.0, 0.5, 1.5, 1.6])


def test_the_wait_is_what_is_left_of_the_previous_booking() -> None:
    rl, clock = limiter(10.0)
    rl.reserve(10)  # the next batch may start 1 s from now
    clock.advance(0.25)
    assert rl.reserve(1) == pytest.approx(0.75)
    clock.advance(5.0)  # past the booking: no wait
    assert rl.reserve(1) == 0.0


def test_a_caller_that_waits_as_told_sends_at_the_rate() -> None:
    rl, clock = limiter(100.0)
    sent = send_paced(rl, clock, [10] * 11)
    assert [t - START for t in sent] == pytest.approx([i * 0.1 for i in range(11)])


def test_a_late_caller_is_not_paid_back_with_a_burst() -> None:
    """Time a caller loses after its wait is lost: the next booking starts from now, not
    from the schedule it fell behind, and only one batch goes without waiting."""
    rl, clock = limiter(10.0)
    sent = send_paced(rl, clock, [1, 1, 1], late=0.5)
    assert [t - START for t in sent] == pytest.approx([0.5, 1.0, 1.5])  # 2/s, not 10/s
    assert rl.reserve(1) == 0.0
    assert rl.reserve(1) == pytest.approx(0.1)


def test_a_little_lateness_shifts_the_schedule_without_adding_up() -> None:
    rl, clock = limiter(10.0)
    sent = send_paced(rl, clock, [1] * 5, late=0.05)
    assert [t - START for t in sent] == pytest.approx([0.05, 0.15, 0.25, 0.35, 0.45])


# -- rate changes ---------------------------------------------------------------------------------


def test_a_new_rate_applies_to_later_bookings_and_keeps_earlier_ones() -> None:
    rl, _ = limiter(10.0)
    assert rl.reserve(10) == 0.0  # booked 1 s at 10/s
    rl.rate = 100.0
    assert rl.reserve(10) == pytest.approx(1.0)  # still behind the 1 s booked before
    assert rl.reserve(10) == pytest.approx(1.1)  # the 10 before it took 0.1 s at 100/s
    rl.rate = 1.0
    assert rl.reserve(1) == pytest.approx(1.2)
    assert rl.reserve(1) == pytest.approx(2.2)


def test_unlimiting_stops_the_waits_at_once() -> None:
    rl, clock = limiter(1.0)
    rl.reserve(100)
    rl.rate = None
    assert [rl.reserve(100) for _ in range(3)] == [0.0] * 3  # the 100 s booked before: ignored
    rl.rate = 1.0
    clock.advance(100)  # past what was booked while limited; nothing was booked since
    assert rl.reserve(1) == 0.0
    assert rl.reserve(1) == pytest.approx(1.0)


# -- no drift ------------------------------------------------------------------------------------


def test_no_drift_over_many_bookings() -> None:
    """A third of a second is not exact in binary; a million of them still add up to
    333,333 s (float rounding leaves about a microsecond: 3e-12 of it). A step rounded
    to the millisecond, say, would be 333 s off."""
    rl, _ = limiter(3.0)
    waits = [rl.reserve(1) for _ in range(1_000_000)]
    assert waits[-1] == pytest.approx(999_999 / 3, rel=1e-9)
    assert waits[3] == pytest.approx(1.0)


def test_early_wake_ups_do_not_add_up() -> None:
    """A timer that fires a little early does not speed the limiter up: each batch is
    booked n/rate after the previous booking, not after the moment the caller came back."""
    rl, clock = limiter(10.0)
    sent = []
    for _ in range(1000):
        wait = rl.reserve(1)
        clock.advance(max(0.0, wait - 0.001))  # woke 1 ms early every time
        sent.append(clock.now - START)
    # Paced on the caller's clock, 1000 early wake-ups would have gained a whole second.
    assert sent[-1] == pytest.approx(99.9 - 0.001, abs=1e-9)


def test_a_paced_caller_stays_on_schedule_over_many_batches() -> None:
    rl, clock = limiter(7.0)
    sent = send_paced(rl, clock, [1] * 30_000)
    assert max(abs(t - START - k / 7.0) for k, t in enumerate(sent)) < 1e-6


@given(
    rate=st.floats(min_value=0.5, max_value=1000.0),
    batches=st.lists(
        st.tuples(st.integers(min_value=1, max_value=50), st.floats(min_value=0.0, max_value=2.0)),
        min_size=1,
        max_size=60,
    ),
    window=st.floats(min_value=0.001, max_value=30.0),
)
def test_any_window_holds_at_most_one_batch_over_the_rate(
    rate: float, batches: list[tuple[int, float]], window: float
) -> None:
    """The module's promise, over the times it books: in any window, at most
    ``rate * window`` events plus one batch, however late the caller comes back."""
    rl, clock = limiter(rate)
    booked: list[tuple[float, int]] = []
    for n, late in batches:
        wait = rl.reserve(n)
        booked.append((clock.now + wait, n))
        clock.advance(wait + late)
    largest = max(n for n, _ in batches)
    for start, _ in booked:
        events = sum(n for t, n in booked if start <= t < start + window)
        assert events <= rate * window * (1 + 1e-9) + largest
