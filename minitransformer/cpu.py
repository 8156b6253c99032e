"""How the engine uses a CPU: memory kept by the allocator, BLAS threads for a block of
code, and a training step's batch split across threads. The library never changes these
settings by itself: the commands do (command_settings), or a user's explicit call.

keep_freed_memory(): a step makes and frees arrays of megabytes by the dozen. glibc's
malloc hands such blocks back to the OS as they are freed (mmap above a threshold, heap
trimming below it), so the next array of that size page-faults all of its memory in again
(docs/backends-and-speed.md has the cost). Once per process (glibc only; set
MINITRANSFORMER_MALLOC=system to leave malloc as it is): blocks up to 32 MB come from the
heap, and up to 512 MB of freed memory is kept for reuse.

blas_threads(n): run a block with the BLAS libraries NumPy loaded limited to n threads, then
restore (threadpoolctl does the finding and setting). The weight analyses are many small
products, where BLAS threads buy nothing, and on a machine whose cores are busy (a training
job beside the analysis) OpenBLAS's waiting threads make each one orders of magnitude slower.

command_settings(blas=1): both, for the body of a command (train, sweep, report, measure, the
circuits CLIs, the benchmarks).

sharded(fn, tokens, shards): a step's loss and gradients as the weighted sum of those of
`shards` slices of the batch, each computed on its own thread with one BLAS thread. NumPy's
matmuls and ufuncs release the GIL, so the shards run side by side: on 2 cores one step of
the reference model goes ~1.5x faster than one call with 2 BLAS threads, whose elementwise
work is single-threaded (make bench). The shards are added in order, so the result does not
depend on which thread finishes first; it equals the one-thread step's up to float rounding
(the batch's sums are added in another order), as a GPU's does.
"""
import concurrent.futures
import contextlib
import ctypes
import functools
import os
import sys
import threading

_pool_lock = threading.Lock()
_pool = None


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
KEPT = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 512 << 20, M_TOP_PAD: 64 << 20}


@functools.lru_cache(maxsize=1)
def keep_freed_memory():
    """Tune glibc's malloc as above, once per process -> True if it was tuned."""
    if os.environ.get("MINITRANSFORMER_MALLOC") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in KEPT.items())


@functools.lru_cache(maxsize=1)
def _controller():
    from threadpoolctl import ThreadpoolController
    return ThreadpoolController()   # inspects the loaded libraries once (milliseconds)


def blas_kernels():
    """-> e.g. 'openblas 0.3.31.188.0 SkylakeX': each BLAS library NumPy loaded, with the
    kernels it chose (OPENBLAS_CORETYPE, where set, makes that choice), for reports."""
    return ", ".join(" ".join(str(info[key]) for key in ("internal_api", "version", "architecture")
                              if info.get(key)) for info in _controller().info()
                     if info.get("user_api") == "blas")


@contextlib.contextmanager
def blas_threads(n=1):
    """with blas_threads(1): ...  (a no-op for BLAS libraries threadpoolctl does not know)."""
    with _controller().limit(limits=int(n), user_api="blas"):
        yield


@contextlib.contextmanager
def command_settings(blas=1):
    """with command_settings(): ... -- what a command sets for its work: malloc keeps freed
    memory, and the BLAS libraries run `blas` threads (None: as they are) until the block ends."""
    keep_freed_memory()
    with contextlib.nullcontext() if blas is None else blas_threads(blas):
        yield


def cpu_count():
    """Cores this process may run on (its affinity where the OS says, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:   # not Linux
        return os.cpu_count() or 1


def resolve_threads(threads, batch_size):
    """A step's thread count: threads >= 1 as given, 0 for every core; at most batch_size
    (a shard is at least one sequence)."""
    if threads < 0:
        raise ValueError(f"threads: expected 0 (every core) or a positive count, got {threads}")
    return max(1, min(threads or cpu_count(), batch_size))


def shard_slices(batch_size, shards):
    """Contiguous, near-equal slices of range(batch_size), the first ones longer."""
    size, extra = divmod(batch_size, shards)
    bounds = [0]
    for i in range(shards):
        bounds.append(bounds[-1] + size + (i < extra))
    return [slice(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def _threads(n):
    """The process's worker threads, at least n (grown, never shrunk)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool._max_workers < n:
            old, _pool = _pool, concurrent.futures.ThreadPoolExecutor(n, "minitransformer-shard")
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def sharded(fn, tokens, shards):
    """fn(tokens) -> (loss, grads), a mean over the batch, computed on `shards` slices of the
    batch side by side -> (loss, grads) of the whole batch: sum_s (B_s / B) fn(tokens[s])."""
    slices = shard_slices(len(tokens), shards)
    if len(slices) == 1:
        return fn(tokens)
    with blas_threads(1):
        results = list(_threads(len(slices)).map(lambda s: fn(tokens[s]), slices))
    weights = [(s.stop - s.start) / len(tokens) for s in slices]
    loss = sum(w * l for w, (l, _) in zip(weights, results))
    grads = results[0][1]
    for name, g in grads.items():
        g *= g.dtype.type(weights[0])
        for w, (_, other) in zip(weights[1:], results[1:]):
            g += g.dtype.type(w) * other[name]
    return loss, grads
