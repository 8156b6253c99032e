"""Training settings (TrainConfig) and the named presets of `python -m minitransformer.train`.

The default recipe (docs/phase-change-search.md has the search behind it): no LayerNorm,
d_model 128, 4 heads of 32, fixed sinusoidal positions of amplitude 0.3 added to the
queries and keys only (shortformer), Adam(0.9, 0.99), lr 4e-3 after 200 warmup steps,
batch 4 x 256 byte tokens of the Python standard library's source with its tests, and
nothing else: no synthetic windows, no planted repeats. Presets named *-mixed are the
synthetic-assisted fast demo: half of the training windows replaced by repeated random tokens.
"""
import math
import numbers
from dataclasses import asdict, dataclass, fields

from .config import ModelConfig
from .tokenizer import parse_spec

INT_FIELDS = ("batch_size", "total_tokens", "warmup_steps", "seed", "eval_seed", "n_eval", "snapshots",
              "threads")
FLOAT_FIELDS = ("repeat_fraction", "synthetic_fraction", "lr", "weight_decay", "beta1", "beta2",
                "grad_clip")


@dataclass
class TrainConfig:
    """How a model is trained. total_tokens sets the length; snapshots are spread over it."""
    corpus: str = "stdlib"            # "stdlib" | "pydocs" | "synthetic:repeated" | "synthetic:template" | a path
    tokenizer: str = "bytes"          # or "bpe:N", learned from the corpus (minitransformer.tokenizer)
    bos_first: bool = False           # every training and eval window starts with BOS (data.random_crops)
    batch_size: int = 8
    repeat_fraction: float = 0.0      # share of training windows given a repeated span (data.repeat_spans)
    synthetic_fraction: float = 0.0   # share of windows replaced by repeated random tokens (data.random_repeat_windows)
    total_tokens: int = 20_000_000
    lr: float = 2e-3
    warmup_steps: int = 200
    schedule: str = "constant"        # or "cosine"
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    seed: int = 0                     # model initialisation; the data stream uses seed + 1
    eval_seed: int = 1234             # the fixed eval set's own seed
    n_eval: int = 512                 # eval sequences of n_ctx tokens
    snapshots: int = 200
    snapshot_spacing: str = "linear"  # or "log"
    device: str = "cpu"
    threads: int = 0                  # CPU threads a step's batch is split across; 0: every core
    #   (like device, how the numbers are computed, not which: the same up to float rounding;
    #   the run stores the count used, and --resume uses its own call's)

    def __post_init__(self):
        for name in INT_FIELDS + FLOAT_FIELDS:   # typed first, so the checks below compare numbers
            value = getattr(self, name)
            kind = numbers.Integral if name in INT_FIELDS else numbers.Real
            if isinstance(value, bool) or not isinstance(value, kind) or (
                    kind is numbers.Real and not math.isfinite(value)):
                expected = "an integer" if kind is numbers.Integral else "a number"
                raise ValueError(f"{name}: expected {expected}, got {value!r}")
            setattr(self, name, int(value) if kind is numbers.Integral else float(value))
        if not isinstance(self.bos_first, bool):
            raise ValueError(f"bos_first: expected true or false, got {self.bos_first!r}")
        if not isinstance(self.tokenizer, str):
            raise ValueError(f"tokenizer: expected 'bytes' or 'bpe:N', got {self.tokenizer!r}")
        parse_spec(self.tokenizer)
        checks = {"corpus": isinstance(self.corpus, str), "seed": 0 <= self.seed < 2**63,
                  "eval_seed": 0 <= self.eval_seed < 2**63, "batch_size": self.batch_size >= 1,
                  "repeat_fraction": 0 <= self.repeat_fraction <= 1,
                  "synthetic_fraction": 0 <= self.synthetic_fraction <= 1,
                  "total_tokens": 1 <= self.total_tokens <= 2**53,
                  "lr": self.lr > 0, "warmup_steps": self.warmup_steps >= 0,
                  "schedule": self.schedule in ("constant", "cosine"),
                  "weight_decay": self.weight_decay >= 0, "beta1": 0 <= self.beta1 < 1,
                  "beta2": 0 <= self.beta2 < 1, "grad_clip": self.grad_clip > 0,
                  "n_eval": self.n_eval >= 1, "snapshots": self.snapshots >= 2,
                  "snapshot_spacing": self.snapshot_spacing in ("linear", "log"),
                  "device": self.device in ("cpu", "gpu", "auto"), "threads": self.threads >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: invalid value {getattr(self, name)!r}")

    def to_dict(self):
        return asdict(self)


BASE_MODEL = dict(n_layers=2, d_model=128, n_heads=4, d_head=32, n_ctx=256, d_vocab=256,
                  attn_only=True, normalization_type=None, positional_embedding_type="shortformer",
                  pos_init="sinusoidal", pos_scale=0.3, pos_trainable=False)
# The default: natural text alone (the standard library with its tests), nothing planted.
# Four heads of 32, weak positions (0.3), batch 4 and lr 4e-3 bring the induction head to
# ~3-5M tokens (docs/phase-change-search.md, natural-text search).
NATURAL = dict(corpus="stdlib", batch_size=4, lr=4e-3, total_tokens=10_000_000)
# BPE: the same model and training on a 2,048-token BPE of the same corpus, positions trainable
# (initialised as the fixed ones): with fixed positions no induction head formed by 8M tokens
# on BPE tokens (docs/phase-change-search.md, "Beyond one recipe").
BPE_MODEL = dict(BASE_MODEL, d_vocab=2048, pos_trainable=True)
BPE = dict(NATURAL, tokenizer="bpe:2048")
# The synthetic-assisted fast demo (labelled so wherever it is shown): half of the training
# windows replaced by repeated random tokens, strong positions, 2 heads of 64.
MIXED_MODEL = dict(BASE_MODEL, n_heads=2, d_head=64, pos_scale=1.0)
MIXED = dict(corpus="stdlib", lr=5e-3, synthetic_fraction=0.5, total_tokens=6_000_000)


def _presets():
    presets = {}
    for n in range(1, 7):
        presets[f"attn-only-{n}l"] = (dict(BASE_MODEL, n_layers=n), dict(NATURAL))
        presets[f"mlp-{n}l"] = (dict(BASE_MODEL, n_layers=n, attn_only=False, d_mlp=512), dict(NATURAL))
        presets[f"attn-only-{n}l-mixed"] = (dict(MIXED_MODEL, n_layers=n), dict(MIXED))
        presets[f"attn-only-{n}l-bpe"] = (dict(BPE_MODEL, n_layers=n), dict(BPE))
        presets[f"mlp-{n}l-bpe"] = (dict(BPE_MODEL, n_layers=n, attn_only=False, d_mlp=512), dict(BPE))
        # the paper's architecture: LayerNorm before each attention layer and the unembedding
        presets[f"attn-only-ln-{n}l"] = (dict(BASE_MODEL, n_layers=n, normalization_type="LN"), dict(NATURAL))
        presets[f"attn-only-ln-{n}l-bpe"] = (dict(BPE_MODEL, n_layers=n, normalization_type="LN"), dict(BPE))
    for n in (1, 2):
        presets[f"smeared-{n}l"] = (dict(BASE_MODEL, n_layers=n, smeared_key=True), dict(NATURAL))
        presets[f"smeared-{n}l-bpe"] = (dict(BPE_MODEL, n_layers=n, smeared_key=True), dict(BPE))
    # for tests and lessons: seconds on a laptop
    presets["tiny"] = (dict(MIXED_MODEL, d_model=32, n_heads=2, d_head=16, n_ctx=32),
                       dict(corpus="synthetic:repeated", total_tokens=40_000, batch_size=8,
                            warmup_steps=10, n_eval=16, snapshots=6))
    # the induction task in its purest form: a 2-layer model learns it in well under a minute
    presets["tiny-induction"] = (dict(MIXED_MODEL, n_ctx=64),
                                 dict(corpus="synthetic:repeated", total_tokens=800_000,
                                      batch_size=16, lr=5e-3, warmup_steps=200, n_eval=64,
                                      snapshots=7))
    return presets


PRESETS = _presets()


def preset(name):
    """-> (model config dict, train config dict) of a named preset."""
    if name not in PRESETS:
        raise ValueError(f"--preset {name!r}: unknown; choose from {', '.join(PRESETS)}")
    model, train = PRESETS[name]
    return dict(model), dict(train)


def _parse(text, example, key, nullable=True):
    """A 'key=value' value, typed like the field's default (or as JSON-ish for None).
    'none'/'null' is Python's None only for a field that may be None (nullable); a string
    field takes the text as it is: 'none' is a value of positional_embedding_type."""
    low = text.lower()
    if low in ("none", "null") and nullable:
        return None
    if isinstance(example, str):
        return text
    if isinstance(example, bool) or low in ("true", "false"):
        if low not in ("true", "false"):
            raise ValueError(f"{key}={text}: expected true or false")
        return low == "true"
    for kind in (int, float):
        if isinstance(example, kind) or example is None:
            try:
                return kind(float(text)) if kind is int and "e" in low else kind(text)
            except (ValueError, OverflowError):
                if example is not None:
                    raise ValueError(f"{key}={text}: expected {kind.__name__}") from None
    return text


def apply_overrides(model, train, items):
    """Apply 'key=value' strings to the model or train config dicts; an unknown key is a
    one-line error listing every valid key."""
    model_keys = [f.name for f in fields(ModelConfig)]
    train_keys = [f.name for f in fields(TrainConfig)]
    defaults = {**TrainConfig().to_dict(), **ModelConfig().to_dict()}
    nullable = {f.name for f in fields(ModelConfig) + fields(TrainConfig) if "None" in str(f.type)}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        if key not in model_keys and key not in train_keys:
            raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(model_keys + train_keys)}")
        target = model if key in model_keys else train
        target[key] = _parse(text, target.get(key, defaults.get(key)), key, key in nullable)
    if any(i.startswith("tokenizer=") for i in items) and not any(
            i.startswith("d_vocab=") for i in items):
        model["d_vocab"] = parse_spec(train["tokenizer"])   # the vocabulary follows the tokenizer
    return model, train
