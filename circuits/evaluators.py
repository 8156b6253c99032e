"""Head activation evaluators (paper, method "(3) Head activation evaluators"), each scoring
every head of a model from its activations: -> [n_layers, n_heads].

    prefix_matching_score   attention to the token after an earlier copy of the present one
    copying_score           does the head's direct effect raise the logit of what it attends to
                            (copying_scores: also the paper's form of it)
    previous_token_score    attention from i to i-1 on real text

circuits.scores runs them on the one fixed sample every tool uses (HeadScores) and classes
the heads from them. Their weight-based counterparts (circuits.weights) are
ov_copying_score and prev_token_qk_trace; `python -m circuits.heads RUN --validate`
correlates the two views.
"""
import numpy as np

from minitransformer.config import MIN_N_CTX
from minitransformer.data import BOS, candidate_tokens

from . import layernorm
from .weights import analysis_params, unembed_weights


def repeated_random_tokens(n_examples=10, length=25, repeats=4, token_counts=None, d_vocab=256,
                           seed=0):
    """BOS + a sequence of `length` distinct random tokens repeated `repeats` times:
    (n_examples, 1 + length * repeats). Tokens exclude the corpus's most and least common
    ones (token_counts) and BOS."""
    rng = np.random.default_rng(seed)
    pool = candidate_tokens(token_counts)
    if pool is None:
        pool = np.setdiff1d(np.arange(d_vocab), [BOS])
    if len(pool) < length:
        raise ValueError(f"token_counts: only {len(pool)} candidate tokens for sequences of {length}")
    segments = np.stack([rng.choice(pool, length, replace=False) for _ in range(n_examples)])
    bos = np.full((n_examples, 1), BOS)
    return np.concatenate([bos, np.tile(segments, (1, repeats))], axis=1).astype(np.int64)




def require_n_ctx(n_ctx, who="the head scores", minimum=MIN_N_CTX):
    """A one-line ValueError naming n_ctx and `minimum` if a model's context is too short for
    `who` (a tool or a score); every head score reads prefix matching, so MIN_N_CTX for all."""
    if int(n_ctx) < minimum:
        raise ValueError(f"n_ctx {int(n_ctx)} is too short for {who}: it needs n_ctx >= {minimum} "
                         f"(the prefix-matching sample is BOS + 4 repeats of at least one token)")


def prefix_matching_score(model, n_examples=10, length=25, repeats=4, token_counts=None, seed=0):
    """Prefix matching: on BOS + 25 random tokens x 4, the attention each token in a later
    repeat pays to the tokens that followed the same token in earlier repeats (summed over
    those earlier occurrences), averaged over such tokens and over 10 examples.
    1 = a perfect induction pattern; a uniform head scores ~ (earlier repeats) / position.
    A model with n_ctx < 1 + length * repeats gets shorter sequences, length (n_ctx-1)//repeats.
    -> (n_layers, n_heads)."""
    cfg = model.config
    require_n_ctx(cfg.n_ctx, "prefix_matching_score", 1 + repeats)
    length = min(length, (cfg.n_ctx - 1) // repeats)
    tokens = repeated_random_tokens(n_examples, length, repeats, token_counts, cfg.d_vocab, seed)
    _, cache = model.run_with_cache(tokens)
    queries, keys = [], []
    for r in range(1, repeats):
        for j in range(length):
            for m in range(r):
                queries.append(1 + r * length + j)
                keys.append(1 + m * length + j + 1)   # the token after the earlier occurrence
    queries, keys = np.array(queries), np.array(keys)
    n_queries = (repeats - 1) * length
    scores = np.zeros((cfg.n_layers, cfg.n_heads))
    for l in range(cfg.n_layers):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]           # (N,H,T,T)
        attended = pattern[:, :, queries, keys]                     # (N,H,pairs)
        scores[l] = attended.sum(-1).mean(0) / n_queries
    return scores


def _final_rstd(model, cache):
    """1 / std of the final residual stream at each position (N,T): ln_final's one non-linear
    factor, frozen at its value on these tokens; ones without LayerNorm."""
    resid = cache[f"blocks.{model.config.n_layers - 1}.hook_resid_post"].astype(np.float64)
    if model.config.normalization_type != "LN":
        return np.ones(resid.shape[:2])
    return layernorm.rstd(resid)[..., 0]


