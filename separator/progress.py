"""What the command line shows while it separates: a bar in seconds of audio, and a summary line.

The bar (tqdm, on a terminal only) names the model and the device, counts seconds of audio
with an ETA, and makes way for one summary line when the work ends::

    song.mp3: 3:21 of audio in 8.2 s (24.5x realtime), spleeter-2stems on cpu

The summary is printed whether or not there is a terminal (it is one line on stderr, what a
log wants); ``quiet`` silences both.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO


def clock(seconds: float | None) -> str:
    """``3:21``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def summary(what: str, audio_s: float, wall_s: float, model: str | None = None,
            device: str | None = None) -> str:
    """One line: how much audio, how long it took, how many times realtime, with what."""
    speed = f" ({audio_s / wall_s:.1f}x realtime)" if wall_s > 0 and audio_s > 0 else ""
    used = f", {model} on {device}" if model else ""
    return f"{what}: {clock(audio_s)} of audio in {wall_s:.1f} s{speed}{used}"


class AudioBar:
    """A progress bar in seconds of audio (nothing when not on a terminal or ``quiet``).

    ``update(done, total)`` sets the position (one file); ``advance(seconds)`` and
    ``grow(seconds)`` move the position and the total (many files whose lengths become known
    as they are probed).  ``finish(line)`` closes the bar and prints the summary line."""

    def __init__(self, label: str, *, quiet: bool = False, total: float = 0.0,
                 stream: TextIO | None = None, always: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.started = time.perf_counter()
        self.bar = None
        if not quiet and (always or self.stream.isatty()):
            from tqdm import tqdm

            self.bar = tqdm(total=max(total, 0.0), desc=label, unit="s", leave=False, file=self.stream,
                            dynamic_ncols=True, mininterval=0.5,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s of audio "
                                       "[{elapsed}<{remaining}]{postfix}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def update(self, done: float, total: float | None = None) -> None:
        """Set the position (and the total, when given) in seconds of audio."""
        if self.bar is not None:
            self.bar.total = max(float(self.bar.total if total is None else total), float(done))
            self.bar.n = float(done)
            self.bar.refresh()

    def grow(self, seconds: float) -> None:
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0.0) + seconds
            self.bar.refresh()

    def advance(self, seconds: float) -> None:
        if self.bar is not None:
            self.bar.n = min(self.bar.n + seconds, self.bar.total or float("inf"))
            self.bar.refresh()

    def note(self, text: str) -> None:
        """A line above the bar (or on its own without one)."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        elif not self.quiet:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def finish(self, line: str) -> None:
        self.close()
        if not self.quiet:
            print(line, file=self.stream, flush=True)


__all__ = ["AudioBar", "clock", "summary"]
