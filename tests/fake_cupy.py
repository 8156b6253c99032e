"""A strict, NumPy-backed imitation of CuPy, so the GPU path is tested on a machine without
one. The `fake_gpu` fixture (conftest.py) puts `cupy` below into sys.modules["cupy"]; the
engine then resolves device="gpu" to it exactly as it resolves the real CuPy.

What it imitates, so that code passing here does not fail on CuPy for these reasons:
- its own array type, `ndarray`, not a NumPy subclass; `type(a).__module__` is "cupy", as
  CuPy's is. Implicit conversion to the host is a TypeError, as in CuPy: np.asarray(a),
  a.__array__(). A NumPy array as a kernel's operand is a TypeError too ("Unsupported
  type", as CuPy says); Python and NumPy scalars are fine. Assigning a NumPy array through
  a basic index is CuPy's ValueError ("non-scalar numpy.ndarray cannot be used for fill").
- stricter than CuPy, on purpose (code passing here names its array module and its
  uploads): a NumPy ufunc or function given a device array is a TypeError here, where CuPy
  dispatches it to itself and returns a device array (NEP 13/18, docs.cupy.dev user guide
  "Interoperability"); a NumPy array or a list as an index, or as a value assigned through
  an index array, is a TypeError here, where CuPy quietly uploads it.
- only names CuPy has: the module and the array type hold a whitelist (below), a subset of
  CuPy's; anything else is an AttributeError (so also cupy.linalg, cupy.random, cupy.fuse,
  ndarray.put, ufunc.reduceat, which CuPy has), so our code cannot lean on a NumPy-only
  function. Signatures and refusals follow CuPy 13's where we use them: ndarray.clip(min,
  max), ndarray.set (same shape and dtype), where (both x and y or neither), ufunc.at
  (CuPy's atomic scatter ops and their dtypes).
- explicit transfers: cupy.asnumpy(a), a.get(), a.item(), a.tolist(), float/int/bool(a)
  of a one-element array (an `if a:` too), repr/format, boolean-mask indexing (it must
  learn the result's size), cuda.Device().synchronize() each count one host sync; an
  asarray of host data counts one upload.
- counts (COUNTS): every kernel CuPy would launch (an elementwise op, a reduction, a
  matmul/einsum, an indexing that gathers or scatters, an assignment, a fill such as
  zeros/full/arange, a copy, a reshape that must copy), and every device allocation with
  its bytes. Views (basic slicing, reshape of contiguous data, transpose, broadcast_to)
  launch nothing; empty/empty_like allocate and launch nothing, as on a GPU.
What it does not imitate: timing, streams and asynchrony, memory limits, a GPU's rounding
(the numbers are NumPy's), kernel fusion (cupy.fuse, ElementwiseKernel: absent, so
unusable), how many kernels CuPy's einsum or concatenate really split into (one each
here), and the dtype rules where CuPy's differ from NumPy 2's.
"""
import contextlib
import os
import sys
import types
from collections import Counter

import numpy as np

IMPLICIT = ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly.")   # CuPy's words


class Counts:
    """What the device was asked to do: launches {(kernel, caller): n}, syncs [where],
    allocations and their bytes, uploads (host -> device copies)."""

    def __init__(self):
        self.launches, self.syncs = Counter(), []
        self.allocations = self.allocated_bytes = self.uploads = 0

    def launch(self, kernel):
        self.launches[(kernel, _caller())] += 1

    def sync(self, what):
        self.syncs.append(f"{what} at {_caller(depth=3)}")

    def allocate(self, a):
        self.allocations += 1
        self.allocated_bytes += a.nbytes

    @property
    def n_launches(self):
        return sum(self.launches.values())

    def report(self, top=12):
        """A few lines for an assertion message: totals, every sync, the busiest call sites."""
        lines = [f"{self.n_launches} launches, {len(self.syncs)} host syncs, {self.allocations} "
                 f"allocations ({self.allocated_bytes:,} bytes), {self.uploads} uploads"]
        lines += [f"  sync: {s}" for s in self.syncs]
        sites = Counter()
        for (kernel, where), n in self.launches.items():
            sites[where] += n
        lines += [f"  {n:5d} launches from {where}" for where, n in sites.most_common(top)]
        return "\n".join(lines)


COUNTS = Counts()


@contextlib.contextmanager
def counting():
    """with counting() as counts: ...  -> what the block (and only it) asked of the device."""
    global COUNTS
    outer, COUNTS = COUNTS, Counts()
    try:
        yield COUNTS
    finally:
        COUNTS = outer


