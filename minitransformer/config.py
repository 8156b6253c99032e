"""ModelConfig: the shape of a model, with TransformerLens's field names.

Field names follow TransformerLens's `HookedTransformerConfig` where one exists, so a
config reads the same in both; `smeared_key` is ours (paper, Argument 2).
"""
from dataclasses import dataclass, fields, asdict
import math
import numbers
import reprlib
import sys

POSITIONAL_TYPES = ("shortformer", "standard", "none")
NORMALIZATION_TYPES = ("LN", None)
ACT_FNS = ("gelu_new", "relu")
SIZE_FIELDS = ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "n_ctx", "d_vocab")
# Bounds far above any model this NumPy engine trains (GPT-3 has 96 layers, d_model 12,288),
# checked before anything is allocated: a config read from a file cannot ask for a dict of a
# trillion layers or for terabytes of weights.
MAX_LAYERS = 4096
MAX_SIZE = 1 << 24               # any one of d_model, n_heads, d_head, d_mlp, n_ctx, d_vocab
MAX_PARAMETERS = 1 << 31         # 8 GiB of float32 weights
MIN_N_CTX = 5    # BOS + 4 repeats of at least one token: the shortest prefix-matching sample


@dataclass
class ModelConfig:
    """A decoder-only transformer's hyperparameters.

    positional_embedding_type:
      "shortformer" (default, as the paper's small models): W_pos is added to the query and
                    key inputs only, never to the residual stream.
      "standard":   W_pos is added to the residual stream after the embedding.
      "none":       no positional information (attention is then permutation-blind).
    normalization_type: "LN" (LayerNorm before attention, MLP and unembed) or None.
    act_fn: "gelu_new" (GPT-2's tanh GELU, TransformerLens's name) or "relu".
    d_head: per-head size; None means d_model // n_heads (which must then divide).
    d_mlp: MLP width; None means 4 * d_model. Ignored when attn_only.
    initializer_range: std of the normal init of every weight matrix; None means
                       TransformerLens's default 0.8 / sqrt(d_model).
    pos_init: "random" (normal init, like the other weights) or "sinusoidal" (fixed
              sin/cos of amplitude pos_scale). pos_trainable=False freezes W_pos.
    """
    n_layers: int = 2
    d_model: int = 128
    n_heads: int = 4
    d_head: int | None = None
    n_ctx: int = 256
    d_vocab: int = 256
    attn_only: bool = True
    d_mlp: int | None = None
    act_fn: str = "gelu_new"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "shortformer"
    smeared_key: bool = False
    initializer_range: float | None = None
    pos_init: str = "random"
    pos_scale: float = 1.0
    pos_trainable: bool = True

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "n_ctx", "d_vocab"):
            setattr(self, name, positive_int(name, getattr(self, name)))
        for name in ("attn_only", "smeared_key", "pos_trainable"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got "
                                 f"{shown(getattr(self, name))}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_head: not given and d_model={self.d_model} is not divisible "
                                 f"by n_heads={self.n_heads}; give d_head explicitly")
            self.d_head = self.d_model // self.n_heads
        self.d_head = positive_int("d_head", self.d_head)
        if self.attn_only:
            self.d_mlp = None
        else:
            if self.d_mlp is None:
                self.d_mlp = 4 * self.d_model
            self.d_mlp = positive_int("d_mlp", self.d_mlp)
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn: {shown(self.act_fn)} is not one of {ACT_FNS}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"normalization_type: {shown(self.normalization_type)} is not one of "
                             f"{NORMALIZATION_TYPES}")
        if self.positional_embedding_type not in POSITIONAL_TYPES:
            raise ValueError(f"positional_embedding_type: {shown(self.positional_embedding_type)} "
                             f"is not one of {POSITIONAL_TYPES}")
        if self.pos_init not in ("random", "sinusoidal"):
            raise ValueError(f"pos_init: {shown(self.pos_init)} is not one of ('random', "
                             f"'sinusoidal')")
        if self.initializer_range is None:
            self.initializer_range = 0.8 / math.sqrt(self.d_model)
        for name in ("initializer_range", "pos_scale"):
            value = getattr(self, name)
            if (not isinstance(value, numbers.Real) or isinstance(value, bool)
                    or not 0 < value <= sys.float_info.max):
                raise ValueError(f"{name}: must be a positive number, got {shown(value)}")
            setattr(self, name, float(value))
        self._check_size()

    def parameter_terms(self, **sizes):
        """{the size field a term grows with: its number of parameters}, summing to the model's
        parameter count (params.param_shapes's shapes), computed without building them.
        sizes: size fields to count with other values (the config itself is not changed)."""
        size = {name: sizes.get(name, getattr(self, name)) for name in SIZE_FIELDS}
        D, H, E, V, L = (size[k] for k in ("d_model", "n_heads", "d_head", "d_vocab", "n_layers"))
        ln = 2 * D if self.normalization_type == "LN" else 0
        layer = ln + 4 * H * D * E + 3 * H * E + D + (H if self.smeared_key else 0)
        if not self.attn_only:
            layer += ln + 2 * D * size["d_mlp"] + size["d_mlp"] + D
        return {"d_vocab": 2 * V * D + V,
                "n_ctx": size["n_ctx"] * D if self.positional_embedding_type != "none" else 0,
                "n_layers": L * layer + ln}

    def n_parameters(self):
        return sum(self.parameter_terms().values())

    def _check_size(self):
        """Every size field, and the parameter count, within the bounds above."""
        for name in SIZE_FIELDS:
            value, bound = getattr(self, name), MAX_LAYERS if name == "n_layers" else MAX_SIZE
            if value is not None and value > bound:
                shown_value = f"{value:,}" if value < 10**18 else shown(value)
                raise ValueError(f"{name}: {shown_value} is more than this engine builds (at most "
                                 f"{bound:,})")
        total = self.n_parameters()
        if total > MAX_PARAMETERS:
            culprit = self._largest_cause()
            raise ValueError(f"{culprit}: {getattr(self, culprit):,} makes a model of {total:,} "
                             f"parameters (n_layers={self.n_layers:,}, d_model={self.d_model:,}), "
                             f"more than this engine builds (at most {MAX_PARAMETERS:,})")

    def _largest_cause(self):
        """The size field whose value, brought down to the default model's, shrinks the
        parameter count the most: the one to name when the count is too large."""
        default = {"n_layers": 2, "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512,
                   "n_ctx": 256, "d_vocab": 256}
        counts = {}
        for name in SIZE_FIELDS:
            if getattr(self, name) is not None:
                smaller = {name: min(getattr(self, name), default[name])}
                counts[name] = sum(self.parameter_terms(**smaller).values())
        return min(counts, key=counts.get)

    @classmethod
    def from_dict(cls, values):
        """A config from a plain dict; an unknown key is a one-line error listing the valid ones."""
        if isinstance(values, cls):
            return values
        if not isinstance(values, dict):
            raise ValueError(f"config: expected a dict of fields, got {type(values).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ValueError(f"unknown config key {shown(unknown[0])}; valid keys: "
                             f"{', '.join(known)}")
        return cls(**values)

    def to_dict(self):
        return asdict(self)


def positive_int(name, value):
    """value as an int (numpy integers too), or a one-line error naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {shown(value)}")
    return int(value)


def shown(value):
    """repr(value) cut short: a value read from a file may be megabytes long or nested
    thousands deep, and an error message is one line."""
    return _SHORT.repr(value)


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
