"""The hand-built induction circuit read from its weights: a previous-token head in layer 0,
an induction head in layer 1 that K-composes with it and copies."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

from circuits.evaluators import (prefix_matching_score, previous_token_attention,
                                 repeated_random_tokens)
from circuits.handmade import induction_model
from circuits.paths import attention_score_terms, logit_path_terms
from circuits.weights import (composition_baseline, composition_scores, ov_copying_score,
                              prev_token_qk_trace)

V = 32


@pytest.fixture(scope="module")
def models():
    return induction_model(d_vocab=V), induction_model(d_vocab=V, previous_token_head=False)


@pytest.fixture(scope="module")
def text():
    return np.random.default_rng(0).integers(0, V, (4, 64))


def test_it_is_an_induction_model(models):
    model, _ = models
    tokens = repeated_random_tokens(4, 15, 4, d_vocab=V)                 # BOS + 15 tokens x 4
    predicted = model.forward(tokens)[:, 16:-1].argmax(-1)                # from the 2nd repeat on
    assert (predicted == tokens[:, 17:]).all()
    scores = prefix_matching_score(model)
    assert scores[1, 0] > 0.99 and scores[0, 0] < 0.01


def test_weights_show_a_previous_token_head_and_an_induction_head(models, text):
    model, control = models
    previous = previous_token_attention(model, text)
    assert previous[0, 0] > 0.99
    assert_allclose(ov_copying_score(model)[1, 0], 1.0, atol=1e-12)
    trace, normalised = prev_token_qk_trace(model, previous)
    assert np.isnan(trace[0, 0]) and np.isnan(normalised[0, 0])          # undefined in layer 0
    # W = p * sharpness * sqrt(d_head) * Id on the vocabulary
    E = model.config.d_head
    assert_allclose(trace[1, 0], previous[0, 0] * 20.0 * np.sqrt(E) * V, rtol=1e-9)
    assert_allclose(normalised[1, 0], np.sqrt(V), rtol=1e-9)             # trace(Id) / ||Id||_F
    k_comp = composition_scores(model)["K"][1, 0, 0, 0]
    assert k_comp > 2 * composition_baseline(model.config.d_model, E)


def test_a_uniform_layer_0_head_leaves_no_prefix_matching_trace(models, text):
    model, control = models
    previous = previous_token_attention(control, text)
    assert previous[0, 0] < 0.1                                           # 1/(i+1) on average
    trace, _ = prev_token_qk_trace(control, previous)
    full_trace, _ = prev_token_qk_trace(model, previous_token_attention(model, text))
    assert 0 < trace[1, 0] < 0.1 * full_trace[1, 0]
    assert_allclose(ov_copying_score(control)[1, 0], 1.0, atol=1e-12)      # it still copies
    assert prefix_matching_score(control)[1, 0] < 0.2


def test_path_expansion_shows_k_composition_not_v_composition(models):
    model, _ = models
    tokens = repeated_random_tokens(2, 15, 2, d_vocab=V)
    logit_terms = logit_path_terms(model, tokens)
    assert np.abs(logit_terms[((0, 0), (1, 0))]).max() == 0              # no virtual head
    assert np.abs(logit_terms[()]).max() == 0                            # nor a direct path
    score_terms = attention_score_terms(model, tokens, 1)
    k_composition = score_terms[("embed", (0, 0))]                         # query token x key's previous token
    rest = sum(x for pair, x in score_terms.items() if pair != ("embed", (0, 0)))
    assert np.abs(rest).max() < 1e-6
    # query 16 + j (2nd repeat) matches key 1 + j + 1 (the token after its 1st occurrence)
    j = np.arange(14)
    assert_allclose(k_composition[:, 0, 16 + j, 2 + j], 20.0, rtol=1e-6)
