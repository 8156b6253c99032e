"""Invariants the architecture promises, checked on random models."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minitransformer import Model, ModelConfig
from minitransformer.interventions import ablate_heads, combine, replay, scale_heads

seeds = st.integers(0, 2**31)


def random_model(seed, **overrides):
    cfg = dict(n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=12, d_vocab=13, attn_only=False)
    cfg.update(overrides)
    return Model(cfg, seed=seed, dtype=np.float64)


@given(seed=seeds, pos=st.sampled_from(["shortformer", "standard", "none"]),
       smeared=st.booleans(), cut=st.integers(1, 11))
def test_causal_masking(seed, pos, smeared, cut):
    """Changing tokens at positions >= cut never changes a logit before cut."""
    model = random_model(seed, positional_embedding_type=pos, smeared_key=smeared)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 13, (2, 12))
    changed = tokens.copy()
    changed[:, cut:] = (changed[:, cut:] + rng.integers(1, 13, changed[:, cut:].shape)) % 13
    before, after = model.forward(tokens), model.forward(changed)
    np.testing.assert_allclose(before[:, :cut], after[:, :cut], rtol=1e-12, atol=1e-12)
    assert not np.allclose(before[:, cut:], after[:, cut:])   # ...and later ones do change


@given(seed=seeds, norm=st.sampled_from(["LN", None]), pos=st.sampled_from(["shortformer", "none"]))
def test_zeroing_every_head_leaves_the_direct_path(seed, norm, pos):
    """Attention-only: with every head zeroed, logits = (LN)(W_E[tok] + sum of b_O) @ W_U + b_U."""
    model = random_model(seed, attn_only=True, normalization_type=norm, positional_embedding_type=pos)
    p, cfg = model.params, model.config
    tokens = np.random.default_rng(seed).integers(0, 13, (3, 12))
    every = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    resid = p["embed.W_E"][tokens] + sum(p[f"blocks.{l}.attn.b_O"] for l in range(cfg.n_layers))
    if norm == "LN":
        centred = resid - resid.mean(-1, keepdims=True)
        resid = centred / np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5)
        resid = resid * p["ln_final.w"] + p["ln_final.b"]
    direct = resid @ p["unembed.W_U"] + p["unembed.b_U"]
    np.testing.assert_allclose(model.forward(tokens, hooks=ablate_heads(every)), direct, rtol=1e-10, atol=1e-12)
    assert not np.allclose(model.forward(tokens), direct)


@given(seed=seeds, smeared=st.booleans())
def test_replaying_own_patterns_reproduces_logits(seed, smeared):
    model = random_model(seed, smeared_key=smeared)
    tokens = np.random.default_rng(seed).integers(0, 13, (2, 12))
    logits, cache = model.run_with_cache(tokens)
    patterns = replay(cache, [k for k in cache if k.endswith("hook_pattern")])
    np.testing.assert_allclose(model.forward(tokens, hooks=patterns), logits, rtol=1e-12, atol=1e-12)


@given(seed=seeds)
def test_pattern_preserving_differs_from_full_ablation_upstream(seed):
    """Zeroing a layer-0 head changes layer-1 patterns (full ablation) unless they are replayed."""
    model = random_model(seed, attn_only=True)
    tokens = np.random.default_rng(seed).integers(0, 13, (2, 12))
    _, clean = model.run_with_cache(tokens)
    patterns = replay(clean, [k for k in clean if k.endswith("hook_pattern")])
    _, full = model.run_with_cache(tokens, hooks=ablate_heads([(0, 0)]))
    _, kept = model.run_with_cache(tokens, hooks=combine(patterns, ablate_heads([(0, 0)])))
    key = "blocks.1.attn.hook_pattern"
    assert not np.allclose(full[key], clean[key])
    np.testing.assert_array_equal(kept[key], clean[key])


def test_cache_names_and_shapes():
    model = random_model(0)
    B, T, cfg = 2, 7, model.config
    logits, cache = model.run_with_cache(np.zeros((B, T), dtype=int))
    assert logits.shape == (B, T, cfg.d_vocab)
    for l in range(cfg.n_layers):
        a = f"blocks.{l}.attn."
        for hook in ("hook_q", "hook_k", "hook_v", "hook_z"):
            assert cache[a + hook].shape == (B, T, cfg.n_heads, cfg.d_head)
        assert cache[a + "hook_pattern"].shape == (B, cfg.n_heads, T, T)
        assert cache[a + "hook_result"].shape == (B, T, cfg.n_heads, cfg.d_model)
        # the per-head results plus b_O add up to the attention output
        np.testing.assert_allclose(cache[a + "hook_result"].sum(2) + model.params[a + "b_O"],
                                   cache[f"blocks.{l}.hook_attn_out"], atol=1e-12)
        np.testing.assert_allclose(cache[f"blocks.{l}.hook_resid_post"],
                                   cache[f"blocks.{l}.hook_resid_mid"] + cache[f"blocks.{l}.hook_mlp_out"])


def test_head_scale_per_batch_row_equals_separate_ablations():
    """A (B,H) mask ablates a different head in each row: one batched call = H separate ones."""
    model = random_model(3, attn_only=True)
    tokens = np.random.default_rng(3).integers(0, 13, (1, 12))
    H = model.config.n_heads
    batched = model.forward(np.repeat(tokens, H, 0), hooks=scale_heads({0: 1 - np.eye(H)}))
    for h in range(H):
        np.testing.assert_allclose(batched[h], model.forward(tokens, hooks=ablate_heads([(0, h)]))[0], atol=1e-12)


def test_same_seed_same_model_and_float32_default():
    a, b = Model(ModelConfig(n_layers=1), seed=5), Model(ModelConfig(n_layers=1), seed=5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert a.params["embed.W_E"].dtype == np.float32
    assert not np.array_equal(a.params["embed.W_E"], Model(ModelConfig(n_layers=1), seed=6).params["embed.W_E"])


@pytest.mark.parametrize("tokens,message", [
    (np.array([[0, 13]]), "tokens: ids must lie in"),
    (np.array([[-1, 0]]), "tokens: ids must lie in"),
    (np.zeros((1, 13), dtype=int), "exceed n_ctx"),
    (np.zeros((1, 3)), "integer array"),
])
def test_bad_tokens_raise(tokens, message):
    with pytest.raises(ValueError, match=message):
        random_model(0).forward(tokens)


def test_bad_params_name_the_key():
    model = random_model(0)
    params = dict(model.params)
    params["blocks.0.attn.W_Q"] = params["blocks.0.attn.W_Q"][:, :, :2]
    with pytest.raises(ValueError, match=r"'blocks.0.attn.W_Q' has shape"):
        Model(model.config, params=params)
    del params["blocks.0.attn.W_Q"]
    with pytest.raises(ValueError, match=r"missing key 'blocks.0.attn.W_Q'"):
        Model(model.config, params=params)
