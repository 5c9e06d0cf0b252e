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


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error the user can act on (full disk, read-only, bad path)."""
    import errno

    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    advice = {
        errno.ENOSPC: "no space left on the device; free some space (finished work is kept: re-run the command, "
                      "with --resume for train, to continue)",
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
