"""Per-browser-session login throttle.

The per-account lockout (``db.auth``) stops guessing one account's password; it never trips when
one session tries one password against many accounts. This throttle slows such a session down:
from the ``free_attempts``-th failure on, each further attempt must wait a cooldown that doubles, up to
``max_wait`` seconds. A success resets it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class LoginThrottle:
    free_attempts: int = 10
    first_wait: float = 15.0
    max_wait: float = 900.0
    failures: int = 0
    blocked_until: float = 0.0
    clock: object = field(default=time.monotonic, repr=False)

    def wait_seconds(self) -> float:
        """Seconds before the next attempt is allowed (0 when it is).

        >>> t = LoginThrottle(free_attempts=3, first_wait=10, clock=lambda: 100.0)
        >>> t.failed(); t.failed(); t.wait_seconds()
        0.0
        >>> t.failed(); t.wait_seconds()
        10.0
        >>> t.failed(); t.wait_seconds()
        20.0
        >>> t.succeeded(); t.wait_seconds()
        0.0
        """
        return max(0.0, self.blocked_until - self.clock())

    def failed(self) -> None:
        self.failures += 1
        extra = self.failures - self.free_attempts
        if extra >= 0:
            self.blocked_until = self.clock() + min(self.max_wait, self.first_wait * 2 ** extra)

    def succeeded(self) -> None:
        self.failures, self.blocked_until = 0, 0.0