def copying_score(model, n_examples=10, length=25, token_counts=None, seed=0):
    """Copying (paper, method (3)): does a head's direct effect on the logits raise the token
    it attends to? -> (n_layers, n_heads) in [-1, 1]: +1 it raises only the attended token,
    0 no preference (a random head), -1 it raises only other tokens. NaN for a head whose
    direct effect is flat on the sample's tokens (it writes nothing W_U reads).
    copying_scores gives this score and the paper's form of it from one forward pass.

    Each example is BOS + `length` distinct random tokens (the corpus's most and least common
    excluded, as for prefix matching). The paper left BOS out here by mistake (its footnote
    31); with BOS, a head that parks its attention on the first token raises nothing.
    Precisely, per example and head:
      the token being attended to: a head's output at query i is sum_j a_ij o_j, one term per
        key j (o_j = v_j W_O, its value vector through W_O, b_V included); the term a_ij o_j
        is the head attending to position j, and the token it is attending to is tokens[j].
        Each (i, j) is scored on its own; for a head that attends to one token this is the
        paper's reading, and it stays defined when a head spreads its attention.
      the direct path: o_j through ln_final (centring and gain exact, the division by the
        residual stream's std frozen at query i's value) and W_U; b_U and ln_final's bias
        are not the head's. -> the impact on the logits of the n sample tokens.
      mean-subtract over the n sample tokens, ReLU: the raise r_ij (n,).
      A = sum_ij a_ij r_ij[tokens[j]]                   raise on the attended tokens
      O = sum_ij a_ij (sum_t r_ij[t] - r_ij[tokens[j]]) / (n - 1)
                                                         raise on an average other token
      score = (A - O) / (A + O)  =  2 A / (A + O) - 1.
    Keys j >= 1 only (BOS is no sample token). Averaged over the examples.
    Comparing with the average other token puts chance at 0 and keeps both ends: the raw
    share A / (A + O) runs from 0 to 1 here, and score = 2 share - 1. Because mean-
    subtraction is linear and ReLU positively homogeneous, ReLU(a_ij x) = a_ij ReLU(x):
    each term's weight is a_ij / std_i, summed over queries i per key j."""
    return copying_scores(model, n_examples, length, token_counts, seed)[0]


def copying_scores(model, n_examples=10, length=25, token_counts=None, seed=0):
    """-> (copying_score, the paper's form of it), (n_layers, n_heads) each, from one pass.

    The paper's form: "the ratio of the amount it raises the logits of the token being
    attended to, to that of all tokens in this sample. This value ranges from 0 (only raises
    other tokens) to 0.5 (only raises the present token), so we scale it into the range of
    -1 to 1." The one ratio of A to the raise on all n tokens that runs from 0 to 0.5 is
    A / (A + S), S = A + (n - 1) O the total raise over the sample, the attended token
    included; scaled linearly, paper = 4 A / (A + S) - 1. A head that raises every token
    alike (chance) sits at 4 / (n + 1) - 1 (-0.846 for n = 25), not at 0, and the value
    depends on n; copying_score compares with the average other token instead (chance 0)."""
    cfg = model.config
    length = min(length, cfg.n_ctx - 1)
    if length < 2:
        raise ValueError(f"copying_score: n_ctx={cfg.n_ctx} leaves no room for a sample")
    tokens = repeated_random_tokens(n_examples, length, 1, token_counts, cfg.d_vocab, seed)
    _, cache = model.run_with_cache(tokens)
    params = analysis_params(model)
    W_U, _ = unembed_weights(model, params)                            # (D,V), ln_final folded
    sample = tokens[:, 1:]                                             # (N,n)
    W_sample = np.moveaxis(W_U[:, sample], 0, 1)                       # (N,D,n)
    rstd = _final_rstd(model, cache)                                   # (N,T)
    ours, paper = (np.zeros((cfg.n_layers, cfg.n_heads)) for _ in range(2))
    for l in range(cfg.n_layers):
        v = cache[f"blocks.{l}.attn.hook_v"][:, 1:].astype(np.float64)  # (N,n,H,E) keys j >= 1
        out = np.einsum("njhe,hed->njhd", v, params[f"blocks.{l}.attn.W_O"])
        impact = np.einsum("njhd,ndt->nhjt", out, W_sample)            # (N,H,n keys,n tokens)
        raised = np.maximum(impact - impact.mean(-1, keepdims=True), 0.0)
        pattern = cache[f"blocks.{l}.attn.hook_pattern"].astype(np.float64)
        weight = np.einsum("nhij,ni->nhj", pattern, rstd)[:, :, 1:]     # (N,H,n): sum_i a_ij/std_i
        on_attended = np.diagonal(raised, axis1=-2, axis2=-1)          # (N,H,n): r_ij[tokens[j]]
        attended = (weight * on_attended).sum(-1)                      # (N,H)  A
        other = (weight * (raised.sum(-1) - on_attended)).sum(-1) / (length - 1)   # O
        total = attended + other
        flat = total <= 1e-12 * np.abs(impact).max(initial=0.0)
        nan = np.full_like(total, np.nan)
        ours[l] = np.divide(attended - other, total, out=nan.copy(), where=~flat).mean(0)
        everything = attended + (length - 1) * other                   # S
        paper[l] = (4 * np.divide(attended, attended + everything, out=nan.copy(),
                                  where=~flat) - 1).mean(0)
    return ours, paper


def previous_token_score(model, tokens, batch=32):
    """Previous token (paper, method (3)): the mean attention from position i to i-1 over
    example text tokens (B,T), e.g. the run's eval set (the paper averages 10 examples).
    -> (n_layers, n_heads). A head attending uniformly scores mean over i of 1/(i+1)."""
    tokens = np.asarray(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    total = np.zeros((model.config.n_layers, model.config.n_heads))
    for start in range(0, len(tokens), batch):
        _, cache = model.run_with_cache(tokens[start:start + batch])
        for l in range(model.config.n_layers):
            pattern = cache[f"blocks.{l}.attn.hook_pattern"]                  # (B,H,T,T)
            total[l] += np.diagonal(pattern, offset=-1, axis1=-2, axis2=-1).astype(np.float64).sum((0, 2))
    return total / (len(tokens) * (tokens.shape[1] - 1))


previous_token_attention = previous_token_score   # its name in circuits.weights, kept for callers
