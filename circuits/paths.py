"""Path expansion of an attention-only model (A Mathematical Framework for Transformer
Circuits, "Path Expansion of Logits" and "Path Expansion of Attention Scores QK Circuit").

B batch, T positions, D d_model, H heads, E d_head, V d_vocab.

With the attention patterns frozen, an attention-only model is linear in what enters its
residual stream, so its logits split exactly into one term per path through the heads:
    logits = direct + sum_h head_h + sum_{h1 -> h2} virtual_{h1 -> h2} + ...
the direct path (embedding -> unembedding, with every bias that reaches the logits without
passing through a head), one term per head (it reads the direct path), one per virtual head
(a later head reading an earlier head's output: V-composition), and longer chains in deeper
models. A head's terms include its b_V W_O (a constant, since pattern rows sum to 1).

LayerNorm: with the patterns frozen, the one non-linearity left is LN's division by the
standard deviation of the residual stream; these functions freeze it too, at its value on
the given tokens (read from the forward pass). With both frozen the expansion is exact for
LN models as well; without LayerNorm, it is exact given the patterns alone.
"""
import numpy as np

from minitransformer.backend import to_numpy
from minitransformer.interventions import replay
from minitransformer.ops.attention import smear_forward

from . import layernorm
from .weights import analysis_params


def _forward(model, tokens, patterns):
    if not model.config.attn_only:
        raise ValueError("path expansion is for attention-only models (attn_only=True)")
    tokens = to_numpy(model.tokens(tokens))
    _, cache = model.run_with_cache(tokens, hooks=replay(patterns, list(patterns)) if patterns else None)
    return tokens, cache, analysis_params(model)


def path_name(path):
    """() -> "direct", ((0, 1),) -> "0.1", ((0, 1), (1, 0)) -> "0.1->1.0"."""
    return "->".join(f"{l}.{h}" for l, h in path) or "direct"


def logit_path_terms(model, tokens, patterns=None):
    """The logits split by path: {path: (B,T,V)}, path a tuple of (layer, head) in the order
    the signal flows: () the direct path, ((l, h),) a head, ((0, 1), (1, 0)) the virtual head
    where 1.0 reads 0.1's output. The terms sum to model.forward(tokens), or with patterns to
    model.forward(tokens, hooks=replay(patterns, list(patterns))) (minitransformer.interventions).
    tokens (B,T) or (T,); patterns: {hook name: (B,H,T,T)} to freeze, else the model's own."""
    cfg = model.config
    tokens, cache, p = _forward(model, tokens, patterns)
    stream = {(): p["embed.W_E"][tokens]}                                    # path -> (B,T,D)
    if cfg.positional_embedding_type == "standard":
        stream[()] = stream[()] + p["pos_embed.W_pos"][: tokens.shape[1]]
    for layer in range(cfg.n_layers):
        b, a = f"blocks.{layer}.", f"blocks.{layer}.attn."
        pattern = cache[a + "hook_pattern"]                                  # (B,H,T,T)
        ln, ln_bias = layernorm.frozen(p, cfg, b + "ln1", cache[b + "hook_resid_pre"])
        W_V, W_O = p[a + "W_V"], p[a + "W_O"]
        new = {}
        for path, x in stream.items():
            v = np.einsum("btd,hde->bhte", ln(x), W_V)
            out = np.einsum("bhts,bhse,hed->bhtd", pattern, v, W_O)          # (B,H,T,D)
            new.update({path + ((layer, h),): out[:, h] for h in range(cfg.n_heads)})
        value_bias = np.einsum("he,hed->hd", ln_bias @ W_V + p[a + "b_V"], W_O)  # (H,D)
        for h in range(cfg.n_heads):
            new[((layer, h),)] = new[((layer, h),)] + value_bias[h]
        stream[()] = stream[()] + p[a + "b_O"]
        stream.update(new)
    final_resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    ln, ln_bias = layernorm.frozen(p, cfg, "ln_final", final_resid)
    terms = {path: ln(x) @ p["unembed.W_U"] for path, x in stream.items()}
    terms[()] = terms[()] + ln_bias @ p["unembed.W_U"] + p["unembed.b_U"]
    return terms


def sum_terms(terms, without=()):
    """The sum of the path terms whose path passes through none of the heads `without`
    ([(layer, head), ...]). With one head left out this is the pattern-preserving ablation of
    that head: model.forward(tokens, hooks=combine(replay(<the unablated patterns>),
    ablate_heads([head])))."""
    without = set(map(tuple, without))
    return sum(x for path, x in terms.items() if not without.intersection(path))


def attention_score_terms(model, tokens, layer, patterns=None):
    """Layer `layer`'s attention scores split by (query source, key source):
    {(query_source, key_source): (B,H,T,T)}, each term (q_source k_source^T) / sqrt(E). A
    source is "embed" (token embedding), "pos" (positions: shortformer query/key input, or
    the residual for "standard"), "bias" (b_O of earlier layers, LN's b, and this layer's
    b_Q or b_K), or (l, h): the output of earlier head l.h (its hook_result). Terms with a
    head on the query side are Q-composition, on the key side K-composition.
    The terms sum to the model's scores on and below the diagonal (the causal part; they
    are not masked). Smeared-key models smear every key term (it is linear)."""
    cfg = model.config
    tokens, cache, p = _forward(model, tokens, patterns)
    B, T = tokens.shape
    b, a = f"blocks.{layer}.", f"blocks.{layer}.attn."
    sources = {"embed": p["embed.W_E"][tokens],
               "bias": np.broadcast_to(sum((p[f"blocks.{l}.attn.b_O"] for l in range(layer)),
                                           np.zeros(cfg.d_model)), (B, T, cfg.d_model))}
    for l in range(layer):
        result = cache[f"blocks.{l}.attn.hook_result"]                       # (B,T,H,D)
        sources.update({(l, h): result[:, :, h] for h in range(cfg.n_heads)})
    pos = p["pos_embed.W_pos"][:T] if cfg.positional_embedding_type != "none" else None
    if cfg.positional_embedding_type == "standard":
        sources["pos"] = np.broadcast_to(pos, (B, T, cfg.d_model))
    ln, ln_bias = layernorm.frozen(p, cfg, b + "ln1", cache[b + "hook_resid_pre"])

    def read(name):   # -> {source: (B,H,T,E)} for W_Q or W_K
        W, bias = p[a + "W_" + name], p[a + "b_" + name]
        out = {s: np.einsum("btd,hde->bhte", ln(x), W) for s, x in sources.items()}
        out["bias"] = out["bias"] + (ln_bias @ W + bias)[None, :, None, :]
        if cfg.positional_embedding_type == "shortformer":   # added after LN: read raw
            out["pos"] = np.broadcast_to(np.einsum("td,hde->hte", pos, W), (B,) + out["bias"].shape[1:])
        return out
    queries, keys = read("Q"), read("K")
    if a + "alpha" in p:
        keys = {s: smear_forward(k, p[a + "alpha"])[0] for s, k in keys.items()}
    scale = cfg.d_head ** -0.5
    return {(qs, ks): np.einsum("bhqe,bhke->bhqk", q, k) * scale
            for qs, q in queries.items() for ks, k in keys.items()}
