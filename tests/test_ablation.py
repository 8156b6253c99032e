"""Head ablations: pattern-preserving ablation is removing the head's path terms (so ablating
every head of an attention-only model leaves the direct path), full and pattern-preserving
agree for the last layer and differ where a later head composes with the ablated one, and
the losses, ICL changes and projections are what their definitions say."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import circuits
import experiments.losses
from circuits import ablation, icl
from circuits.ablation import ablation_logits, ablation_losses, every_head, icl_change, loss_projection
from circuits.icl import icl_score
from circuits.evaluators import repeated_random_tokens
from circuits.handmade import induction_model
from circuits.paths import logit_path_terms, sum_terms
from minitransformer import Model
from minitransformer.interventions import ablate_heads, combine, replay

ATTN_ONLY = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=24, d_vocab=48, attn_only=True,
                 normalization_type=None, positional_embedding_type="shortformer")
LN_MLP = dict(ATTN_ONLY, n_layers=3, attn_only=False, d_mlp=64, normalization_type="LN")


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, 48, (5, 24))


def _model(config, seed=0, dtype=np.float64):
    model = Model(config, seed=seed, dtype=dtype)
    # sharper attention than at initialisation, so that patterns depend on what heads write
    for key in model.params:
        if key.endswith("W_Q") or key.endswith("W_K"):
            model.params[key] = model.params[key] * 4
    return model


def test_ablating_every_head_pattern_preserving_leaves_the_direct_path(tokens):
    model = _model(ATTN_ONLY)
    heads = [h for (h,) in every_head(model.config)]
    _, ablated = ablation_logits(model, tokens, [heads])
    terms = logit_path_terms(model, tokens)
    assert_allclose(ablated[0], terms[()], atol=1e-10)


def test_pattern_preserving_ablation_removes_the_heads_path_terms(tokens):
    model = _model(ATTN_ONLY)
    ablations = every_head(model.config) + [((0, 1), (1, 0))]
    clean, ablated = ablation_logits(model, tokens, ablations, batch=2)
    terms = logit_path_terms(model, tokens)
    assert_allclose(clean, sum_terms(terms), atol=1e-10)
    for heads, logits in zip(ablations, ablated):
        assert_allclose(logits, sum_terms(terms, without=heads), atol=1e-10)


@pytest.mark.parametrize("config", [ATTN_ONLY, LN_MLP], ids=["attn-only", "ln-mlp"])
def test_full_and_pattern_preserving_agree_only_for_the_last_layer(config, tokens):
    model = _model(config)
    _, preserved = ablation_logits(model, tokens, method="pattern-preserving")
    _, full = ablation_logits(model, tokens, method="full")
    last = config["n_layers"] - 1
    for (heads,), p, f in zip(every_head(model.config), preserved, full):
        if heads[0] == last:
            assert_allclose(p, f, atol=1e-10)
        else:
            assert np.abs(p - f).max() > 1e-3, heads


def test_on_the_hand_built_circuit_only_the_full_ablation_breaks_induction():
    """Head 1.0 reads 0.0's output only in its keys: removing 0.0 with the patterns kept
    changes nothing; removing it fully leaves 1.0 nothing to match, so the second repeat is
    no longer predicted. Removing 1.0 breaks it either way."""
    model = induction_model(d_vocab=32)
    tokens = repeated_random_tokens(4, 20, 3, d_vocab=32)                  # BOS + 20 x 3
    preserved = ablation_losses(model, tokens)
    full = ablation_losses(model, tokens, method="full")
    repeats = np.s_[:, 21:]                                                # predicting from the 2nd repeat on
    assert preserved.clean[repeats].mean() < 0.01
    assert_allclose(preserved.ablated[0], preserved.clean, atol=1e-12)     # 0.0, patterns kept
    assert full.ablated[0][repeats].mean() > 2.0                           # 0.0, full
    assert preserved.ablated[1][repeats].mean() > 2.0 and full.ablated[1][repeats].mean() > 2.0
    change = icl_change(preserved)
    assert change[0] == pytest.approx(0.0, abs=1e-9) and change[1] > 2.0   # the induction head holds the ICL


def test_losses_are_the_models_per_token_losses_in_any_batch(tokens):
    model = _model(LN_MLP, seed=1)
    sets = [(1, 0), [(0, 0), (2, 1)]]
    result = ablation_losses(model, tokens, sets, batch=2)
    assert result.ablations == [((1, 0),), ((0, 0), (2, 1))] and result.method == "pattern-preserving"
    assert result.clean.shape == (5, 23) and result.ablated.shape == (2, 5, 23)
    assert_allclose(result.clean, model.per_token_loss(tokens), rtol=1e-6)
    cache = model.run_with_cache(tokens)[1]
    patterns = replay(cache, [k for k in cache if k.endswith("hook_pattern")])
    for heads, losses in zip(result.ablations, result.ablated):
        assert_allclose(losses, model.per_token_loss(tokens, combine(patterns, ablate_heads(heads))),
                        rtol=1e-6)
    full = ablation_losses(model, tokens, sets, method="full", batch=3)
    assert_allclose(full.ablated[1], model.per_token_loss(tokens, ablate_heads(sets[1])), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("method", ablation.METHODS)
@pytest.mark.parametrize("config", [ATTN_ONLY, LN_MLP], ids=["attn-only", "ln-mlp"])
def test_reusing_the_layers_below_an_ablation_is_the_whole_forward_to_the_bit(config, method, dtype,
                                                                              tokens):
    """What experiments.measure runs (reuse=True: each ablation from its lowest layer up, that
    layer's other heads' outputs replayed) against the readable version (a whole forward per
    ablation): the same bits, so cached measurements stay valid."""
    model = _model(config, seed=2, dtype=dtype)
    sets = every_head(model.config) + [[(1, 0), (0, 1)], [(1, 1), (1, 0)], []]
    for output in (ablation_losses, ablation_logits):
        fast = output(model, tokens, sets, method, batch=2)
        readable = output(model, tokens, sets, method, batch=2, reuse=False)
        assert_array_equal(fast[0], readable[0])
        assert_array_equal(fast[1], readable[1])


def test_icl_change_and_projection_follow_from_the_losses():
    rng = np.random.default_rng(0)
    clean = rng.random((6, 63)).astype(np.float32)
    ablated = clean + rng.random((3, 6, 63)).astype(np.float32)
    result = ablation.AblationLosses(clean, ablated, [((0, 0),)] * 3, "full")
    assert_allclose(icl_change(result), [icl_score(a) - icl_score(clean) for a in ablated], rtol=1e-6)
    direction = rng.standard_normal((6, 63))
    assert_allclose(loss_projection(result, direction),
                    [np.sum((a - clean) * direction) / np.linalg.norm(direction) for a in ablated],
                    rtol=1e-5)
    by_index = rng.standard_normal(63)
    assert_allclose(loss_projection(result, by_index),
                    [(a - clean).mean(0) @ by_index / np.linalg.norm(by_index) for a in ablated],
                    rtol=1e-5)
    with pytest.raises(ValueError, match="direction"):
        loss_projection(result, np.ones(5))


def test_one_icl_score_for_circuits_and_experiments():
    assert circuits.icl_score is ablation.icl_score is icl.icl_score
    assert circuits.context_indices is icl.context_indices
    assert not hasattr(experiments.losses, "icl_score")        # one place to look: circuits.icl


def test_bad_ablations_are_one_line_errors(tokens):
    model = _model(ATTN_ONLY)
    with pytest.raises(ValueError, match="head 2.0 does not exist"):
        ablation_losses(model, tokens, [(2, 0)])
    with pytest.raises(ValueError, match="method"):
        ablation_losses(model, tokens, method="mean")
