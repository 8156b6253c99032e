""".npz files read member by member: each member's .npy header (dtype, shape) is checked
before its data is read, so a member nobody asked for is never read and a header that
declares more than the member holds is refused before anything is allocated. Pickled
(object) arrays are never loaded. Every problem is a one-line ValueError naming the file
and the key."""
import io
import json
import pathlib
import zipfile
import zlib

import numpy as np

from .io import atomic_write

TEXT_BYTES = 1 << 22      # the most a text (JSON) member may hold
JSON_DEPTH = 16           # the deepest nesting of lists and dicts in a JSON text read here
_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_BROKEN = (ValueError, EOFError, OSError, KeyError, SyntaxError, TypeError, zipfile.BadZipFile,
           zlib.error, NotImplementedError)


def one_line(error):
    return " ".join(str(error).split())


def parse_json(text, where, kind=dict):
    """The JSON `text` (a config, a corpus record, a generator state) parsed, of type `kind`
    (None: any), or a one-line ValueError that starts with `where` (the file and its key):
    invalid JSON, an integer of more digits than Python reads, or lists and dicts nested
    deeper than JSON_DEPTH (which could otherwise exhaust the stack, here or where the value
    is printed)."""
    too_deep = f"{where} is JSON nested too deeply (more than {JSON_DEPTH} levels)"
    try:
        value = json.loads(text)
    except RecursionError:
        raise ValueError(too_deep) from None
    except ValueError as e:     # JSONDecodeError, and Python's limit on an integer's digits
        raise ValueError(f"{where} is not valid JSON ({one_line(e)[:200]})") from None
    if json_depth(value) > JSON_DEPTH:
        raise ValueError(too_deep)
    if kind is not None and not isinstance(value, kind):
        raise ValueError(f"{where} is a JSON {type(value).__name__}, expected a {kind.__name__}")
    return value


def json_depth(value):
    """How deeply lists and dicts nest in a parsed JSON value (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth + 1)
            if deepest > JSON_DEPTH:
                return deepest
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict)
                                                        else value))
    return deepest


def save_npz(path, arrays):
    """Write {key: array} to `path` atomically (uncompressed .npz)."""
    def write(f):
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        f.write(buffer.getvalue())
    atomic_write(path, write)


class Archive:
    """An .npz open for reading; `keys` are its .npy members' names without the suffix."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such file" if not self.path.exists() else
                             f"{self.path}: not a file")
        try:
            self.zip = zipfile.ZipFile(self.path)
            self.members = {i.filename[:-4]: i for i in self.zip.infolist() if i.filename.endswith(".npy")}
        except _BROKEN as e:
            raise ValueError(f"{self.path}: not a readable .npz (not a zip archive: corrupt or "
                             f"truncated: {one_line(e)})") from None
        self.keys = set(self.members)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def header(self, key):
        """(shape, dtype) from key's .npy header, its data not read."""
        if key not in self.members:
            raise ValueError(f"{self.path}: missing key {key!r}")
        try:
            with self.zip.open(self.members[key]) as f:
                version = np.lib.format.read_magic(f)
                if version not in _HEADERS:
                    raise ValueError(f".npy format version {version} is not read here")
                shape, _, dtype = _HEADERS[version](f)
        except _BROKEN as e:
            raise ValueError(f"{self.path}: key {key!r} has an unreadable header "
                             f"({one_line(e)})") from None
        return shape, dtype

    def read(self, key, shape=None, kinds="iuf"):
        """The array `key`; its header must declare `shape` (None: any; a None entry: any
        length there) and a dtype of one of `kinds` (numpy kind letters; 'U' for text)."""
        declared, dtype = self.header(key)
        where = f"{self.path}: key {key!r}"
        if dtype.hasobject:
            raise ValueError(f"{self.path}: holds pickled (object) arrays ({key!r}), which are "
                             f"never loaded")
        if dtype.kind not in kinds:
            raise ValueError(f"{where} has dtype {dtype}, expected one of kinds {kinds!r}")
        if shape is not None and (len(declared) != len(shape) or any(
                want is not None and have != want for have, want in zip(declared, shape))):
            expected = tuple("N" if n is None else n for n in shape)
            raise ValueError(f"{where} has shape {declared}, expected {expected}")
        size = int(np.prod(declared, dtype=object)) * dtype.itemsize
        if size > self.members[key].file_size or (dtype.kind == "U" and size > TEXT_BYTES):
            raise ValueError(f"{where} declares {size:,} bytes of data, more than it holds "
                             f"({self.members[key].file_size:,}) or may hold")
        try:
            with self.zip.open(self.members[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except _BROKEN as e:
            raise ValueError(f"{where} is unreadable (corrupt or truncated: {one_line(e)})") from None

    def text(self, key):
        """A text member (a 0-d string array) as str."""
        return str(self.read(key, shape=(), kinds="U"))

    def json(self, key, kind=dict):
        """A JSON text member parsed (npz.parse_json), of type `kind`."""
        return parse_json(self.text(key), f"{self.path}: key {key!r}", kind)

    def integer(self, key, minimum=0):
        """A 0-d integer member as int, at least `minimum`."""
        value = int(self.read(key, shape=(), kinds="iu"))
        if value < minimum:
            raise ValueError(f"{self.path}: key {key!r} is {value}, expected at least {minimum}")
        return value


def read_npz(path):
    """{key: array} of every .npy member of an .npz (for the small caches beside a run; a run
    itself is read by runs.Run, which reads only the members the format defines)."""
    with Archive(path) as archive:
        return {key: archive.read(key, kinds="iufbU") for key in sorted(archive.keys)}
