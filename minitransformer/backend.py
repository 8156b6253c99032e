"""Array backends: NumPy always, CuPy when asked for and present.

There is no module-level `xp`: ops ask their inputs which module they belong to, so the
same code runs on either backend and nothing is frozen at import time.
"""
import numpy as np

DEVICES = ("cpu", "gpu", "auto")


def _cupy():
    """(cupy, None) if CuPy imports and runs a trial kernel on a CUDA device, else (None, why)."""
    try:
        import cupy
    except ImportError:
        return None, "CuPy is not installed (pip install -e .[gpu])"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None, "CuPy sees no CUDA device"
        # a trial: a reduction (compiled on first use) and a matmul (cuBLAS), read back once.
        # A driver, NVRTC or cuBLAS that cannot run fails here, not in the middle of a run.
        trial = cupy.ones((2, 2), dtype=cupy.float32)
        if float((trial @ trial).sum()) != 8.0:
            return None, "a trial matmul on the GPU gave a wrong answer"
    except Exception as e:  # no driver, no device, a library missing: CuPy imports but cannot run
        return None, f"CuPy cannot run on the GPU ({type(e).__name__}: {e})"
    return cupy, None


def array_module(*arrays):
    """numpy or cupy, whichever the arrays belong to (numpy when CuPy is absent)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def device_of(a):
    """Where an array lives: "cpu", or "gpu:<id>" of the CUDA device holding it."""
    if type(a).__module__.startswith("cupy"):
        return f"gpu:{a.device.id}"
    return "cpu"


def resolve_device(device):
    """'cpu' | 'gpu' | 'auto' -> the array module to use. 'gpu' without a CuPy that runs on a
    CUDA device is an error; 'auto' is then NumPy."""
    if device == "cpu":
        return np
    if device not in ("gpu", "auto"):
        raise ValueError(f"device: {device!r} is not one of {', '.join(map(repr, DEVICES))}")
    cupy, why = _cupy()
    if cupy is None and device == "gpu":
        raise ValueError(f"device: 'gpu' asked for, but {why}")
    return cupy or np


def add_device_argument(parser, default="cpu"):
    """--device cpu|gpu|auto on a command line: where the models it builds compute. default
    None leaves args.device None when the flag is absent (the caller's own default applies)."""
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help="array backend: NumPy (cpu), CuPy (gpu), or CuPy if it runs here, "
                             f"else NumPy (auto); default {default or 'cpu'}")


def to_floats(*scalars):
    """0-d arrays of one backend -> a list of Python floats, read in one transfer (one host
    sync on a GPU, however many scalars)."""
    xp = array_module(*scalars)
    return xp.stack([xp.asarray(s, dtype=np.float64) for s in scalars]).tolist()


def to_numpy(a):
    """A host NumPy array from either backend."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)
