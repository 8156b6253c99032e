"""Parameters: one flat dict keyed by TransformerLens state-dict names, TransformerLens shapes.

    embed.W_E [V,D]   pos_embed.W_pos [n_ctx,D]   unembed.W_U [D,V]   unembed.b_U [V]
    blocks.{l}.attn.W_Q|W_K|W_V [H,D,E]   W_O [H,E,D]   b_Q|b_K|b_V [H,E]   b_O [D]
    blocks.{l}.attn.alpha [H]             (smeared key only; ours)
    blocks.{l}.ln1.w|b, ln2.w|b, ln_final.w|b [D]   (LayerNorm only)
    blocks.{l}.mlp.W_in [D,M] b_in [M] W_out [M,D] b_out [D]   (MLP models only)
"""
import numpy as np


def param_shapes(cfg):
    """{name: shape} in a fixed order (the order the seed fills them)."""
    D, H, E, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab
    shapes = {"embed.W_E": (V, D)}
    if cfg.positional_embedding_type != "none":
        shapes["pos_embed.W_pos"] = (cfg.n_ctx, D)
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        if cfg.normalization_type == "LN":
            shapes.update({p + "ln1.w": (D,), p + "ln1.b": (D,)})
        for name in ("W_Q", "W_K", "W_V"):
            shapes[p + "attn." + name] = (H, D, E)
        shapes[p + "attn.W_O"] = (H, E, D)
        for name in ("b_Q", "b_K", "b_V"):
            shapes[p + "attn." + name] = (H, E)
        shapes[p + "attn.b_O"] = (D,)
        if cfg.smeared_key:
            shapes[p + "attn.alpha"] = (H,)
        if not cfg.attn_only:
            if cfg.normalization_type == "LN":
                shapes.update({p + "ln2.w": (D,), p + "ln2.b": (D,)})
            shapes.update({p + "mlp.W_in": (D, cfg.d_mlp), p + "mlp.b_in": (cfg.d_mlp,),
                           p + "mlp.W_out": (cfg.d_mlp, D), p + "mlp.b_out": (D,)})
    if cfg.normalization_type == "LN":
        shapes.update({"ln_final.w": (D,), "ln_final.b": (D,)})
    shapes.update({"unembed.W_U": (D, V), "unembed.b_U": (V,)})
    return shapes


def sinusoidal_positions(n_ctx, d_model, amplitude):
    """Fixed sin/cos positions (Vaswani et al.) scaled to `amplitude`: (n_ctx, d_model)."""
    position = np.arange(n_ctx)[:, None]
    frequency = np.exp(-np.log(10000.0) * (np.arange(0, d_model, 2) / d_model))
    table = np.zeros((n_ctx, d_model))
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency)[:, : d_model // 2]
    return amplitude * table


def init_params(cfg, seed=0, dtype=np.float32):
    """Fresh parameters on the host from numpy.random.default_rng(seed): weights normal with
    std cfg.initializer_range, biases 0, LayerNorm gains 1, smeared-key alpha 0."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        leaf = name.rsplit(".", 1)[1]
        if leaf.startswith("W_"):
            value = rng.normal(0.0, cfg.initializer_range, size=shape)
        elif leaf == "w":
            value = np.ones(shape)
        else:  # biases and alpha
            value = np.zeros(shape)
        params[name] = value
    if cfg.positional_embedding_type != "none":
        if cfg.pos_init == "sinusoidal":
            params["pos_embed.W_pos"] = sinusoidal_positions(cfg.n_ctx, cfg.d_model, cfg.pos_scale)
        else:
            params["pos_embed.W_pos"] = params["pos_embed.W_pos"] * cfg.pos_scale
    return {name: value.astype(dtype) for name, value in params.items()}


def check_params(cfg, params, where="params"):
    """Raise a one-line ValueError naming the first missing, unexpected or misshapen key."""
    if not isinstance(params, dict):
        raise ValueError(f"{where}: expected a dict of arrays keyed by parameter name, got "
                         f"{type(params).__name__}")
    expected = param_shapes(cfg)
    for name, shape in expected.items():
        if name not in params:
            raise ValueError(f"{where}: missing key {name!r}")
        value = params[name]
        dtype = value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype
        if value is None or dtype.kind not in "iuf":
            raise ValueError(f"{where}: key {name!r} is not an array of real numbers ({dtype})")
        if np.shape(params[name]) != shape:
            raise ValueError(f"{where}: key {name!r} has shape {np.shape(params[name])}, "
                             f"expected {shape}")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise ValueError(f"{where}: unexpected key {extra[0]!r} for this config")
