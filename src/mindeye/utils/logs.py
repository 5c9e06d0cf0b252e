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
