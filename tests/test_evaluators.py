"""The head activation evaluators: the hand-built induction circuit scores as one, a freshly
initialised model scores at chance, and the copying score matches a loop-by-loop reading of
its definition (LayerNorm models included)."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from circuits.evaluators import (copying_score, copying_scores, prefix_matching_score, previous_token_score,
                                 repeated_random_tokens)
from circuits.handmade import induction_model
from circuits.scores import classify_heads
from minitransformer import Model

V = 32
SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=32, d_vocab=64, attn_only=True,
             normalization_type=None, positional_embedding_type="shortformer")
LN_MLP = dict(SMALL, attn_only=False, d_mlp=64, normalization_type="LN",
              positional_embedding_type="standard")


@pytest.fixture(scope="module")
def models():
    return induction_model(d_vocab=V), induction_model(d_vocab=V, previous_token_head=False)


@pytest.fixture(scope="module")
def text():
    return np.random.default_rng(0).integers(0, V, (4, 64))


def test_the_hand_built_circuit_scores_as_an_induction_circuit(models, text):
    model, _ = models
    prefix, copying = prefix_matching_score(model), copying_score(model)
    previous = previous_token_score(model, text)
    assert prefix[1, 0] > 0.9 and copying[1, 0] > 0.9 and previous[0, 0] > 0.9
    assert prefix[0, 0] < 0.1 and previous[1, 0] < 0.2
    assert np.isnan(copying[0, 0])       # head 0.0 writes only where W_U does not read
    assert classify_heads(prefix, copying, previous).tolist() == [["previous-token"], ["induction"]]


def test_without_a_previous_token_head_the_copying_head_is_no_induction_head(models, text):
    _, control = models
    prefix, copying = prefix_matching_score(control), copying_score(control)
    previous = previous_token_score(control, text)
    assert copying[1, 0] > 0.9 and prefix[1, 0] < 0.2 and previous[0, 0] < 0.1
    assert classify_heads(prefix, copying, previous)[1, 0] == "other"


def test_copying_spans_minus_one_to_one():
    model = induction_model(d_vocab=V)
    assert_allclose(copying_score(model)[1, 0], 1.0, atol=1e-9)
    assert_allclose(copying_scores(model)[1][1, 0], 1.0, atol=1e-9)     # the paper's form too
    model.params["unembed.W_U"] = -model.params["unembed.W_U"]    # lowers what it attends to
    assert_allclose(copying_score(model)[1, 0], -1.0, atol=1e-9)
    assert_allclose(copying_scores(model)[1][1, 0], -1.0, atol=1e-9)


def _uniform_twin(model):
    """The same model with every W_Q zeroed: each head attends uniformly."""
    params = {k: np.array(v) for k, v in model.params.items()}
    for key in params:
        if key.endswith("attn.W_Q") or key.endswith("attn.b_Q"):
            params[key][:] = 0
    return Model(model.config, params=params, dtype=model.dtype)


@pytest.mark.parametrize("config", [SMALL, LN_MLP], ids=["attn-only", "ln-mlp"])
def test_a_fresh_model_scores_at_chance(config):
    text = np.random.default_rng(1).integers(1, 64, (10, 32))
    copying = []
    for seed in range(3):
        model = Model(config, seed=seed, dtype=np.float64)
        uniform = _uniform_twin(model)
        # near-uniform attention at initialisation: the scores of uniform attention
        assert_allclose(prefix_matching_score(model), prefix_matching_score(uniform), atol=0.02)
        assert_allclose(previous_token_score(model, text), previous_token_score(uniform, text), atol=0.02)
        ours, paper = copying_scores(model)
        assert_allclose(ours, copying_score(model), rtol=1e-12)
        copying.append(ours)
        assert abs(paper.mean() - (4 / 26 - 1)) < 0.05      # the paper's chance, n = 25: -0.846
    copying = np.array(copying)
    assert np.abs(copying).max() < 0.35 and abs(copying.mean()) < 0.1   # chance is 0
    assert (classify_heads(prefix_matching_score(model), copying[-1],
                           previous_token_score(model, text)) == "other").all()


def test_uniform_attention_scores_match_their_formulas():
    uniform = _uniform_twin(Model(SMALL, dtype=np.float64))
    text = np.random.default_rng(1).integers(1, 64, (3, 32))
    T = text.shape[1]
    assert_allclose(previous_token_score(uniform, text), np.mean(1 / np.arange(2, T + 1)), rtol=1e-9)
    length = (SMALL["n_ctx"] - 1) // 4                      # the shortened 4-repeat sequence
    expected = np.mean([r / (1 + r * length + j + 1) for r in range(1, 4) for j in range(length)])
    assert_allclose(prefix_matching_score(uniform), expected, rtol=1e-9)


def _copying_by_loops(model, tokens):
    """The copying score's definition, read term by term: per example, every (query i,
    key j >= 1) pair's a_ij v_j W_O through ln_final (1/std frozen at i) and W_U, on the
    sample's tokens, mean-subtracted, ReLU; attended token against an average other token."""
    cfg, p = model.config, {k: np.asarray(v, dtype=np.float64) for k, v in model.params.items()}
    _, cache = model.run_with_cache(tokens)
    n = tokens.shape[1] - 1
    resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    scores = np.zeros((len(tokens), cfg.n_layers, cfg.n_heads))
    paper = np.zeros_like(scores)
    for e, sequence in enumerate(tokens):
        sample = sequence[1:]
        for l in range(cfg.n_layers):
            pattern, v = cache[f"blocks.{l}.attn.hook_pattern"][e], cache[f"blocks.{l}.attn.hook_v"][e]
            for h in range(cfg.n_heads):
                attended = other = everything = 0.0
                for i in range(len(sequence)):
                    for j in range(1, i + 1):
                        x = pattern[h, i, j] * v[j, h] @ p[f"blocks.{l}.attn.W_O"][h]
                        if cfg.normalization_type == "LN":
                            std = np.sqrt(resid[e, i].var() + 1e-5)
                            x = (x - x.mean()) / std * p["ln_final.w"]
                        impact = x @ p["unembed.W_U"][:, sample]
                        raised = np.maximum(impact - impact.mean(), 0)
                        attended += raised[j - 1]
                        other += (raised.sum() - raised[j - 1]) / (n - 1)
                        everything += raised.sum()
                scores[e, l, h] = (attended - other) / (attended + other)
                paper[e, l, h] = 4 * attended / (attended + everything) - 1
    return scores.mean(0), paper.mean(0)


