"""The crunch CLI's progress display on stderr: a live line on a terminal, plain periodic lines otherwise."""

from __future__ import annotations

import math
import shutil
import threading
import time
from typing import IO, Any

#: Plain progress lines (stderr not a terminal) at most this often.
PLAIN_INTERVAL = 5.0



def clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """A live progress line on a terminal (redrawn with \\r), plain periodic lines otherwise."""

    SPIN = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"

    def __init__(self, stream: IO[str], *, quiet: bool = False, tty: bool | None = None) -> None:
        self.stream = stream
        self.quiet = quiet
        self.tty = stream.isatty() if tty is None else tty
        enc = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.fancy = enc.startswith("utf")
        self.lock = threading.RLock()
        self.job: dict[str, Any] | None = None
        self.t0 = time.monotonic()
        self.drawn = 0
        self.frame = 0
        self.rate_base: tuple[float, float] | None = None
        self.last_status: str | None = None
        self.last_line = 0.0
        self.last_pct: float | None = None
        self.stop = threading.Event()
        self.ticker: threading.Thread | None = None
        self.trouble: str | None = None

    def info(self, msg: str) -> None:
        """Chatter (what is happening, where a file went): silenced by --quiet."""
        if not self.quiet:
            self.note(msg)

    def note(self, msg: str) -> None:
        """Notices and errors: printed even with --quiet."""
        with self.lock:
            self._clear()
            print(msg, file=self.stream, flush=True)
            self._draw()

    def retrying(self, msg: str, short: str) -> None:
        """An outage notice: a line the first time; on a live bar, later ones update the bar only."""
        with self.lock:
            first = self.trouble is None
            self.trouble = short
            if first or not (self.tty and self.drawn):
                self.note(msg)
            else:
                self._draw()

    def recovered(self, msg: str) -> None:
        with self.lock:
            self.trouble = None
            self.note(msg)

    def seed(self, job: dict[str, Any]) -> None:
        """The state just announced in a notice, so the plain lines do not repeat it at once."""
        with self.lock:
            self.last_status, self.last_pct, self.last_line = job.get("status"), percent(job), time.monotonic()

    def update(self, job: dict[str, Any]) -> None:
        with self.lock:
            status = str(job.get("status"))
            pct = percent(job)
            now = time.monotonic()
            if status == "started" and pct is not None and (
                    self.rate_base is None or status != self.last_status or pct < self.rate_base[1]):
                self.rate_base = (now, pct)
            self.job = job
            if self.quiet:
                self.last_status = status
                return
            if self.tty:
                self._draw()
                if self.ticker is None and job.get("status") not in ("finished", "failed", "canceled"):
                    self.ticker = threading.Thread(target=self._tick, daemon=True)
                    self.ticker.start()
            elif status != self.last_status or (
                    pct is not None and pct != self.last_pct and now - self.last_line >= PLAIN_INTERVAL):
                print(self._plain(job), file=self.stream, flush=True)
                self.last_line, self.last_pct = now, pct
            self.last_status = status

    def close(self) -> None:
        self.stop.set()
        if self.ticker is not None:
            self.ticker.join(1.0)
        with self.lock:
            self._clear()
            self.job = None

    def _tick(self) -> None:
        while not self.stop.wait(0.2):
            with self.lock:
                self.frame += 1
                self._draw()

    def _clear(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\r" + " " * self.drawn + "\r")
            self.stream.flush()
            self.drawn = 0

    def _draw(self) -> None:
        if not self.tty or self.quiet or self.job is None or self.stop.is_set():
            return
        width = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
        line = self._line(self.job, width)[:width]
        self.stream.write("\r" + line + " " * max(0, self.drawn - len(line)))
        self.stream.flush()
        self.drawn = len(line)

    def _line(self, job: dict[str, Any], width: int) -> str:
        status = str(job.get("status"))
        spin = self.SPIN[self.frame % len(self.SPIN)] if self.fancy else "-\\|/"[self.frame % 4]
        head = f"{spin} {job.get('type', 'job')} {str(job.get('id', ''))[:8]} {status}"
        elapsed = time.monotonic() - self.t0
        if self.trouble:
            return f"{head}  {clock(elapsed)}  {self.trouble}"
        tail = f"  {clock(elapsed)}"
        pct = percent(job)
        if status == "paused":
            return f"{head}  (resume: crunch resume {job.get('id')}){tail}"
        if pct is None or status == "queued":
            return head + tail
        eta = self._eta(pct)
        tail = f" {pct:5.1f}%  {clock(elapsed)}" + (f"  ~{clock(eta)} left" if eta is not None else "")
        # The bar keeps its width when the estimate appears: room is kept for the longest tail.
        room = width - len(head) - len(" 100.0%  0:00:00  ~0:00:00 left") - 3
        if room < 10:
            return head + tail
        bar_width = min(room, 40)
        filled = pct / 100 * bar_width
        full = int(filled)
        if self.fancy:
            partial = " ▏▎▍▌▋▊▉"[int((filled - full) * 8)] if full < bar_width else ""
            bar = "█" * full + partial
            bar += " " * (bar_width - len(bar))
        else:
            bar = ("#" * full).ljust(bar_width, "-")
        return f"{head} [{bar}]{tail}"

    def _eta(self, pct: float) -> float | None:
        if self.rate_base is None:
            return None
        t0, p0 = self.rate_base
        dt, dp = time.monotonic() - t0, pct - p0
        if dt < 1.0 or dp <= 0:
            return None
        eta = (100.0 - pct) * dt / dp
        return eta if eta >= 1.0 else None

    def _plain(self, job: dict[str, Any]) -> str:
        status = str(job.get("status"))
        pct = percent(job)
        text = f"job {job.get('id')}: {status}"
        if pct is not None and status not in ("queued", "finished"):
            text += f" {pct:.1f}%"
        return text + f" ({clock(time.monotonic() - self.t0)})"


def percent(job: dict[str, Any]) -> float | None:
    progress = job.get("progress")
    if not isinstance(progress, dict):
        return None
    try:
        pct = float(progress.get("percent"))
    except (TypeError, ValueError):
        return None
    return min(max(pct, 0.0), 100.0) if math.isfinite(pct) else None
