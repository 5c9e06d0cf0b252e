"""User-facing errors.

Anything the user can fix (bad input, missing weights, an existing output directory)
raises :class:`MindEyeError`. The CLI prints its message without a traceback and exits
with status 2; library callers can catch it like any exception.
"""


class MindEyeError(Exception):
    """An error caused by input the user controls; the message says what is wrong and how to fix it."""

    exit_code = 2


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
