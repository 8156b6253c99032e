"""The run format: runs/<name>/run.npz plus runs/<name>/snapshots/step_XXXXXXX.npz.

run.npz holds: format_version; model_config, train_config, corpus (JSON strings); the
training log (log.step, log.tokens, log.loss, log.lr, log.grad_norm, log.seconds); the
snapshot index (snapshot.steps, snapshot.tokens); the fixed eval set (eval_tokens) and the
train split's token_counts; a BPE run's tokenizer (its Hugging Face JSON as UTF-8
bytes; a byte-level run has none); the latest weights (param.<name>), optimizer state
(optim.<key>), and the position of the data stream (state.step, state.tokens, state.rng) for
--resume. A snapshot file holds param.<name>, step and tokens.

Rules: every file is written to a temporary name and renamed; numpy.load(allow_pickle=False)
only; a missing key, a wrong shape or an unknown format version is a one-line ValueError
naming the file and the key.
"""
import contextlib
import fcntl
import json
import os
import pathlib
import re
from dataclasses import fields

import numpy as np

from .backend import resolve_device
from .config import ModelConfig
from .npz import Archive, one_line, read_npz, save_npz  # noqa: F401 (read_npz, save_npz re-exported)
from .params import param_shapes
from .presets import TrainConfig
from .tokenizer import BYTES, from_run

FORMAT_VERSION = 1
RUN_FILE = "run.npz"
LOG_KEYS = ("step", "tokens", "loss", "lr", "grad_norm", "seconds")
SNAPSHOT_NAME = re.compile(r"step_\d{7,}\.npz")


def run_file(path):
    """A run directory or its run.npz -> the run.npz path; any other file is an error."""
    path = pathlib.Path(path)
    if path.is_file() and path.suffix != ".npz":
        raise ValueError(f"{path}: not a run (expected a run.npz or a run directory)")
    return path / RUN_FILE if path.is_dir() or path.suffix != ".npz" else path


def snapshot_file(run_dir, step):
    return pathlib.Path(run_dir) / "snapshots" / f"step_{step:07d}.npz"


# fields added to a config after runs were written without them: the value that says what
# those runs did (threads: they ran the step as one call)
ADDED_FIELDS = {"TrainConfig": {"threads": 1, "tokenizer": "bytes", "bos_first": False}}


def _config(archive, key, cls):
    """A config dataclass from a JSON member that must name every field (but those added
    since, ADDED_FIELDS)."""
    values = {**ADDED_FIELDS.get(cls.__name__, {}), **archive.json(key)}
    names = [f.name for f in fields(cls)]
    unknown, missing = sorted(set(values) - set(names)), [n for n in names if n not in values]
    if unknown or missing:
        raise ValueError(f"{archive.path}: key {key!r} " + (f"has unknown field {unknown[0]!r}"
                         if unknown else f"lacks field {missing[0]!r}"))
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{archive.path}: key {key!r} is invalid: {one_line(e)}") from None


def _weights(archive, cfg, prefix):
    """{name: array} of the members prefix+name present, each of its parameter's shape, real
    and finite."""
    arrays = {}
    for name, shape in param_shapes(cfg).items():
        if prefix + name in archive.keys or prefix == "param.":
            value = archive.read(prefix + name, shape=shape, kinds="f")
            if not np.isfinite(value).all():
                raise ValueError(f"{archive.path}: key {prefix + name!r} holds NaN or infinite "
                                 f"values (did the training diverge?)")
            arrays[name] = value
    return arrays


