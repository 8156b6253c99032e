"""Path expansion against the engine (float64): the terms sum to the logits and to the
attention scores, leaving a head out is the pattern-preserving ablation, and finite
differences of the engine agree with the terms a head or a key input contributes."""
import numpy as np
from hypothesis import given, strategies as st
from numpy.testing import assert_allclose

from minitransformer import Model
from minitransformer.interventions import ablate_heads, combine, replay, scale_heads
from circuits.paths import attention_score_terms, logit_path_terms, path_name, sum_terms
from circuits.weights import qk_circuit

POSITIONS = ["shortformer", "standard", "none"]


@st.composite
def attention_only_models(draw, layer_norm=None, positions=None, smeared=None, min_layers=1):
    """(Model float64, tokens (2,T)): a random small attention-only model whose biases, LN
    gains and smear logits are random too, so every term of the expansion is exercised."""
    norm = draw(st.sampled_from(["LN", None])) if layer_norm is None else ("LN" if layer_norm else None)
    config = dict(n_layers=draw(st.integers(min_layers, 3)), n_heads=draw(st.integers(1, 2)),
                  d_head=draw(st.integers(1, 4)), d_model=draw(st.sampled_from([4, 6, 8])),
                  n_ctx=draw(st.integers(3, 7)), d_vocab=draw(st.integers(3, 9)),
                  attn_only=True, normalization_type=norm,
                  positional_embedding_type=positions or draw(st.sampled_from(POSITIONS)),
                  smeared_key=draw(st.booleans()) if smeared is None else smeared)
    seed = draw(st.integers(0, 2**32 - 1))
    model = Model(config, seed=seed % 2**16, dtype=np.float64)
    rng = np.random.default_rng(seed)
    for name, value in model.params.items():
        leaf = name.rsplit(".", 1)[1]
        if leaf.startswith("b") or leaf == "alpha":
            value[...] = rng.normal(0.0, 0.5, value.shape)
        elif leaf == "w":
            value[...] = rng.normal(1.0, 0.3, value.shape)
    return model, rng.integers(0, config["d_vocab"], (2, config["n_ctx"]))


def own_patterns(model, tokens, layers=None):
    _, cache = model.run_with_cache(tokens)
    layers = range(model.config.n_layers) if layers is None else layers
    return {f"blocks.{l}.attn.hook_pattern": cache[f"blocks.{l}.attn.hook_pattern"] for l in layers}


def causal(T):
    return np.tril(np.ones((T, T), dtype=bool))


@given(attention_only_models())
def test_logit_terms_sum_to_the_logits(case):
    model, tokens = case
    terms = logit_path_terms(model, tokens)
    H, L = model.config.n_heads, model.config.n_layers
    assert len(terms) == (H + 1) ** L                 # every chain of heads in increasing layers
    assert sum(1 for path in terms if len(path) == 1) == H * L
    assert_allclose(sum(terms.values()), model.forward(tokens), rtol=1e-10, atol=1e-10)


@given(attention_only_models())
def test_score_terms_sum_to_the_scores(case):
    model, tokens = case
    _, cache = model.run_with_cache(tokens)
    keep = causal(tokens.shape[1])
    for layer in range(model.config.n_layers):
        terms = attention_score_terms(model, tokens, layer)
        head_sources = {s for pair in terms for s in pair if isinstance(s, tuple)}
        assert head_sources == {(l, h) for l in range(layer) for h in range(model.config.n_heads)}
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        assert_allclose(sum(terms.values())[..., keep], scores[..., keep], rtol=1e-10, atol=1e-10)


@given(attention_only_models(layer_norm=False), st.data())
def test_leaving_a_head_out_is_the_pattern_preserving_ablation(case, data):
    model, tokens = case
    head = (data.draw(st.integers(0, model.config.n_layers - 1)),
            data.draw(st.integers(0, model.config.n_heads - 1)))
    patterns = own_patterns(model, tokens)
    ablated = model.forward(tokens, combine(replay(patterns, list(patterns)), ablate_heads([head])))
    assert_allclose(sum_terms(logit_path_terms(model, tokens), without=[head]), ablated,
                    rtol=1e-10, atol=1e-10)


@given(attention_only_models(layer_norm=False), st.data())
def test_scaling_a_head_moves_the_logits_by_its_path_terms(case, data):
    """Patterns frozen: logits(head scaled by 1+eps) - logits = eps * (the head's single-head
    term + every virtual-head term through it), up to O(eps^2)."""
    model, tokens = case
    cfg = model.config
    layer, head = data.draw(st.integers(0, cfg.n_layers - 1)), data.draw(st.integers(0, cfg.n_heads - 1))
    frozen = own_patterns(model, tokens)
    eps = 1e-4
    mask = np.ones(cfg.n_heads)
    mask[head] += eps
    replayed = replay(frozen, list(frozen))
    change = (model.forward(tokens, combine(replayed, scale_heads({layer: mask})))
              - model.forward(tokens, replayed)) / eps
    terms = logit_path_terms(model, tokens, patterns=frozen)
    through = sum(x for path, x in terms.items() if (layer, head) in path)
    assert_allclose(change, through, rtol=1e-6, atol=1e-6 * (1 + np.abs(through).max()))


