"""ReadBack: each message a fan-out bus sent to itself is counted once, whichever thread gets there first.

On a cluster a reader that gave its channel up may still be handing a message
on while another thread counts that channel's awaited messages ``no_handler``
(the race a CI run caught as 2001 messages taken in for 2000 sent). These
tests take both orders, step by step, on the class itself.
"""

from __future__ import annotations

import pytest

from nekobot_bus.backends import read_back
from nekobot_bus.backends.read_back import ReadBack
from nekobot_bus.dispatch import Direction
from nekobot_bus.metrics import Metrics

pytestmark = pytest.mark.timeout(10)


def _awaiting(*ids: str) -> tuple[ReadBack, Metrics]:
    metrics = Metrics(extra=["lost"])
    back = ReadBack(metrics)
    back.expect(dict.fromkeys(ids, (Direction.INBOUND, "telegram")))
    back.published(ids)
    return back, metrics


def _nothing_covered(_direction: Direction, _channel: str) -> bool:
    return False


def test_a_message_counted_no_handler_before_it_came_is_dropped_when_it_comes() -> None:
    back, metrics = _awaiting("a")
    back.unsubscribed(_nothing_covered)
    assert back.arriving("a") is False, "handed on, it would be counted a second time"
    assert back.wait(0)
    m = metrics.snapshot()
    assert (m["messages_in"], m["no_handler_in"]) == (1, 1)
    assert back.arriving("a") is True, "only the one arrival that was counted already is dropped"


def test_a_message_being_handed_on_is_left_to_its_reader() -> None:
    back, metrics = _awaiting("a", "b")
    assert back.arriving("a") is True
    back.unsubscribed(_nothing_covered)  # another thread, while the reader hands "a" on
    assert not back.wait(0), "'a' is still on its way to the dispatcher"
    back.arrived("a")
    assert back.wait(0)
    m = metrics.snapshot()
    assert (m["messages_in"], m["no_handler_in"]) == (1, 1), "'b' alone is counted here"
    assert back.arriving("b") is False


def test_a_marker_does_not_count_lost_a_message_being_handed_on() -> None:
    back, metrics = _awaiting("a", "b")
    assert back.arriving("a") is True
    back.marker_arrived(back.marker())
    assert metrics.snapshot()["lost"] == 1, "'b' did not come before the marker"
    back.arrived("a")
    assert back.wait(0)


def test_messages_of_others_and_of_channels_still_held_pass() -> None:
    back, metrics = _awaiting("a")
    back.unsubscribed(lambda _direction, channel: channel == "telegram")
    assert back.arriving("someone else's") is True
    assert back.arriving("a") is True
    back.arrived("a")
    assert back.wait(0)
    assert metrics.snapshot()["no_handler_in"] == 0


def test_the_ids_kept_to_know_a_late_one_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_back, "WRITTEN_OFF_KEPT", 3)
    back, metrics = _awaiting(*"abcde")
    back.unsubscribed(_nothing_covered)
    assert metrics.snapshot()["no_handler_in"] == 5
    kept = [back.arriving(i) for i in "abcde"]
    assert kept == [True, True, False, False, False], "the newest three are kept"
