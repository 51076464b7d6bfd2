"""The one way tests wait: poll a condition until a deadline the caller must give, or fail saying what.

``wait_for`` returns the condition's first truthy value. ``holds_for`` is for "nothing more arrives": the
condition must stay true for the whole period, checked as it goes, so a late arrival fails at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T],
    deadline_s: float,
    what: str,
    poll_s: float = 0.2,
    alive: Callable[[], str | None] | None = None,
) -> T:
    """Poll ``condition`` until it is truthy and return that value; fail after ``deadline_s`` seconds.

    ``alive`` (optional) returns a reason when whatever is being waited on has died, to fail at once with it.
    """
    deadline = time.monotonic() + deadline_s
    last: T = condition()
    while not last:
        if alive is not None and (reason := alive()):
            raise AssertionError(f"gave up waiting for {what}: {reason}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what} (last value: {last!r})")
        time.sleep(poll_s)
        last = condition()
    return last


def holds_for(condition: Callable[[], object], period_s: float, what: str, poll_s: float = 0.1) -> None:
    """Fail as soon as ``condition`` is false within the next ``period_s`` seconds."""
    end = time.monotonic() + period_s
    while time.monotonic() < end:
        assert condition(), f"{what} stopped holding"
        time.sleep(poll_s)