class Run:
    """A run on disk: only the members the format defines are read, each checked against
    the config before its data is; snapshots are read lazily, one file each, when asked for.
    device: where the models it builds (Run.model) compute, "cpu" | "gpu" | "auto"."""

    def __init__(self, path, device="cpu"):
        resolve_device(device)       # 'gpu' without one: an error now, not after the reading
        self.device = device
        self.path = run_file(path)
        self.dir = self.path.parent
        with Archive(self.path) as archive:
            self._read(archive)

    def _read(self, archive):
        version = archive.integer("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"{self.path}: key 'format_version' is {version}; this code reads "
                             f"version {FORMAT_VERSION}")
        self.config = cfg = _config(archive, "model_config", ModelConfig)
        tc = _config(archive, "train_config", TrainConfig)
        self.train_config = tc.to_dict()     # a dict, every field present and valid
        self.corpus = archive.json("corpus")
        if not all(isinstance(self.corpus.get(k), str) for k in ("name", "sha256")):
            raise ValueError(f"{self.path}: key 'corpus' must hold a name and a sha256 (strings)")
        step = archive.integer("state.step")
        data = {"format_version": version, "state.step": step,
                "state.tokens": archive.integer("state.tokens"),
                "optim.step": archive.integer("optim.step"),
                "eval_tokens": archive.read("eval_tokens", (tc.n_eval, cfg.n_ctx), "iu"),
                "token_counts": archive.read("token_counts", (cfg.d_vocab,), "iu"),
                "snapshot.steps": archive.read("snapshot.steps", (None,), "iu").astype(np.int64)}
        data["snapshot.tokens"] = archive.read("snapshot.tokens", data["snapshot.steps"].shape, "iu")
        data.update({"log." + k: archive.read("log." + k, (step,)) for k in LOG_KEYS})
        self.rng_state = archive.json("state.rng")
        try:
            np.random.PCG64().state = self.rng_state
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{self.path}: key 'state.rng' is not a generator state "
                             f"({one_line(e)})") from None
        self.eval_tokens, self.token_counts = data["eval_tokens"], data["token_counts"]
        stored = (archive.read("tokenizer", (None,), "u").astype(np.uint8).tobytes().decode()
                  if "tokenizer" in archive.keys else "")
        self.tokenizer = from_run(tc.tokenizer, stored, self.path)
        if self.tokenizer.hf_json and self.tokenizer.vocab_size > cfg.d_vocab:
            raise ValueError(f"{self.path}: key 'tokenizer' has {self.tokenizer.vocab_size} tokens,"
                             f" more than the model's d_vocab={cfg.d_vocab}")
        if self.eval_tokens.size and self.eval_tokens.max() >= cfg.d_vocab:
            raise ValueError(f"{self.path}: key 'eval_tokens' holds token {self.eval_tokens.max()}"
                             f", outside the model's d_vocab={cfg.d_vocab}")
        self.snapshot_steps, self.snapshot_tokens = data["snapshot.steps"], data["snapshot.tokens"]
        steps = self.snapshot_steps
        if len(steps) == 0 or np.any(np.diff(steps) <= 0) or steps[0] < 0 or steps[-1] > step:
            raise ValueError(f"{self.path}: key 'snapshot.steps' must rise from 0 to at most "
                             f"state.step={step}")
        self.latest = _weights(archive, cfg, "param.")
        self.optim_state = {"step": data["optim.step"]}
        for moment in ("m.", "v."):
            self.optim_state.update({moment + k: v for k, v in
                                     _weights(archive, cfg, "optim." + moment).items()})
        self.data = {**data, **{"param." + k: v for k, v in self.latest.items()}}
        self.log = {k: data["log." + k] for k in LOG_KEYS}

    def params(self, step=None):
        """Latest weights (step None) or those of snapshot `step`: {name: array}."""
        if step is None:
            return dict(self.latest)
        if int(step) not in set(self.snapshot_steps.tolist()):
            raise ValueError(f"{self.path}: no snapshot at step {step}; snapshots run from "
                             f"{self.snapshot_steps.min()} to {self.snapshot_steps.max()} "
                             f"({len(self.snapshot_steps)} of them)")
        with Archive(snapshot_file(self.dir, int(step))) as archive:
            return _weights(archive, self.config, "param.")

    def differing_settings(self, model_config, train_config):
        """The settings (model and training, but the device and threads: how, not what, is
        computed) in which the given ones differ from this run's: ['key (stored X, given
        Y)', ...]."""
        given = {**ModelConfig.from_dict(model_config).to_dict(), **as_train_config(train_config).to_dict()}
        stored = {**self.config.to_dict(), **self.train_config}
        return [f"{k} (stored {stored[k]!r}, given {given[k]!r})" for k in stored
                if k not in ("device", "threads") and stored[k] != given[k]]

    def model(self, step=None, device=None, dtype=np.float32):
        """The Model of the latest weights (step None) or of snapshot `step`, on `device`
        (None: the run's)."""
        from .model import Model
        return Model(self.config, params=self.params(step), device=device or self.device,
                     dtype=dtype)

    @property
    def step(self):
        """Training steps taken by the latest weights (state.step)."""
        return int(self.data["state.step"])

    @property
    def tokens(self):
        """Training tokens seen by the latest weights (state.tokens)."""
        return int(self.data["state.tokens"])

    def tokens_at(self, step):
        """Training tokens seen at snapshot `step`."""
        index = int(np.flatnonzero(self.snapshot_steps == step)[0])
        return int(self.snapshot_tokens[index])


