"""ModelConfig: the shape of a model, with TransformerLens's field names.

Field names follow TransformerLens's `HookedTransformerConfig` where one exists, so a
config reads the same in both; `smeared_key` is ours (paper, Argument 2).
"""
from dataclasses import dataclass, fields, asdict
import math
import numbers

POSITIONAL_TYPES = ("shortformer", "standard", "none")
NORMALIZATION_TYPES = ("LN", None)
ACT_FNS = ("gelu_new", "relu")


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
            setattr(self, name, _positive_int(name, getattr(self, name)))
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(f"d_head: not given and d_model={self.d_model} is not divisible "
                                 f"by n_heads={self.n_heads}; give d_head explicitly")
            self.d_head = self.d_model // self.n_heads
        self.d_head = _positive_int("d_head", self.d_head)
        if self.attn_only:
            self.d_mlp = None
        else:
            if self.d_mlp is None:
                self.d_mlp = 4 * self.d_model
            self.d_mlp = _positive_int("d_mlp", self.d_mlp)
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"act_fn: {self.act_fn!r} is not one of {ACT_FNS}")
        if self.normalization_type not in NORMALIZATION_TYPES:
            raise ValueError(f"normalization_type: {self.normalization_type!r} is not one of "
                             f"{NORMALIZATION_TYPES}")
        if self.positional_embedding_type not in POSITIONAL_TYPES:
            raise ValueError(f"positional_embedding_type: {self.positional_embedding_type!r} is "
                             f"not one of {POSITIONAL_TYPES}")
        if self.pos_init not in ("random", "sinusoidal"):
            raise ValueError(f"pos_init: {self.pos_init!r} is not one of ('random', 'sinusoidal')")
        for name in ("attn_only", "smeared_key", "pos_trainable"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.initializer_range is None:
            self.initializer_range = 0.8 / math.sqrt(self.d_model)
        for name in ("initializer_range", "pos_scale"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"{name}: must be a positive number, got {value!r}")
            setattr(self, name, float(value))

    @classmethod
    def from_dict(cls, values):
        """A config from a plain dict; an unknown key is a one-line error listing the valid ones."""
        if isinstance(values, cls):
            return values
        known = [f.name for f in fields(cls)]
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(known)}")
        return cls(**values)

    def to_dict(self):
        return asdict(self)


def _positive_int(name, value):
    """value as an int (numpy integers too), or a one-line error naming the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)