def _caller(depth=1):
    """'file:line function' of the nearest frame outside this file (where the engine asked),
    and of its callers up to `depth` frames, joined by ' < '."""
    frame = sys._getframe(2)
    while frame.f_code.co_filename == __file__:
        frame = frame.f_back
    sites = []
    while frame is not None and len(sites) < depth:
        code = frame.f_code
        sites.append(f"{os.path.relpath(code.co_filename)}:{frame.f_lineno} {code.co_name}")
        frame = frame.f_back
    return " < ".join(sites)


# ---- the array type ---------------------------------------------------------------------

class ndarray:
    """A device array: holds a NumPy array that only this module touches."""
    __slots__ = ("_a",)
    __hash__ = None
    __array_ufunc__ = None    # NumPy's ufuncs refuse it, and `host + device` defers to us

    def __array__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    def __array_function__(self, *args, **kwargs):
        raise TypeError(IMPLICIT)

    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    device = property(lambda self: cuda.Device(0))
    T = property(lambda self: self.transpose())

    def __len__(self):
        return len(self._a)

    def __iter__(self):       # CuPy yields device sub-arrays, one per row: views
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self)))

    # explicit transfers: each a host sync
    def get(self):
        COUNTS.sync("get()")
        return self._a.copy()

    def item(self):
        COUNTS.sync("item()")
        return self._a.item()

    def tolist(self):
        COUNTS.sync("tolist()")
        return self._a.tolist()

    def _scalar(self, kind):
        COUNTS.sync(f"{kind.__name__}()")
        return kind(self._a)

    __float__ = lambda self: self._scalar(float)
    __int__ = lambda self: self._scalar(int)
    __bool__ = lambda self: self._scalar(bool)
    __complex__ = lambda self: self._scalar(complex)

    def __repr__(self):
        COUNTS.sync("repr()")
        return repr(self._a)

    def __format__(self, spec):
        COUNTS.sync("format()")
        return format(self._a[()] if self.ndim == 0 else self._a, spec)

    def set(self, host):
        """Copy a host array of this one's shape and dtype into it (an upload), as CuPy's."""
        if not isinstance(host, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if host.dtype != self.dtype:
            raise TypeError(f"{host.dtype} array cannot be set to {self.dtype} array")
        if host.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {host.shape}")
        if not (self.flags.c_contiguous or self.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        COUNTS.uploads += 1
        self._a[...] = host

    # views, or a copy when the layout forces one
    def reshape(self, *shape, order="C"):
        return _reshaped("reshape", self._a.reshape(*shape, order=order), self)

    def transpose(self, *axes):
        return _view(self._a.transpose(*axes))

    def swapaxes(self, a, b):
        return _view(self._a.swapaxes(a, b))

    def squeeze(self, axis=None):
        return _view(self._a.squeeze(axis))

    def ravel(self):
        return _reshaped("ravel", self._a.ravel(), self)

    def view(self, dtype=None):
        return _view(self._a.view() if dtype is None else self._a.view(dtype))

    def __getitem__(self, key):
        raw, gathers = _index(key)
        if not gathers:
            return _view(self._a[raw])
        COUNTS.launch("take")
        return _new(self._a[raw])

    def __setitem__(self, key, value):
        raw, gathers = _index(key)
        if not gathers and isinstance(value, np.ndarray) and value.ndim:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")   # CuPy's words
        COUNTS.launch("setitem")
        self._a[raw] = _operand(value)

    # kernels
    def copy(self):
        return _kernel("copy", np.copy, self)

    def flatten(self):
        return _kernel("copy", lambda a: a.flatten(), self)

    def astype(self, dtype, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return _kernel("astype", lambda a: a.astype(dtype), self)

    def fill(self, value):
        COUNTS.launch("fill")
        self._a.fill(_operand(value))

    def dot(self, other):
        return _kernel("dot", np.dot, self, other)

    def clip(self, min=None, max=None, out=None):   # CuPy's (and NumPy's) keyword names
        return _kernel("clip", np.clip, self, min, max, out=out)

    def nonzero(self):
        COUNTS.sync("nonzero()")
        COUNTS.launch("nonzero")
        return tuple(_new(i) for i in self._a.nonzero())


def _reduction(name):
    fn = getattr(np, name)
    return lambda self, *args, **kwargs: _kernel(name, fn, self, *args, **kwargs)


for _name in ("sum", "mean", "max", "min", "argmax", "argmin", "all", "any", "prod", "cumsum",
              "var", "std"):
    setattr(ndarray, _name, _reduction(_name))

_OPERATORS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "truediv": np.true_divide,
              "floordiv": np.floor_divide, "mod": np.remainder, "pow": np.power,
              "matmul": np.matmul, "and": np.bitwise_and, "or": np.bitwise_or,
              "xor": np.bitwise_xor}
for _name, _fn in _OPERATORS.items():
    setattr(ndarray, f"__{_name}__", lambda self, other, fn=_fn: _kernel(fn.__name__, fn, self, other))
    setattr(ndarray, f"__r{_name}__", lambda self, other, fn=_fn: _kernel(fn.__name__, fn, other, self))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__",
                lambda self, other, fn=_fn: _kernel(fn.__name__, fn, self, other, out=self))
for _name, _fn in {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal,
                   "eq": np.equal, "ne": np.not_equal}.items():
    setattr(ndarray, f"__{_name}__", lambda self, other, fn=_fn: _kernel(fn.__name__, fn, self, other))
for _name, _fn in {"neg": np.negative, "abs": np.absolute, "invert": np.invert}.items():
    setattr(ndarray, f"__{_name}__", lambda self, fn=_fn: _kernel(fn.__name__, fn, self))
ndarray.__module__ = "cupy"   # as CuPy's: what minitransformer.backend recognises


def _view(raw):
    """A device array sharing raw's memory: no kernel, no allocation."""
    a = ndarray.__new__(ndarray)
    a._a = np.asarray(raw)
    return a


def _new(raw):
    """A freshly allocated device array holding raw (a 0-d array where NumPy gives a scalar)."""
    a = _view(raw)
    COUNTS.allocate(a._a)
    return a


def _reshaped(name, raw, source):
    if np.may_share_memory(raw, source._a):
        return _view(raw)
    COUNTS.launch(name)   # the layout forced a copy
    return _new(raw)


def _operand(x):
    """What a kernel may read: a device array, a scalar, an axis, never host array data."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (np.ndarray, list)) or isinstance(x, tuple) and not all(
            isinstance(i, (int, np.integer)) for i in x):
        raise TypeError(f"Unsupported type {type(x)}")
    return x


def _index(key):
    """A key of ints, slices, None, Ellipsis and device arrays -> (NumPy key, gathers?).
    A full integer index keeps a 0-d view (CuPy returns arrays, never scalars)."""
    parts = key if isinstance(key, tuple) else (key,)
    raw, gathers = [], False
    for k in parts:
        if isinstance(k, ndarray):
            if k.dtype == bool:
                COUNTS.sync("boolean-mask indexing")
            gathers = True
            raw.append(k._a)
        elif k is None or k is Ellipsis or isinstance(k, (slice, int, np.integer)):
            raw.append(k)
        else:
            raise TypeError(f"Unsupported type {type(k)} as an index (a host array or a list "
                            f"would be copied to the device first: do it explicitly)")
    if not gathers and Ellipsis not in raw:
        raw.append(Ellipsis)
    return tuple(raw), gathers


def _kernel(name, fn, *args, out=None, **kwargs):
    """One launch of `fn` on device operands; into `out` (no allocation) or a new array."""
    COUNTS.launch(name)
    raw = [_operand(a) for a in args]
    kwargs = {k: _operand(v) if isinstance(v, ndarray) else v for k, v in kwargs.items()}
    if out is None:
        return _new(fn(*raw, **kwargs))
    if not isinstance(out, ndarray):
        raise TypeError(f"out: Unsupported type {type(out)}")
    fn(*raw, out=out._a, **kwargs)
    return out


# ---- the module's functions -------------------------------------------------------------

# the dtypes CuPy's atomic scatter kernels take (cupy/_core/_routines_indexing.pyx,
# _scatter_op_single); subtract.at's are not checked here
_AT_DTYPES = {"add": "int32 uint32 uint64 float16 float32 float64",
              "maximum": "int32 uint32 uint64 float32 float64",
              "minimum": "int32 uint32 uint64 float32 float64"}


class ufunc:
    """An elementwise kernel; .at only for the scatter ops CuPy has (add, subtract, max, min)."""

    def __init__(self, fn):
        self._fn, self.__name__ = fn, fn.__name__
        self.nin, self.nout = fn.nin, fn.nout

    def __call__(self, *args, out=None, dtype=None):
        kwargs = {} if dtype is None else {"dtype": dtype}
        return _kernel(self.__name__, self._fn, *args, out=out, **kwargs)

    def at(self, a, indices, b=None):
        if self.__name__ not in ("add", "subtract", "maximum", "minimum"):
            raise NotImplementedError(f"fake cupy: {self.__name__}.at (CuPy's scatter ops are "
                                      f"add, subtract, maximum, minimum)")
        if a.dtype.name not in _AT_DTYPES.get(self.__name__, a.dtype.name).split():
            raise TypeError(f"{self.__name__}.at: CuPy's scatter kernel does not take {a.dtype} "
                            f"(only {_AT_DTYPES[self.__name__]})")
        raw, _ = _index(indices)
        COUNTS.launch(self.__name__ + ".at")
        self._fn.at(a._a, raw[:-1] if raw[-1] is Ellipsis else raw, _operand(b))


UFUNCS = ("add subtract multiply divide true_divide floor_divide power negative absolute abs "
          "exp log log1p expm1 sqrt square tanh sin cos sign maximum minimum greater "
          "greater_equal less less_equal equal not_equal logical_and logical_or logical_not "
          "isfinite isnan isinf floor ceil")
REDUCTIONS = "sum mean max min amax amin argmax argmin all any prod cumsum var std count_nonzero"
KERNELS = {"matmul": np.matmul, "dot": np.dot, "vdot": np.vdot, "einsum": np.einsum,
           "tensordot": np.tensordot, "outer": np.outer, "clip": np.clip,
           "take_along_axis": np.take_along_axis, "take": np.take, "triu": np.triu,
           "tril": np.tril, "allclose": np.allclose, "array_equal": np.array_equal,
           "zeros_like": np.zeros_like, "ones_like": np.ones_like, "full_like": np.full_like,
           "flip": np.flip}
VIEWS = {"broadcast_to": np.broadcast_to, "expand_dims": np.expand_dims,
         "moveaxis": np.moveaxis, "swapaxes": np.swapaxes, "transpose": np.transpose,
         "squeeze": np.squeeze, "diagonal": np.diagonal}


def asarray(a, dtype=None):
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    return array(a, dtype)


def array(a, dtype=None, copy=True):
    if isinstance(a, ndarray):
        return a.astype(a.dtype if dtype is None else dtype, copy=copy)
    host = np.array(a, dtype=dtype)
    if host.dtype == object:
        raise ValueError("Unsupported dtype object")
    COUNTS.uploads += 1
    return _new(host)


def asnumpy(a):
    return a.get() if isinstance(a, ndarray) else np.asarray(a)


def ascontiguousarray(a, dtype=None):
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else a.copy()


def get_array_module(*args):
    return cupy if any(isinstance(a, ndarray) for a in args) else np


def _created(name, fn):
    return lambda *args, **kwargs: (_kernel(name, lambda: fn(*args, **kwargs)))


def empty(shape, dtype=float):
    return _new(np.empty(shape, dtype))


def empty_like(a, dtype=None):
    return _new(np.empty_like(a._a, dtype))


def concatenate(arrays, axis=0):
    COUNTS.launch("concatenate")
    return _new(np.concatenate([_device(a) for a in arrays], axis))


def stack(arrays, axis=0):
    COUNTS.launch("stack")
    return _new(np.stack([_device(a) for a in arrays], axis))


def _device(a):
    if not isinstance(a, ndarray):
        raise TypeError(f"Unsupported type {type(a)}")
    return a._a


def where(condition, x=None, y=None):
    if (x is None) != (y is None):
        raise ValueError("Must provide both 'x' and 'y' or neither.")   # CuPy's words
    if x is None:
        return condition.nonzero()
    return _kernel("where", np.where, condition, x, y)


def reshape(a, shape):
    return a.reshape(shape)


def ravel(a):
    return a.ravel()


class _Device:
    def __init__(self, id=0):
        self.id = id

    def synchronize(self):
        COUNTS.sync("Device.synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


cuda = types.SimpleNamespace(Device=_Device,
                             runtime=types.SimpleNamespace(getDeviceCount=lambda: 1))

# the module that stands in for `import cupy`: these names only
cupy = types.ModuleType("cupy", "fake CuPy (tests/fake_cupy.py)")
cupy.__dict__.update(
    {name: ufunc(getattr(np, name)) for name in UFUNCS.split()},
    **{name: (lambda fn, name: lambda a, *args, **kw: _kernel(name, fn, a, *args, **kw))(
        getattr(np, name), name) for name in REDUCTIONS.split()},
    **{name: (lambda fn, name: lambda *args, **kw: _kernel(name, fn, *args, **kw))(fn, name)
       for name, fn in KERNELS.items()},
    **{name: (lambda fn: lambda a, *args, **kw: _view(fn(_device(a), *args, **kw)))(fn)
       for name, fn in VIEWS.items()},
    **{name: _created(name, getattr(np, name)) for name in ("zeros", "ones", "full", "arange",
                                                            "linspace", "eye")},
    **{name: getattr(np, name) for name in (
        "float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32",
        "uint64", "bool_", "complex64", "complex128", "dtype", "finfo", "iinfo", "result_type",
        "inf", "nan", "pi", "e", "newaxis")},
    ndarray=ndarray, ufunc=ufunc, asarray=asarray, array=array, asnumpy=asnumpy,
    ascontiguousarray=ascontiguousarray, get_array_module=get_array_module, empty=empty,
    empty_like=empty_like, where=where, concatenate=concatenate, stack=stack, reshape=reshape, ravel=ravel,
    cuda=cuda)
