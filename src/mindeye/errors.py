"""User-facing errors.

Anything the user can fix (bad input, missing weights, an existing output directory)
raises :class:`MindEyeError`. The CLI prints its message without a traceback and exits
with status 2; library callers can catch it like any exception.

One error, two renderings: a message names the option to change with :func:`option`, which
``str(err)`` renders the way Python callers pass it (``device="cpu"``, ``overwrite=True``) and
the CLI (``err.render("cli")``) as a flag (``--device cpu``, ``--overwrite``).
"""

import re

_OPTION = re.compile("\u27e8([^|\u27e9]*)\\|([^\u27e9]*)\u27e9")  # ⟨python|cli⟩, written by option()


def option(python: str, cli: str) -> str:
    """An option named in an error message: ``python`` as the API takes it (``overwrite=True``), ``cli`` as
    the command line does (``--overwrite``); :meth:`MindEyeError.render` picks one."""
    return f"\u27e8{python}|{cli}\u27e9"


class MindEyeError(Exception):
    """An error caused by input the user controls; the message says what is wrong and how to fix it."""

    exit_code = 2

    def render(self, context: str = "python") -> str:
        """The message for a Python caller (``"python"``, what ``str()`` gives) or the command line (``"cli"``)."""
        text = super().__str__()
        return _OPTION.sub(lambda m: m.group(2 if context == "cli" else 1), text)

    def __str__(self) -> str:
        return self.render("python")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class WeightsUnavailableError(MindEyeError):
    """Pretrained weights could not be found locally or downloaded."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C (SIGINT) so that every command stops the same way: partial output tidied up,
    finished work kept, one line, exit status 143."""


def continue_advice(command: str | None) -> str:
    """What to do after a command stopped early (interrupted, or the disk filled up), per command."""
    if command == "train":
        return "the last checkpoint is kept; continue with `mindeye train --resume` and the same --out"
    if command in ("simulate", "demo", "demo-cohort"):
        return "a simulation cannot resume: its unfinished output was removed; run the command again"
    return "finished work is kept; re-run the same command to continue"


def describe_os_error(exc: OSError, command: str | None = None) -> str:
    """One line for an operating-system error the user can act on (full disk, read-only, bad path)."""
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    advice = {
        errno.ENOSPC: f"no space left on the device; free some space ({continue_advice(command)})",
        errno.EEXIST: "a file is in the way (a directory is needed here, or it already exists); choose another path",
        errno.EDQUOT: "disk quota exceeded; free some space or write elsewhere",
        errno.EROFS: "the filesystem is read-only; choose an output on a writable disk",
        errno.EACCES: "permission denied; choose a path you can write to",
        errno.EPERM: "operation not permitted; choose a path you can write to",
        errno.ENOTDIR: "a part of this path is a regular file, not a directory; choose another path",
        errno.EISDIR: "this is a directory, but a file is needed here; give a file path",
        errno.ENAMETOOLONG: "a file name is too long (mindeye adds suffixes such as .partial or .tmp); "
                            "choose a shorter name",
        errno.ENOENT: "no such file or directory; check the path",
    }.get(exc.errno or -1, exc.strerror or str(exc))
    return f"{where}: {advice}"
