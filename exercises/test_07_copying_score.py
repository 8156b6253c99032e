"""Exercise 07: the direct-path copying score against circuits.copying_score (models without
LayerNorm, where the two are the same quantity)."""
import numpy as np
import pytest

from circuits import copying_score, induction_model, repeated_random_tokens
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex07_copying_score")


def random_model():
    return Model(dict(n_layers=2, d_model=32, n_heads=2, n_ctx=32, d_vocab=50, attn_only=True,
                      normalization_type=None, initializer_range=0.5), seed=4, dtype=np.float64)


def mistaken(model, tokens, subtract_mean=True, relu=True):
    """The score with one step left out."""
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1] - 1
    W_U = model.params["unembed.W_U"][:, tokens[:, 1:]]
    rows = []
    for l in range(model.config.n_layers):
        out = np.einsum("njhe,hed->njhd", cache[f"blocks.{l}.attn.hook_v"][:, 1:],
                        model.params[f"blocks.{l}.attn.W_O"])
        r = np.einsum("njhd,dnt->nhjt", out, W_U)
        r = r - r.mean(-1, keepdims=True) if subtract_mean else r
        r = np.maximum(r, 0.0) if relu else r
        w = cache[f"blocks.{l}.attn.hook_pattern"].sum(2)[:, :, 1:]
        on = np.diagonal(r, axis1=-2, axis2=-1)
        a, o = (w * on).sum(-1), (w * (r.sum(-1) - on)).sum(-1) / (n - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            rows.append(((a - o) / (a + o)).mean(0))
    return np.stack(rows)


@pytest.mark.checks("direct_logit_impact")
def test_impact_shape_and_values():
    model = random_model()
    tokens = repeated_random_tokens(3, 12, 1, None, 50, seed=0)
    _, cache = model.run_with_cache(tokens)
    impact = ex.direct_logit_impact(model, cache, 1, tokens)
    check_shape("direct_logit_impact", impact, (3, 2, 12, 12), "[example, head, key j-1, token t]")
    e, h, j, t = 1, 0, 4, 7     # key j = 5 (index 4), sample token t
    o = cache["blocks.1.attn.hook_v"][e, j + 1, h] @ model.params["blocks.1.attn.W_O"][h]
    check_close("impact[1, 0, 4, 7]", impact[e, h, j, t],
                o @ model.params["unembed.W_U"][:, tokens[e, 1 + t]],
                "v_j W_O W_U[:, tokens[e, 1 + t]] with j = 5",
                hint="keys j >= 1 only (drop BOS), and the logit of sample token t, "
                     "tokens[e, 1 + t], not of token id t")


@pytest.mark.checks("copying_score")
@pytest.mark.parametrize("which", ["random", "hand-built"])
def test_matches_the_library(which):
    model = random_model() if which == "random" else induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(6, 20, 1, None, model.config.d_vocab, seed=0)
    yours = ex.copying_score(model, tokens)
    expected = copying_score(model, n_examples=6, length=20, seed=0)
    check_close(f"copying scores ({which} model)", yours, expected, "circuits.copying_score",
                rtol=1e-4, atol=1e-6,
                mistakes={"mean-subtract the impact over the sample tokens before the ReLU":
                          mistaken(model, tokens, subtract_mean=False),
                          "apply the ReLU after mean-subtracting":
                          mistaken(model, tokens, relu=False)},
                hint="NaN is expected only where a head writes nothing W_U reads (0 / 0)")


@pytest.mark.checks("copying_score")
def test_the_hand_built_induction_head_copies():
    model = induction_model(d_vocab=32, n_ctx=64)
    scores = ex.copying_score(model, repeated_random_tokens(4, 20, 1, None, 32, seed=1))
    if not scores[1, 0] > 0.95:
        fail(f"head 1.0 of the hand-built model copies the attended token to the logits "
             f"exactly; its score should be ~1, yours is {scores[1, 0]:.2f}")
