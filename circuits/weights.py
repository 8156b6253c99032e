"""Per-head circuits read straight from the weights (A Mathematical Framework for Transformer
Circuits; the induction-heads paper's Argument 5 and method "(4) Trace of QK eigenvalues").

L layers, H heads, D d_model, E d_head, V d_vocab, P n_ctx. Row-vector convention, as the
parameters (x @ W):
    W_OV = W_V W_O  (H,D,D)          a head writes  pattern @ x W_OV  into the residual
    W_QK = W_Q W_K^T (H,D,D)         its scores are  x_query W_QK x_key^T / sqrt(E)
    full OV circuit  W_E W_OV W_U  (H,V,V): attended token -> logits
    full QK circuit  W_E W_QK W_E^T (H,V,V): query token x key token -> score * sqrt(E)
The paper writes column vectors (W_E^T W_QK W_E); the matrices here are its transposes,
which changes no eigenvalue, trace or norm.

LayerNorm, when the model has it, is folded into the weights that read its output
(circuits.layernorm.fold): the centring and the gain exactly, the division by std(x) (a
positive number per position) dropped. It changes no sign, no copying or positivity score
and no normalised trace; it rescales raw traces and scores by a positive factor.
Shortformer positions are added after LN, so they are read by the unfolded W_Q, W_K
(`W_Q_pos`, `W_K_pos` below).

Biases: b_K adds the same amount to every score of a query's row, which the softmax ignores;
b_Q gives a key-only term (b_Q W_K^T x_key^T), kept out of the full QK circuit and kept in
paths.attention_score_terms as the "bias" source. b_V W_O is a constant added to a head's
output whatever it attends to (pattern rows sum to 1), so it is no part of the full OV
circuit; neither are b_O and b_U. paths.logit_path_terms keeps all of them.

Smeared-key models (Argument 2): the circuits here are the unsmeared W_QK; each key is
s k_j + (1 - s) k_{j-1}, so a head's key-side circuit is s times these plus (1 - s) times
the same read one position back. paths.attention_score_terms applies the smear exactly;
prev_token_qk_trace counts only K-composition with earlier heads, not the smear's own shift.
"""
from collections import namedtuple
from functools import lru_cache

import numpy as np

from minitransformer.backend import to_numpy

from .factored import FactoredMatrix
from .layernorm import fold

HeadWeights = namedtuple("HeadWeights", "W_Q W_K W_V W_O b_Q b_K b_V b_O W_Q_pos W_K_pos")


def analysis_params(model):
    """The model's parameters as float64 NumPy arrays (eigenvalues want the precision)."""
    return {k: np.asarray(to_numpy(v), dtype=np.float64) for k, v in model.params.items()}


def layer_weights(model, layer, params=None):
    """One layer's attention weights with its LayerNorm folded in -> HeadWeights:
    W_Q, W_K, W_V (H,D,E) reading the residual stream, W_O (H,E,D), b_Q, b_K, b_V (H,E),
    b_O (D,), and W_Q_pos, W_K_pos (H,D,E): what reads the positions (the raw W_Q, W_K
    for shortformer models, whose positions skip LN; None without positions)."""
    cfg = model.config
    p = analysis_params(model) if params is None else params
    a = f"blocks.{layer}.attn."
    W = {n: p[a + n] for n in ("W_Q", "W_K", "W_V", "b_Q", "b_K", "b_V")}
    raw_Q, raw_K = W["W_Q"], W["W_K"]
    if cfg.normalization_type == "LN":
        gain, ln_bias = p[f"blocks.{layer}.ln1.w"], p[f"blocks.{layer}.ln1.b"]
        for n in "QKV":
            W["W_" + n], W["b_" + n] = fold(W["W_" + n], gain, ln_bias, W["b_" + n])
    pos_type = cfg.positional_embedding_type
    W_Q_pos, W_K_pos = {"shortformer": (raw_Q, raw_K), "standard": (W["W_Q"], W["W_K"]),
                        "none": (None, None)}[pos_type]
    return HeadWeights(W["W_Q"], W["W_K"], W["W_V"], p[a + "W_O"], W["b_Q"], W["b_K"],
                       W["b_V"], p[a + "b_O"], W_Q_pos, W_K_pos)


