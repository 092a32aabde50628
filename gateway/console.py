"""What the command line shows a person, and what it shows a program.

- :func:`table`: rows as an aligned text table, for a terminal; the
  listing verbs print JSON instead when stdout is not a terminal or with
  ``--json`` (:func:`wants_json`), so a script keeps reading what it read.
- :func:`progress`: a progress bar (tqdm) on stderr while long work runs,
  only when stderr is a terminal: piped or redirected, nothing is written.
- :func:`waiting`: the same for work whose size is unknown (an admin call
  that re-wraps every data key): a spinner with the time spent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from tqdm import tqdm

# A column: its heading and how a row's cell is written.
Column = tuple[str, Callable[[Mapping[str, Any]], object]]


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a file
        return False


def wants_json(forced: bool, stream: TextIO | None = None) -> bool:
    """JSON with ``--json``, and whenever stdout is not a person's terminal."""
    return forced or not is_terminal(stream or sys.stdout)


def _cell(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value).replace("\n", " ")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """An aligned table, a heading line first; numbers are right-aligned."""
    cells = [[_cell(get(row)) for _, get in columns] for row in rows]
    numeric = [all(line[i].replace(".", "", 1).isdigit() or line[i] == "-" for line in cells)
               and any(line[i] != "-" for line in cells) for i in range(len(columns))]
    widths = [max([len(heading), *(len(line[i]) for line in cells)])
              for i, (heading, _) in enumerate(columns)]
    out = []
    for line in [[heading for heading, _ in columns], *cells]:
        parts = [text.rjust(width) if num else text.ljust(width)
                 for text, width, num in zip(line, widths, numeric, strict=True)]
        out.append("  ".join(parts).rstrip())
    return "\n".join(out)


def age(seconds: float | None) -> str:
    """A duration as a person reads it: 45s, 12m, 5h, 3d 4h, 400d."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    if s < 30 * 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    return f"{s // 86400}d"


def _screen() -> dict[str, int]:
    """The terminal's size for tqdm, 80 x 24 when it does not say (a fresh
    pseudo-terminal says 0 x 0, and tqdm then draws nothing)."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return {"ncols": 80, "nrows": 24}
    return {"ncols": size.columns or 80, "nrows": size.lines or 24}


class Progress:
    """Where long work is: ``advance(n)`` units more, or ``reached(done,
    total)`` when the work counts for itself (a total learnt on the way)."""

    def __init__(self, bar: tqdm[Any]) -> None:
        self._bar = bar

    def advance(self, n: int) -> None:
        self._bar.update(n)

    def reached(self, done: int, total: int | None = None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()
        self._bar.update(done - self._bar.n)


@contextlib.contextmanager
def progress(total: int | None, what: str, unit: str = "it",
             scale: bool = False) -> Iterator[Progress]:
    """A progress bar on stderr for ``total`` units of work (None: not known
    yet), only when stderr is a terminal; piped or redirected, nothing."""
    shown = is_terminal(sys.stderr)
    bar = tqdm(total=total, desc=what, unit=unit, unit_scale=scale, leave=True,
               disable=not shown, file=sys.stderr, **(_screen() if shown else {}))
    try:
        yield Progress(bar)
    finally:
        bar.close()


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """A spinner with the time spent on stderr while a call of unknown length
    runs, only on a terminal."""
    if not is_terminal(sys.stderr):
        yield
        return
    bar = tqdm(total=None, desc=what, bar_format="{desc} {elapsed}", file=sys.stderr,
               leave=False, **_screen())
    try:
        with every(0.2, bar.refresh):
            yield
    finally:
        bar.close()


@contextlib.contextmanager
def every(interval_s: float, step: Callable[[], None]) -> Iterator[None]:
    """Call ``step`` every ``interval_s`` seconds in a daemon thread while the
    ``with`` block runs (a spinner's tick, a progress poll)."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(interval_s):
            step()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
