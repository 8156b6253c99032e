"""Kill this process at a chosen point of a chosen file write, for the tests that resume a
killed run: the kill comes exactly there on any machine, fast or slow.

    python tests/kill_at.py "run.npz#3:mid-write" -m minitransformer.train ...
    install("run.npz#3:mid-write")       # in a process the test starts itself

The spec is "NAME[#N]:POINT": the Nth write (default the 1st) of the file named NAME, at
POINT: "mid-write" (half of the bytes under minitransformer.io's temporary name, fsynced,
the target untouched) or "after-rename" (the file in place). It works by wrapping os.fsync
and os.replace, which minitransformer.io.atomic_write calls once per file it writes.
"""
import collections
import os
import runpy
import signal
import sys


def _target(spec):
    where, point = spec.rsplit(":", 1)
    name, _, nth = where.partition("#")
    if point not in ("mid-write", "after-rename"):
        raise ValueError(f"kill_at: {spec!r}: the point is mid-write or after-rename")
    return name, int(nth or 1), point


def _written_name(fd):
    """The target name of a temporary file of atomic_write (".run.npz.abc123.tmp")."""
    base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
    return base[1:].rsplit(".", 2)[0] if base.startswith(".") and base.endswith(".tmp") else None


def install(spec):
    """Wrap os.fsync and os.replace so that this process SIGKILLs itself at `spec`."""
    name, nth, point = _target(spec)
    fsyncs, replaces = collections.Counter(), collections.Counter()
    fsync, replace = os.fsync, os.replace

    def killing_fsync(fd):
        written = _written_name(fd)
        if written is not None:
            fsyncs[written] += 1
            if point == "mid-write" and written == name and fsyncs[written] == nth:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                fsync(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return fsync(fd)

    def killing_replace(src, dst, **kwargs):
        replace(src, dst, **kwargs)
        written = os.path.basename(os.fspath(dst))
        replaces[written] += 1
        if point == "after-rename" and written == name and replaces[written] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

    os.fsync, os.replace = killing_fsync, killing_replace


def run_killed(spec, fn, *args, **kwargs):
    """fn(*args, **kwargs) in this process, killed at `spec` (a multiprocessing target)."""
    install(spec)
    return fn(*args, **kwargs)


if __name__ == "__main__":   # kill_at.py SPEC -m MODULE ARGS...
    spec, flag, module, *rest = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: python tests/kill_at.py SPEC -m MODULE [ARGS...]")
    install(spec)
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # as -m would: the repository
    sys.argv = [module] + rest
    runpy.run_module(module, run_name="__main__", alter_sys=True)
