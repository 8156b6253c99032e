"""Atomic file writes: every file goes to a temporary name in the same folder, then is
renamed, so a killed process never leaves a torn file. And the one line a command ends with
when its input is bad."""
import os
import pathlib
import sys
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write):
    """Call write(file_object) on a temp file beside `path`, fsync, then rename onto `path`."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())   # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def output_file(path, flag, suffix=".png"):
    """`path` (a pathlib.Path) if a tool may write its `suffix` file there; else a one-line
    error naming the flag: another kind of name (a run's run.npz!), a folder, or a folder
    that does not exist or cannot be written. Checked before the tool computes anything."""
    path = pathlib.Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{flag} {path}: expected a file name ending in {suffix}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{flag} {path}: is not a file")
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write there ({folder} is not a writable folder)")
    return path


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def printable(text, stream):
    """`text` with what `stream`'s encoding cannot write as backslash escapes (a non-ASCII
    path under PYTHONIOENCODING=ascii), so printing it cannot raise UnicodeEncodeError."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:
        return text


def tolerant_streams(*streams):
    """Make stdout and stderr (or `streams`) write what their encoding cannot as backslash
    escapes instead of raising UnicodeEncodeError: a command calls it first, so no print of
    a user's path can end it in a traceback."""
    for stream in streams or (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError, TypeError, AttributeError):
                pass


def error(message):
    """Print the one-line error a command ends with -> its exit status, 2."""
    print(printable(f"error: {message}", sys.stderr), file=sys.stderr)
    return 2


def cannot_write(flag, path, e):
    """The one-line error for an OSError writing `path` (given by `flag`) -> 2."""
    return error(f"{flag} {path}: cannot write ({e.strerror or e})")


def os_error(e, path):
    """The one-line error for an OSError reading or writing (its file, else `path`) -> 2."""
    return error(f"{e.filename or path}: {e.strerror or e}")