@pytest.mark.parametrize("config", [SMALL, LN_MLP], ids=["attn-only", "ln-mlp"])
def test_copying_score_matches_its_definition_read_by_loops(config):
    model = Model(config, seed=3, dtype=np.float64)
    counts = np.random.default_rng(0).integers(1, 100, 64)
    tokens = repeated_random_tokens(2, 12, 1, counts, 64, seed=5)
    ours, paper = _copying_by_loops(model, tokens)
    assert_allclose(copying_score(model, n_examples=2, length=12, token_counts=counts, seed=5),
                    ours, rtol=1e-9)
    assert_allclose(copying_scores(model, n_examples=2, length=12, token_counts=counts, seed=5)[1],
                    paper, rtol=1e-9)


def test_previous_token_score_reads_the_diagonal_in_any_batch():
    model = Model(LN_MLP, seed=1)
    text = np.random.default_rng(2).integers(0, 64, (5, 32))
    _, cache = model.run_with_cache(text)
    expected = np.stack([[np.mean([cache[f"blocks.{l}.attn.hook_pattern"][:, h, i, i - 1]
                                   for i in range(1, 32)]) for h in range(2)] for l in range(2)])
    assert_allclose(previous_token_score(model, text), expected, rtol=1e-5)
    assert_allclose(previous_token_score(model, text, batch=2), expected, rtol=1e-5)


def test_classify_heads_thresholds_and_nan():
    prefix = np.array([[0.9, 0.9, 0.1, np.nan]])
    copying = np.array([[0.9, 0.1, 0.9, 0.9]])
    previous = np.array([[0.0, 0.5, 0.1, 0.9]])
    assert classify_heads(prefix, copying, previous).tolist() == [
        ["induction", "previous-token", "other", "previous-token"]]


def test_copying_score_needs_room_for_a_sample():
    with pytest.raises(ValueError, match="n_ctx"):
        copying_score(Model(dict(SMALL, n_ctx=2)))