def unembed_weights(model, params=None):
    """-> W_U (D,V), b_U (V,) with the final LayerNorm folded in."""
    p = analysis_params(model) if params is None else params
    if model.config.normalization_type == "LN":
        return fold(p["unembed.W_U"], p["ln_final.w"], p["ln_final.b"], p["unembed.b_U"])
    return p["unembed.W_U"], p["unembed.b_U"]


def ov_circuit(model, layer, params=None):
    """W_OV = W_V W_O of every head of `layer`: FactoredMatrix (H,D,D), rank <= E."""
    w = layer_weights(model, layer, params)
    return FactoredMatrix(w.W_V, w.W_O)


def qk_circuit(model, layer, params=None):
    """W_QK = W_Q W_K^T of every head of `layer` (residual-stream readers, LN folded):
    FactoredMatrix (H,D,D). The attention score is x_q W_QK x_k^T / sqrt(E) plus biases."""
    w = layer_weights(model, layer, params)
    return FactoredMatrix(w.W_Q, np.swapaxes(w.W_K, -1, -2))


def full_ov_circuit(model, layer, params=None):
    """W_E W_V W_O W_U (H,V,V) as FactoredMatrix(W_E W_V (H,V,E), W_O W_U (H,E,V)): the
    direct path from the attended token, through the head, to the logits. Its eigenvalues
    are computed on the E x E product W_O W_U W_E W_V."""
    p = analysis_params(model) if params is None else params
    w = layer_weights(model, layer, p)
    W_U, _ = unembed_weights(model, p)
    return FactoredMatrix(p["embed.W_E"] @ w.W_V, w.W_O @ W_U)


def full_qk_circuit(model, layer, query="token", key="token", params=None):
    """The QK circuit between two input sources, "token" (W_E, V rows) or "pos" (W_pos, P
    rows): FactoredMatrix(X_q W_Q (H,Nq,E), W_K^T X_k^T (H,E,Nk)). For shortformer models
    the query/key input is token + position, so the four (query, key) choices are the four
    terms of the score (before the 1/sqrt(E) scale and the biases)."""
    p = analysis_params(model) if params is None else params
    w = layer_weights(model, layer, p)

    def side(source, W_tok, W_pos):
        if source == "token":
            return p["embed.W_E"] @ W_tok
        if source == "pos":
            if W_pos is None:
                raise ValueError("full_qk_circuit: this model has no positional embedding")
            return p["pos_embed.W_pos"] @ W_pos
        raise ValueError(f"full_qk_circuit: source {source!r} is not 'token' or 'pos'")
    return FactoredMatrix(side(query, w.W_Q, w.W_Q_pos),
                          np.swapaxes(side(key, w.W_K, w.W_K_pos), -1, -2))


def eigenvalue_score(eigenvalues, scale=1.0):
    """sum(l) / sum(|l|) over the last axis, real part: +1 all eigenvalues positive (copying,
    same-matching), -1 all negative. NaN where every eigenvalue is 0 relative to `scale`."""
    total = np.abs(eigenvalues).sum(-1)
    score = eigenvalues.sum(-1).real / np.where(total > 0, total, 1.0)
    return np.where(total > 1e-10 * np.asarray(scale), score, np.nan)


def _scores_by_layer(model, circuit):
    """circuit(model, layer, params) -> FactoredMatrix (H,N,N); its eigenvalue score (L,H)."""
    p = analysis_params(model)
    rows = []
    for layer in range(model.config.n_layers):
        fm = circuit(model, layer, params=p)
        scale = np.linalg.norm(fm.A, axis=(-2, -1)) * np.linalg.norm(fm.B, axis=(-2, -1))
        rows.append(eigenvalue_score(fm.eigenvalues(), scale))
    return np.stack(rows)


def ov_copying_score(model):
    """Paper, Argument 5 ("copying ... characterized by its positive eigenvalues"): the
    eigenvalue score of each head's full OV circuit -> (L,H). 1 = pure copying."""
    return _scores_by_layer(model, full_ov_circuit)


def qk_positivity_score(model):
    """The same eigenvalue score on the token-token full QK circuit W_E W_QK W_E^T -> (L,H):
    1 = a query token attends most to keys of the same token."""
    return _scores_by_layer(model, full_qk_circuit)


