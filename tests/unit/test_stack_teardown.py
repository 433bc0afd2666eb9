"""Deferred signals, lease freshness and engine timestamps: the pure parts of teardown."""

from __future__ import annotations

import json
import os
import signal

import pytest

from buildtasks.docker.engine import _created
from buildtasks.stack import MAX_LEASE_TTL, lease_fresh, signals_deferred


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_teardown_waits_and_is_raised_after(signum):
    steps = []

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt), signals_deferred():
            os.kill(os.getpid(), signum)
            os.kill(os.getpid(), signum)  # a second Ctrl-C waits too
            steps.append("teardown finished")
        assert steps == ["teardown finished"]
        assert signal.getsignal(signal.SIGTERM) is interrupt  # handlers restored
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_error_inside_wins_over_the_deferred_signal():
    with pytest.raises(RuntimeError, match="stack left"), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("stack left")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_no_signal_means_nothing_is_raised():
    with signals_deferred():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def lease(renewed, ttl) -> bytes:
    return json.dumps({"renewed": renewed, "ttl": ttl}).encode()


@pytest.mark.parametrize(
    ("body", "fresh"),
    [
        (lease(1000, 30), True),
        (lease(975, 30), True),
        (lease(960, 30), False),
        (lease(2000, 30), True),  # renewed "in the future": another clock, still alive
        (lease(1000 - MAX_LEASE_TTL - 1, 10**9), False),  # a lease cannot promise forever
        (lease(999, -5), False),
        (lease("nan", 30), None),
        (lease(1000, "inf"), None),
        (b'{"renewed": 1000}', None),
        (b"[1, 2]", None),
        (b"\xff\xfe", None),
        (b"", None),
    ],
)
def test_lease_freshness(body, fresh):
    assert lease_fresh(body, now=1000.0) is fresh


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-11-24T01:20:00.123456789Z", 1795483200.0),
        ("2026-11-24T01:20:00Z", 1795483200.0),
        ("2026-11-24T02:20:00+01:00", 1795483200.0),
        ("", 0.0),
        ("yesterday", 0.0),
    ],
)
def test_engine_timestamps(text, seconds):
    assert _created(text) == seconds
