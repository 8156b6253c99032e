"""Forward hooks, TransformerLens-style: every hook point shows its activation in
TransformerLens's shape, a replacement changes the rest of the forward (and only through
that hook point), zeroing a head through hook_z is interventions.ablate_heads, replaying patterns through
hook_pattern is interventions.replay, and the backward refuses a forward that a hook changed."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from minitransformer import Model
from minitransformer.interventions import ablate_heads, combine, replay

CONFIGS = {"attn-only": dict(n_layers=2, attn_only=True),
           "mlp, smeared, standard positions": dict(n_layers=2, attn_only=False, smeared_key=True,
                                                    positional_embedding_type="standard"),
           "no LayerNorm, no positions": dict(n_layers=2, attn_only=False, normalization_type=None,
                                              positional_embedding_type="none")}


def model_of(overrides, seed=0):
    return Model(dict(d_model=16, n_heads=2, d_head=4, n_ctx=10, d_vocab=13, d_mlp=20, **overrides),
                 seed=seed, dtype=np.float64)


def tokens(seed=0, B=3, T=10):
    return np.random.default_rng(seed).integers(0, 13, (B, T))


@pytest.fixture(params=CONFIGS.values(), ids=CONFIGS.keys())
def model(request):
    return model_of(request.param)


def test_hook_names_are_the_names_the_cache_records(model):
    _, cache = model.run_with_cache(tokens())
    assert model.hook_names() == list(cache)     # the same names, in the forward's order
    assert "blocks.1.attn.hook_z" in cache and ("blocks.0.mlp.hook_pre" in cache) == \
        (not model.config.attn_only)


def test_a_hook_sees_what_the_cache_records_in_transformerlens_shapes(model):
    x = tokens()
    B, T = x.shape
    H, E, D = model.config.n_heads, model.config.d_head, model.config.d_model
    _, cache = model.run_with_cache(x)
    seen = {}

    def look(activation, name):
        seen[name] = np.array(activation)
    model.forward(x, hooks={name: look for name in model.hook_names()})
    assert list(seen) == list(cache)
    for name, activation in seen.items():
        assert_array_equal(activation, cache[name], err_msg=name)
    assert seen["blocks.1.attn.hook_z"].shape == (B, T, H, E)
    assert seen["blocks.1.attn.hook_pattern"].shape == (B, H, T, T)
    assert seen["blocks.1.attn.hook_result"].shape == (B, T, H, D)


def test_zeroing_a_head_through_hook_z_is_ablate_heads(model):
    def zero_head(z, name):                 # z (B,T,H,E)
        z = z.copy()
        z[:, :, 1] = 0.0
        return z
    x = tokens()
    hooked = model.forward(x, hooks={"blocks.0.attn.hook_z": zero_head})
    assert_array_equal(hooked, model.forward(x, hooks=ablate_heads([(0, 1)])))
    assert np.abs(hooked - model.forward(x)).max() > 1e-3      # the head mattered


def test_zeroing_a_head_through_hook_result_is_ablate_heads(model):
    def zero_head(result, name):            # result (B,T,H,D)
        result = result.copy()
        result[:, :, 0] = 0.0
        return result
    x = tokens()
    assert_allclose(model.forward(x, hooks={"blocks.1.attn.hook_result": zero_head}),
                    model.forward(x, hooks=ablate_heads([(1, 0)])), rtol=0, atol=1e-12)


def test_replaying_patterns_through_hook_pattern_is_replay(model):
    _, other = model.run_with_cache(tokens(seed=1))
    patterns = {k: v for k, v in other.items() if k.endswith("hook_pattern")}
    x = tokens(seed=2)
    hooked = model.forward(x, hooks={k: lambda a, name: patterns[name] for k in patterns})
    assert_array_equal(hooked, model.forward(x, hooks=replay(patterns, list(patterns))))
    assert np.abs(hooked - model.forward(x)).max() > 1e-3      # another run's patterns


def test_replacing_the_scores_is_replaying_the_patterns_they_make(model):
    _, other = model.run_with_cache(tokens(seed=1))
    x = tokens(seed=2)
    hooks = {f"blocks.{l}.attn.hook_attn_scores": lambda a, name: other[name] for l in (0, 1)}
    patterns = {f"blocks.{l}.attn.hook_pattern": other[f"blocks.{l}.attn.hook_pattern"]
                for l in (0, 1)}
    assert_allclose(model.forward(x, hooks=hooks), model.forward(x, hooks=replay(patterns, list(patterns))),
                    rtol=0, atol=1e-12)


def test_a_copy_as_replacement_changes_nothing_anywhere(model):
    """Every hook point's replacement path (softmax of new scores, z of a new pattern, the
    sum of new head results, ...) computes the same function as the plain forward."""
    x = tokens()
    plain = model.forward(x)
    for name in model.hook_names():
        assert_allclose(model.forward(x, hooks={name: lambda a, name: a.copy()}), plain,
                        rtol=0, atol=1e-12, err_msg=name)


def test_every_replacement_changes_the_rest_of_the_forward(model):
    x = tokens()
    plain, clean = model.run_with_cache(x)
    rng = np.random.default_rng(0)
    for name in model.hook_names():
        noise = rng.normal(size=clean[name].shape)
        logits, cache = model.run_with_cache(x, hooks={name: lambda a, name: a + 0.5 * noise})
        assert np.abs(logits - plain).max() > 1e-4, name
        assert_array_equal(cache[name], clean[name] + 0.5 * noise, err_msg=name)  # recorded as it flowed on
        earlier = model.hook_names()[:model.hook_names().index(name)]
        for before in earlier:   # nothing upstream moved
            assert_array_equal(cache[before], clean[before], err_msg=f"{before} after {name}")


def test_a_new_residual_stream_is_what_the_next_layer_reads():
    model = model_of(CONFIGS["attn-only"])
    _, other = model.run_with_cache(tokens(seed=1))
    x = tokens(seed=2)
    resid = other["blocks.0.hook_resid_post"]
    _, cache = model.run_with_cache(x, hooks={"blocks.0.hook_resid_post": lambda a, name: resid})
    assert_array_equal(cache["blocks.1.hook_resid_pre"], resid)
    assert_allclose(cache["blocks.1.hook_resid_post"], other["blocks.1.hook_resid_post"], atol=1e-12)


def test_hooks_and_per_token_loss_and_reading_hooks_with_gradients(model):
    x = tokens()
    zero = {"blocks.0.attn.hook_z": lambda z, name: np.zeros_like(z)}
    assert_allclose(model.per_token_loss(x, hooks=zero),
                    model.per_token_loss(x, hooks=ablate_heads([(0, 0), (0, 1)])), atol=1e-12)
    seen = []
    loss, grads = model.loss_and_grads(x, hooks={"blocks.1.hook_resid_post":
                                                 lambda a, name: seen.append(name)})
    expected_loss, expected = model.loss_and_grads(x)
    assert seen == ["blocks.1.hook_resid_post"] and loss == expected_loss
    for key in expected:
        assert_array_equal(grads[key], expected[key], err_msg=key)


def test_gradients_of_a_changed_forward_are_refused(model):
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.hook_z replaced .* backward"):
        model.loss_and_grads(tokens(), hooks={"blocks.0.attn.hook_z":
                                              lambda z, name: np.zeros_like(z)})


@pytest.mark.parametrize("hooks, message", [
    ({"blocks.7.hook_resid_post": lambda a, name: None}, r"'blocks\.7\.hook_resid_post' is not a hook point"),
    ({"blocks.0.attn.hook_z": "zero"}, r"blocks\.0\.attn\.hook_z: 'zero' is not a function"),
    ({"blocks.0.attn.hook_z": lambda z, name: z[:, :, :1]},
     r"hook blocks\.0\.attn\.hook_z: returned shape \(3, 10, 1, 4\), expected \(3, 10, 2, 4\)"),
    ({"blocks.1.attn.hook_pattern": lambda a, name: "a pattern"},
     r"hook blocks\.1\.attn\.hook_pattern: returned str"),
])
def test_bad_hooks_are_one_line_errors_naming_the_hook(hooks, message):
    model = model_of(CONFIGS["attn-only"])
    with pytest.raises(ValueError, match=message) as error:
        model.forward(tokens(), hooks=hooks)
    assert "\n" not in str(error.value)


def test_a_hook_that_edits_its_argument_in_place_fails_instead_of_changing_the_forward():
    def zero_in_place(z, name):
        z[:] = 0.0
    with pytest.raises(ValueError, match="read-only"):
        model_of(CONFIGS["attn-only"]).forward(tokens(), hooks={"blocks.0.attn.hook_z": zero_in_place})


def test_queries_of_a_replayed_layer_are_never_reached():
    model = model_of(CONFIGS["attn-only"])
    _, cache = model.run_with_cache(tokens())
    with pytest.raises(ValueError, match=r"blocks\.1\.attn\.hook_q is never reached"):
        model.forward(tokens(), hooks=combine(replay(cache, ["blocks.1.attn.hook_pattern"]),
                                              {"blocks.1.attn.hook_q": lambda a, name: None}))


def test_the_smeared_key_op_pair_is_the_models_to_choose():
    from minitransformer import ops
    calls = []

    def forward(k, alpha):
        calls.append("forward")
        return ops.smear_forward(k, alpha)

    def backward(dk, cache):
        calls.append("backward")
        return ops.smear_backward(dk, cache)
    config = CONFIGS["mlp, smeared, standard positions"]
    loss, grads = model_of(config).loss_and_grads(tokens())
    traced = Model(model_of(config).config, params=model_of(config).params, dtype=np.float64,
                   smear=(forward, backward))
    assert traced.loss_and_grads(tokens())[0] == loss
    assert calls == ["forward", "forward", "backward", "backward"]   # two layers


def test_record_keeps_what_run_with_cache_records_and_changes_nothing(model):
    from minitransformer.interventions import record
    x = tokens()
    logits, cache = model.run_with_cache(x)
    names = ["blocks.0.attn.hook_pattern", "blocks.1.hook_resid_post"]
    kept = {}
    assert_array_equal(model.forward(x, hooks=record(names, kept)), logits)
    assert list(kept) == names
    for name in names:
        assert_array_equal(kept[name], cache[name], err_msg=name)