def _pairwise(fm_earlier, fm_later):
    """Batch two FactoredMatrix (H1,..) and (H2,..) into (H2,H1,..) pairs."""
    return (FactoredMatrix(fm_earlier.A[None], fm_earlier.B[None]),
            FactoredMatrix(fm_later.A[:, None], fm_later.B[:, None]))


def composition_scores(model):
    """Q-, K- and V-composition (A Mathematical Framework, "Composition"): for an earlier
    head a and a later head b,  ||W_OV^a W||_F / (||W_OV^a||_F ||W||_F)  with W = W_QK^b (Q),
    (W_QK^b)^T (K) or W_OV^b (V). -> {"Q","K","V": (L,H,L,H)} indexed
    [later layer, later head, earlier layer, earlier head]; NaN unless earlier < later (and
    where either circuit is exactly zero).
    Read against composition_baseline(d_model, d_head)."""
    cfg = model.config
    L, H = cfg.n_layers, cfg.n_heads
    p = analysis_params(model)
    ov = [ov_circuit(model, l, p) for l in range(L)]
    qk = [qk_circuit(model, l, p) for l in range(L)]
    scores = {kind: np.full((L, H, L, H), np.nan) for kind in "QKV"}
    for later in range(1, L):
        readers = {"Q": qk[later], "K": qk[later].T, "V": ov[later]}
        for earlier in range(later):
            for kind, reader in readers.items():
                writer, reader_b = _pairwise(ov[earlier], reader)
                norms = reader.norm()[:, None] * ov[earlier].norm()[None, :]   # (H2,H1)
                product = (writer @ reader_b).norm()
                scores[kind][later, :, earlier, :] = np.divide(   # a zero circuit: NaN
                    product, norms, out=np.full_like(product, np.nan), where=norms > 0)
    return scores


@lru_cache(maxsize=8)
def composition_baseline(d_model, d_head, n_samples=200, seed=0):
    """The mean composition score of two random rank-d_head matrices of the composition's
    shapes (each the product of two standard normal factors, (D,E) @ (E,D)): what a score
    reads against. For rotation-invariant random matrices it is close to 1/sqrt(d_model)."""
    rng = np.random.default_rng(seed)
    D, E = d_model, d_head
    first = FactoredMatrix(rng.standard_normal((n_samples, D, E)), rng.standard_normal((n_samples, E, D)))
    second = FactoredMatrix(rng.standard_normal((n_samples, D, E)), rng.standard_normal((n_samples, E, D)))
    return float(((first @ second).norm() / (first.norm() * second.norm())).mean())


def prev_token_qk_trace(model, previous_token_scores):
    """Paper, method "(4) Trace of QK eigenvalues": for each head h in layer >= 1, the combined
        W = sum over heads k in earlier layers of  p_k * W_E W_QK^h (W_OV^k)^T W_E^T   (V,V)
    (the W of the pure K-composition term Id (x) A^k (x) W, weighted by how previous-token-
    like k is, p = previous_token_scores (L,H)), and its trace. W is kept factored as
    (W_E W_Q^h) (W_K^h^T S W_E^T) with S = sum_k p_k W_OV^k^T (D,D), so trace and norm are
    E x E computations.
    -> (trace (L,H), trace / ||W||_F (L,H)); NaN for layer 0 (no earlier head)."""
    cfg = model.config
    p = analysis_params(model)
    W_E = p["embed.W_E"]
    previous_token_scores = np.asarray(previous_token_scores, dtype=np.float64)
    trace = np.full((cfg.n_layers, cfg.n_heads), np.nan)
    normalised = trace.copy()
    shifted = np.zeros((cfg.d_model, cfg.d_model))    # S, accumulated layer by layer
    for layer in range(cfg.n_layers):
        if layer > 0:
            w = layer_weights(model, layer, p)
            W = FactoredMatrix(W_E @ w.W_Q, np.swapaxes(w.W_K, -1, -2) @ shifted @ W_E.T)
            trace[layer] = W.trace()
            norm = W.norm()
            normalised[layer] = np.where(norm > 0, trace[layer] / np.where(norm > 0, norm, 1), np.nan)
        ov = ov_circuit(model, layer, p)
        shifted = shifted + np.einsum("h,hde->de", previous_token_scores[layer],
                                      np.swapaxes(ov.AB, -1, -2))
    return trace, normalised
