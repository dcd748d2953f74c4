"""Admission of a request: the client's rate budget and live-job bound, checked in the submit's own step.

The web builds an Admission per request (who the client is, which budgets apply) and the job
service evaluates it inside the same Redis script that looks up the request cache (ADMIT_LUA in
jobs.store.scripts), so a
submission's checks cost no round trip of their own. The budget is a sliding window counter
(the count of the current window plus the previous one's, weighted by how much of it still
overlaps), the strategy of Flask-Limiter's "sliding-window-counter", with its keys under
RATE_LIMIT_KEY. Control actions spend their own budget (scope "control") with the same script.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from jobs.store.keys import PREFIX

#: String: the requests of one scope ("submit", "control") one client made in one window of one
#: limit ("600/60" = 600 per 60 s).
RATE_LIMIT_KEY = PREFIX + "ratelimit:{scope}:{client}:{amount}/{window}:{index}"
#: String: live (queued, started or paused) jobs of one client, for MAX_QUEUED_PER_CLIENT.
CLIENT_LIVE_KEY = PREFIX + "client:{client}:live"


@dataclass(frozen=True)
class RateLimit:
    """One budget, e.g. 600 per 60 s; `label` is how the 429 names it ("600 per 1 minute")."""

    amount: int
    window: int
    label: str


@dataclass
class Admission:
    """The checks one submission must pass before anything is created or answered from cache."""

    client: str
    limits: tuple[RateLimit, ...] = ()
    #: Most live jobs the client may have (0: no bound); only for a submission that passed validation.
    live_bound: int = 0
    scope: str = "submit"
    now: float = field(default_factory=time.time)
    #: The storage quota (MAX_STORED_BYTES_PER_CLIENT, 0: none) and the bytes this submission would add:
    #: checked in the same script, first (jobs.store.quota), so the quota costs no round trip of its own.
    stored_limit: int = 0
    stored_adding: int = 0

    @property
    def checks(self) -> bool:
        """Whether there is anything to check (else the scripts skip it)."""
        return bool(self.limits) or self.live_bound > 0 or self.stored_limit > 0

    def script_keys(self) -> list[str]:
        """Live-count key, then each limit's current and previous window."""
        keys = [CLIENT_LIVE_KEY.format(client=self.client)]
        for lim in self.limits:
            index = int(self.now // lim.window)
            for i in (index, index - 1):
                keys.append(RATE_LIMIT_KEY.format(scope=self.scope, client=self.client, amount=lim.amount,
                                                  window=lim.window, index=i))
        if self.stored_limit > 0:
            from jobs.store.quota import STORED_TOTAL_KEY  # quota imports Rejected from here

            keys.append(STORED_TOTAL_KEY.format(client=self.client))
        return keys

    def script_args(self) -> list[Any]:
        """Live bound, limit count, then (amount, window, elapsed share of the current window) per limit."""
        args: list[Any] = [self.live_bound, len(self.limits)]
        for lim in self.limits:
            args += [lim.amount, lim.window, repr((self.now % lim.window) / lim.window)]
        return [*args, self.stored_limit, self.stored_adding]

    def peek(self, conn: Any) -> Rejected | None:
        """The rate rejection this request would get, read without spending anything (one MGET).

        For a big body: the web asks before reading it, so a client over its budget is refused
        before it sends 100 MB (the submit's own script still spends and checks, atomically)."""
        if not self.limits:
            return None
        values = conn.mget(self.script_keys()[1:])
        for i, lim in enumerate(self.limits):
            cur, prev = int(values[2 * i] or 0), int(values[2 * i + 1] or 0)
            share = (self.now % lim.window) / lim.window
            if prev * (1 - share) + cur + 1 > lim.amount:
                return self.rejection([b"limited", i + 1])
        return None

    def rejection(self, reply: list[Any]) -> Rejected:
        """The 429 for a script reply of b'limited' (with the limit's index), b'busy' (with the live count)
        or b'quota' (with the bytes the client holds)."""
        if reply[0] == b"quota":
            from jobs.store.quota import rejection

            return rejection(int(reply[1]), self.stored_adding, self.stored_limit)
        if reply[0] == b"limited":
            lim = self.limits[int(reply[1]) - 1]
            retry = max(1, math.ceil(lim.window - self.now % lim.window))
            return Rejected("rate", retry, f"rate limit of {lim.label} per client exceeded; retry in {retry} s")
        live = int(reply[1])
        return Rejected("live", 5, f"this client has {live} live jobs, the most allowed (MAX_QUEUED_PER_CLIENT="
                                   f"{self.live_bound}); wait for some to end, or cancel them")


class Rejected(Exception):
    """A submission over its client's budget (HTTP 429 with Retry-After)."""

    def __init__(self, kind: str, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.retry_after = retry_after
        self.detail = detail