@given(attention_only_models(layer_norm=False, min_layers=2), st.data())
def test_scaling_an_earlier_head_moves_the_scores_by_its_composition_terms(case, data):
    """Scores of layer l+1 are bilinear in the sources; scaling head (l, k) by 1+eps (patterns
    below frozen) changes them by eps * (its Q-composition terms + its K-composition terms)
    + eps^2 * its (k, k) term, so a central difference isolates the first."""
    model, tokens = case
    cfg = model.config
    layer = data.draw(st.integers(0, cfg.n_layers - 2))
    k = (layer, data.draw(st.integers(0, cfg.n_heads - 1)))
    frozen = own_patterns(model, tokens, range(layer + 1))
    eps = 1e-4

    def scores(scale):
        mask = np.ones(cfg.n_heads)
        mask[k[1]] = scale
        _, cache = model.run_with_cache(tokens, combine(replay(frozen, list(frozen)),
                                                        scale_heads({layer: mask})))
        return cache[f"blocks.{layer + 1}.attn.hook_attn_scores"]
    keep = causal(tokens.shape[1])
    change = (scores(1 + eps)[..., keep] - scores(1 - eps)[..., keep]) / (2 * eps)   # masked: -inf
    terms = attention_score_terms(model, tokens, layer + 1, patterns=frozen)
    expected = sum(x for (q, key), x in terms.items() if q == k) + \
        sum(x for (q, key), x in terms.items() if key == k)
    assert_allclose(change, expected[..., keep], rtol=1e-6, atol=1e-7 * (1 + np.abs(expected).max()))


@given(attention_only_models(layer_norm=False, positions="shortformer", smeared=False, min_layers=2),
       st.data())
def test_a_key_side_perturbation_moves_scores_by_the_qk_bilinear_term(case, data):
    """Shortformer positions enter only the query/key input. Moving W_pos[j] along d (layer-0
    patterns frozen, so nothing else changes) changes a layer-1 head's score of query i > j
    on key j by  (x_i W_QK d^T + b_Q W_K^T d^T) / sqrt(d_head), x_i the query input."""
    model, tokens = case
    cfg = model.config
    T = tokens.shape[1]
    j = data.draw(st.integers(0, T - 2))
    direction = np.random.default_rng(j).standard_normal(cfg.d_model)
    frozen = own_patterns(model, tokens, [0])
    W_pos = model.params["pos_embed.W_pos"]
    original = W_pos.copy()
    eps = 1e-4

    def scores(sign):
        W_pos[...] = original
        W_pos[j] += sign * eps * direction
        _, cache = model.run_with_cache(tokens, replay(frozen, list(frozen)))
        return cache["blocks.1.attn.hook_attn_scores"][:, :, j + 1:, j]          # (B,H,T-j-1)
    change = (scores(+1) - scores(-1)) / (2 * eps)
    W_pos[...] = original
    _, cache = model.run_with_cache(tokens, replay(frozen, list(frozen)))
    query_input = cache["blocks.1.hook_resid_pre"] + original[:T]                  # (B,T,D)
    W_QK = qk_circuit(model, 1)                                                    # (H,D,D)
    bilinear = np.einsum("btd,hd->bht", query_input, (W_QK @ direction[:, None]).AB[..., 0])
    bias = np.einsum("he,hde,d->h", model.params["blocks.1.attn.b_Q"],
                     model.params["blocks.1.attn.W_K"], direction)
    expected = (bilinear + bias[None, :, None])[:, :, j + 1:] / np.sqrt(cfg.d_head)
    assert_allclose(change, expected, rtol=1e-6, atol=1e-8)


def test_path_names():
    assert [path_name(p) for p in [(), ((0, 1),), ((0, 1), (1, 0))]] == ["direct", "0.1", "0.1->1.0"]


def test_models_with_mlps_are_refused_in_one_line():
    model = Model(dict(n_layers=1, d_model=8, n_heads=2, n_ctx=4, d_vocab=5, attn_only=False))
    try:
        logit_path_terms(model, np.zeros((1, 4), dtype=np.int64))
    except ValueError as e:
        assert "attention-only" in str(e) and "\n" not in str(e)
    else:
        raise AssertionError("expected a ValueError")
