"""Repeated denials from one principal: a signal for the SOC (D12).

A principal that is refused again and again is probing: guessing EANs of
other suppliers, walking another operator's meters, or running with a
broken or stolen certificate. ``DenialDetector.observe()`` is fed every
decision and answers True when a security event should be raised.

Pure: no I/O, the clock is the injected ``now`` (timezone-aware). Not
thread-safe; the caller serialises (the gateway calls it on its event loop).

Memory is bounded twice: per principal only the newest ``threshold`` denial
instants are kept (the count in the window can reach the threshold only if
the threshold-th newest denial is inside it), and at most ``max_principals``
principals are tracked, the least recently denied evicted first. Allowed
requests create no state. An evicted principal forgets its cooldown, so it
can raise one early alert: the safe side for a SOC signal.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(slots=True)
class _Track:
    denials: deque[datetime]
    last_alert: datetime | None = field(default=None)


class DenialDetector:
    """Sliding-window count of denials per principal key.

    ``observe()`` returns True exactly when this denial brings the number of
    denials in the last ``window`` (instants ``t`` with ``now - t < window``)
    to ``threshold`` or more and no alert was raised for this principal in
    the last ``cooldown``. A sustained flood therefore alerts once per
    cooldown, not once per request. Allowed requests neither count nor reset
    the count: interleaving successes must not hide probing.
    """

    def __init__(self, *, threshold: int = 20, window: timedelta = timedelta(minutes=1),
                 cooldown: timedelta = timedelta(minutes=10),
                 max_principals: int = 100_000) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        if window <= timedelta(0):
            raise ValueError(f"window must be positive, not {window}")
        if cooldown < timedelta(0):
            raise ValueError(f"cooldown must not be negative, not {cooldown}")
        if max_principals < 1:
            raise ValueError(f"max_principals must be at least 1, not {max_principals}")
        self.threshold = threshold
        self.window = window
        self.cooldown = cooldown
        self.max_principals = max_principals
        self._tracks: OrderedDict[str, _Track] = OrderedDict()

    def __len__(self) -> int:
        """How many principals are tracked."""
        return len(self._tracks)

    def observe(self, principal: str, denied: bool, now: datetime) -> bool:
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        if not denied:
            return False
        track = self._tracks.get(principal)
        if track is None:
            track = _Track(deque(maxlen=self.threshold))
            self._tracks[principal] = track
            if len(self._tracks) > self.max_principals:
                self._tracks.popitem(last=False)  # least recently denied
        else:
            self._tracks.move_to_end(principal)
        horizon = now - self.window
        while track.denials and track.denials[0] <= horizon:
            track.denials.popleft()
        track.denials.append(now)
        if len(track.denials) < self.threshold:
            return False
        if track.last_alert is not None and now - track.last_alert < self.cooldown:
            return False
        track.last_alert = now
        return True