def as_train_config(values):
    """A TrainConfig from itself or a dict; an unknown key is a one-line error."""
    if isinstance(values, TrainConfig):
        return values
    unknown = sorted(set(values) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown train config key {unknown[0]!r}")
    return TrainConfig(**values)


def load_model(path, step=None, device="cpu"):
    """minitransformer.load: the latest weights of a run, or snapshot `step` -> Model."""
    return Run(path, device).model(step)


def _text(value):
    return np.array(json.dumps(value))


def run_arrays(model_config, train_config, corpus, eval_tokens, token_counts, log, snapshots,
               params, optim_state, step, tokens, rng_state, tokenizer=BYTES):
    """Everything run.npz holds, as {key: array}; a BPE tokenizer's JSON as UTF-8 bytes."""
    arrays = {"format_version": np.array(FORMAT_VERSION),
              "model_config": _text(model_config), "train_config": _text(train_config),
              "corpus": _text(corpus), "eval_tokens": eval_tokens, "token_counts": token_counts,
              "snapshot.steps": np.array([s for s, _ in snapshots], dtype=np.int64),
              "snapshot.tokens": np.array([t for _, t in snapshots], dtype=np.int64),
              "state.step": np.array(step), "state.tokens": np.array(tokens),
              "state.rng": _text(rng_state)}
    if tokenizer.hf_json:
        arrays["tokenizer"] = np.frombuffer(tokenizer.hf_json.encode(), np.uint8)
    arrays.update({"log." + k: np.asarray(v) for k, v in log.items()})
    arrays.update({"param." + k: v for k, v in params.items()})
    arrays.update({"optim." + k: np.asarray(v) for k, v in optim_state.items()})
    return arrays


def save_snapshot(run_dir, step, tokens, params):
    save_npz(snapshot_file(run_dir, step),
             {"step": np.array(step), "tokens": np.array(tokens),
              **{"param." + k: v for k, v in params.items()}})


def existing_run(run_dir):
    """True if run_dir holds a run: a run.npz, or snapshots beyond step 0 (a start killed
    before its first run.npz leaves only snapshot 0, which a new start writes again)."""
    run_dir = pathlib.Path(run_dir)
    first = snapshot_file(run_dir, 0).name
    return (run_dir / RUN_FILE).exists() or (run_dir / "snapshots").is_dir() and any(
        e.name != first and not e.name.endswith(".tmp") for e in os.scandir(run_dir / "snapshots"))


def run_files(run_dir):
    """The files of the run in run_dir that the format names, and only those: run.npz and
    snapshots/step_XXXXXXX.npz (what --force may delete; a folder or any other file under
    run_dir, another run's included, is not the run's)."""
    run_dir = pathlib.Path(run_dir)
    files = [run_dir / RUN_FILE] if (run_dir / RUN_FILE).is_file() else []
    if (run_dir / "snapshots").is_dir():
        files += sorted(e for e in (run_dir / "snapshots").iterdir()
                        if SNAPSHOT_NAME.fullmatch(e.name) and e.is_file())
    return files


def enclosing_run(path):
    """The run folder that holds `path` below it (a run nested inside another run's folder,
    which --force of the outer run would touch), or None."""
    path = pathlib.Path(os.path.abspath(path))
    for folder in path.parents:
        try:
            if (folder / RUN_FILE).is_file() and (folder / "snapshots").is_dir():
                return folder
        except OSError:
            continue
    return None


_held = set()   # the runs this process holds the lock of (a sweep job's train() takes it again)


@contextlib.contextmanager
def run_lock(out, wait=True, log=print):
    """Hold <parent>/.<name>.lock (flock) while working on the run in `out`: a second process
    waits for the first (wait) or is refused with a one-line error, instead of writing the
    same run beside it. The OS drops the lock of a process that dies."""
    out = pathlib.Path(out)
    key = os.path.abspath(out)
    if key in _held:
        yield
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = open(out.parent / f".{out.name}.lock", "w")
    except OSError as e:
        raise ValueError(f"{out}: cannot write a run there ({e.strerror or e})") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise ValueError(f"{out}: another process is working on this run ({lock.name}); "
                                 f"wait for it to end, or choose another --out") from None
            log(f"{out}: another process is working on it ({lock.name}); waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
