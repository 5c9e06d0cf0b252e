"""Log lines of long jobs: Python ``logging`` under the logger ``"mindeye"`` (one line per epoch or stage).

Library code logs with ``logging.getLogger(__name__)`` (a child of ``"mindeye"``) and never configures
logging itself. The CLI calls :func:`configure_logging` once per command: INFO lines on stderr (``-q``:
warnings only, ``-v``: debug too), bare messages, written through ``tqdm.write`` so that they do not tear a
progress bar. Progress bars are separate: they are drawn only on a terminal (or in a notebook) and turned
off with ``--no-progress``; the log lines stay either way. From Python::

    import logging
    logging.basicConfig(level=logging.INFO)  # or mindeye.utils.logs.configure_logging()
"""

from __future__ import annotations

import logging
import sys
from typing import Any

LOGGER_NAME = "mindeye"


class _StderrHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` at each record (a redirected or captured stream included)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            try:
                from tqdm.auto import tqdm

                tqdm.write(message, file=sys.stderr)  # clears and redraws an active progress bar
            except ImportError:  # pragma: no cover - tqdm is a dependency
                print(message, file=sys.stderr, flush=True)
        except Exception:  # pragma: no cover - logging must never break the job
            self.handleError(record)


def level_for(verbose: int = 0, quiet: bool = False) -> int:
    """``-q``: WARNING, default: INFO, ``-v``: DEBUG."""
    if quiet:
        return logging.WARNING
    return logging.DEBUG if verbose else logging.INFO


def configure_logging(verbose: int = 0, quiet: bool = False) -> logging.Logger:
    """Send the ``"mindeye"`` logger's records at the chosen level to stderr, one bare line each. Calling it
    again replaces the handler it installed (never adds a second one)."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level_for(verbose, quiet))
    return logger


class LogProgress:
    """What a disabled progress bar becomes: a log line at most every ``interval`` seconds and one at the end
    (``desc: 1,200/9,841 img (12%), 35.2 img/s, ~4 min left``), so a job without a terminal is never silent.
    Supports the parts of tqdm's interface mindeye uses (update, set_postfix(_str), close, iteration)."""

    def __init__(self, iterable: Any = None, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", interval: float = 60.0, **_tqdm_options: Any) -> None:
        import time

        self._clock = time.perf_counter
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self.initial, self.postfix = total, initial, initial, ""
        self.t0 = self.last = self._clock()
        self.closed = False

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._clock() - self.last >= self.interval:
            self._emit()

    def line(self) -> str:
        elapsed = self._clock() - self.t0
        done = self.n - self.initial
        text = f"{self.desc}: {self.n:,}" + (f"/{self.total:,}" if self.total else "") + f" {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.total and self.n < self.total:
                left = (self.total - self.n) / rate
                text += f", ~{left / 60:.0f} min left" if left >= 90 else f", ~{left:.0f} s left"
        else:
            text += f", {elapsed:.0f} s"
        return text + (f" [{self.postfix}]" if self.postfix else "")

    def _emit(self) -> None:
        self.last = self._clock()
        logging.getLogger(LOGGER_NAME).info(self.line())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n > self.initial:  # work was done: say how much, and in how long
                self._emit()


def progress_bar(iterable: Any = None, *, disable: bool = False, **options: Any) -> Any:
    """``tqdm.auto.tqdm(iterable, **options)``; with ``disable=True``, a :class:`LogProgress` instead (a log
    line a minute and one at the end in place of the bar)."""
    if disable:
        return LogProgress(iterable, **options)
    from tqdm.auto import tqdm

    return tqdm(iterable, **options)
