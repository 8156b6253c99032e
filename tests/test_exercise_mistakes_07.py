"""Exercise 07's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference direct_logit_impact or copying_score with one thing wrong; the
exercise's own checks (exercises/test_07_copying_score.py) are run on it and must fail with a
message that names the problem. The mistaken variants are near copies of the solution, which
the students' tests must not hold: they live here (test_07 held one, mistaken(), before)."""
import functools

import numpy as np
import pytest

import exercises.test_07_copying_score as checks
from exercises.solutions import ex07_copying_score as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


def with_mistake(**replaced):
    """The solution's functions as an `ex`; copying_score, if not replaced, calls the
    (possibly replaced) direct_logit_impact of this namespace."""
    ex = mistakes.with_mistake(solution, **replaced)
    if "copying_score" not in replaced:
        ex.copying_score = score(impact_of=lambda *args: ex.direct_logit_impact(*args))
    return ex


failure_of = functools.partial(mistakes.failure_of, checks, with_mistake)


def impact(keys=slice(1, None), columns=lambda tokens: tokens[:, 1:], out="nhjt", b_V=True):
    """direct_logit_impact with other keys, other W_U columns, another output order, or the
    value vectors recomputed without b_V."""
    def direct_logit_impact(model, cache, layer, tokens):
        v = cache[f"blocks.{layer}.attn.hook_v"].astype(np.float64)
        if not b_V:
            v = v - model.params[f"blocks.{layer}.attn.b_V"]
        W_O = np.asarray(model.params[f"blocks.{layer}.attn.W_O"], dtype=np.float64)
        o = np.einsum("njhe,hed->njhd", v[:, keys], W_O)
        W_U = np.asarray(model.params["unembed.W_U"], dtype=np.float64)
        if columns == "all":
            return np.einsum("njhd,dv->nhjv", o, W_U)
        return np.einsum(f"njhd,dnt->{out}", o, W_U[:, columns(tokens)])
    return direct_logit_impact


def score(impact_of=None, mean_axis=-1, subtract_mean=True, relu="after", weight_axis=2,
          weight_keys=slice(1, None), divide=True):
    """copying_score with one step done otherwise."""
    def copying_score(model, tokens):
        _, cache = model.run_with_cache(tokens)
        n = tokens.shape[1] - 1
        scores = np.zeros((model.config.n_layers, model.config.n_heads))
        for layer in range(model.config.n_layers):
            r = (impact_of or solution.direct_logit_impact)(model, cache, layer, tokens)
            if relu == "before":
                r = np.maximum(r, 0.0)
            if subtract_mean:
                r = r - r.mean(mean_axis, keepdims=True)
            if relu == "after":
                r = np.maximum(r, 0.0)
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"].astype(np.float64)
            w = pattern.sum(weight_axis)[:, :, weight_keys]
            on = np.diagonal(r, axis1=-2, axis2=-1)
            a = (w * on).sum(-1)
            o = (w * (r.sum(-1) - on)).sum(-1) / ((n - 1) if divide else 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                scores[layer] = ((a - o) / (a + o)).mean(0)
        return scores
    return copying_score


IMPACT_TESTS = [(checks.test_impact_is_each_keys_output_read_by_W_U, (layer,)) for layer in (0, 1)]
SCORE_TESTS = ([(checks.test_hand_built_heads_have_their_known_scores, ())]
               + [(checks.test_matches_the_library, (which,))
                  for which in ("random", "hand-built induction")]
               + [(checks.test_the_hand_built_induction_head_copies, ())])


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for test, args in IMPACT_TESTS + SCORE_TESTS:
        test(*args)


def test_the_probe_model_has_the_scores_its_docstring_gives():
    """The known scores of the hand-built heads are the reference's (and the library's rule)."""
    scores = solution.copying_score(checks.probe_model(), checks.PROBE_TOKENS)
    np.testing.assert_allclose(scores, [[1.0, -1.0, 1.0, 2 / 3]], atol=1e-9)


@pytest.mark.parametrize("mistake, says", [
    (impact(keys=slice(None)), ["shape (5, 2, 13, 12)", "BOS is kept among the keys"]),
    (impact(columns="all"), ["shape (5, 2, 12, 50)", "every token of the vocabulary"]),
    (impact(out="nhtj"), ["last two axes are swapped"]),
    (impact(columns=lambda tokens: np.tile(np.arange(tokens.shape[1] - 1),
                                           (len(tokens), 1))), ["not the token whose id is t"]),
    (impact(columns=lambda tokens: tokens[:, :-1]), ["one off", "after BOS"]),
    (impact(columns=lambda tokens: np.tile(tokens[:1, 1:], (len(tokens), 1))),
     ["the first example's tokens"]),
    (impact(b_V=False), ["b_V is missing"]),
], ids=["BOS kept", "whole vocabulary", "j and t swapped", "token ids", "tokens one off",
        "first example's tokens", "no b_V"])
def test_impact_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_impact_is_each_keys_output_read_by_W_U, 1,
                         direct_logit_impact=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (score(weight_axis=3), ["head 0.2", "its score is 1, yours is 0", "summed over the "
                            "queries (the pattern's axis 2), not over the keys"]),
    (score(weight_keys=slice(None, -1)), ["head 0.2", "one key off", "BOS left out"]),
    (score(subtract_mean=False), ["head 0.0", "its score is 1, yours is 0.2",
                                  "mean-subtracted over the sample tokens",
                                  "(head 0.1 differs too)"]),
    (score(relu="before"), ["head 0.0", "yours is 1.5", "outside [-1, 1]",
                            "Does the ReLU come after", "heads 0.1, 0.2, 0.3 differ too"]),
    (score(relu="none"), ["head 0.0", "outside [-1, 1]", "Does the ReLU come after"]),
    (score(divide=False), ["head 0.3", "yours is 0", "average other token"]),
    (score(mean_axis=-2), ["copying score: head 0.2", "its score is 1, yours is 0.667",
                           "subtracted over the keys, not over the sample tokens"]),
], ids=["weights over keys", "weights one key off", "no mean-subtraction", "ReLU first",
        "no ReLU", "O not averaged", "mean over keys"])
def test_score_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_hand_built_heads_have_their_known_scores,
                         copying_score=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake", [score(weight_axis=3), score(weight_keys=slice(None, -1)),
                                     score(subtract_mean=False), score(relu="before"),
                                     score(relu="none"), score(divide=False),
                                     score(mean_axis=-2)],
                         ids=["weights over keys", "weights one key off", "no mean-subtraction",
                              "ReLU first", "no ReLU", "O not averaged", "mean over keys"])
def test_score_mistakes_also_fail_against_the_library(monkeypatch, mistake):
    """On the random model too, each mistake fails, naming the (layer, head) entry."""
    message = failure_of(monkeypatch, checks.test_matches_the_library, "random",
                         copying_score=mistake)
    assert "differs from circuits.copying_score" in message and "at entry" in message, message


def test_the_nan_remark_comes_only_where_nan_is_the_point(monkeypatch):
    """The library's NaN (a head that writes nothing W_U reads) is named when yours gives a
    number there; a mistake without NaN gets no NaN remark."""
    def no_nan(model, tokens):
        return np.nan_to_num(solution.copying_score(model, tokens))
    message = failure_of(monkeypatch, checks.test_matches_the_library, "hand-built induction",
                         copying_score=no_nan)
    assert "head 0.0 is NaN" in message and "leave 0 / 0 as NaN" in message, message
    message = failure_of(monkeypatch, checks.test_matches_the_library, "random",
                         copying_score=score(weight_axis=3))
    assert "NaN" not in message, message
