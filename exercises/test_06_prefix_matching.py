"""Exercise 06: prefix matching against circuits.prefix_matching_score, on a hand-built
induction model (known answer) and a random model (every head near chance)."""
import numpy as np
import pytest

from circuits import induction_model, prefix_matching_score, repeated_random_tokens
from exercises.harness import check_close, fail, load
from minitransformer import Model

ex = load("ex06_prefix_matching")


def mistaken(model, tokens, length, repeats, after=1, every_copy=True):
    """What a mistake would score: after=0 scores the earlier occurrence itself;
    every_copy=False only the copy just before."""
    _, cache = model.run_with_cache(tokens)
    pairs = [(1 + r * length + j, 1 + m * length + j + after)
             for r in range(1, repeats) for j in range(length)
             for m in (range(r) if every_copy else [r - 1])]
    q, k = np.array(pairs).T
    return np.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, :, q, k].sum(-1).mean(0)
                     / ((repeats - 1) * length) for l in range(model.config.n_layers)])


MODELS = {"the hand-built induction model": lambda: induction_model(d_vocab=32, n_ctx=64),
          "a random 2-layer model": lambda: Model(dict(n_layers=2, d_model=32, n_heads=3, d_head=8,
                                                       n_ctx=64, d_vocab=64, attn_only=True,
                                                       initializer_range=0.5), seed=1)}


@pytest.mark.checks("prefix_matching_score")
@pytest.mark.parametrize("which", MODELS)
def test_matches_the_library(which):
    model = MODELS[which]()
    length, repeats = 15, 4
    tokens = repeated_random_tokens(10, length, repeats, None, model.config.d_vocab, seed=0)
    yours = ex.prefix_matching_score(model, tokens, length, repeats)
    expected = prefix_matching_score(model, 10, length, repeats, seed=0)
    check_close(f"prefix-matching scores on {which}", yours, expected,
                "circuits.prefix_matching_score", rtol=1e-5, atol=1e-6,
                mistakes={"you scored attention to the earlier occurrence of the same token; "
                          "prefix matching is attention to the token AFTER it (key j + 1)":
                          mistaken(model, tokens, length, repeats, after=0),
                          "you counted only the copy just before; sum over every earlier copy":
                          mistaken(model, tokens, length, repeats, every_copy=False)},
                hint="score = (sum over pairs of pattern[q, k]) / (number of queries)")


@pytest.mark.checks("prefix_matching_score")
def test_the_hand_built_head_scores_one():
    model = induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(5, 15, 4, None, 32, seed=2)
    scores = ex.prefix_matching_score(model, tokens, 15, 4)
    if not (scores[1, 0] > 0.95 and scores[0, 0] < 0.1):
        fail(f"the hand-built induction head 1.0 should score ~1 and the previous-token head "
             f"0.0 ~0; yours gives {scores[1, 0]:.2f} and {scores[0, 0]:.2f}")
