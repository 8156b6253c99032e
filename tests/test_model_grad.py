"""The whole model's gradient against finite differences, for every combination the engine
supports: 1 and 2 layers x attention-only or MLPs x LayerNorm or none x each positional
type x smeared key on and off (48 models). float64, a random upstream gradient on the logits."""
import itertools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from minitransformer import Model
from minitransformer.interventions import ablate_heads, combine, replay
from gradcheck import assert_grad_close, numerical_grad

COMBOS = list(itertools.product((1, 2), (True, False), ("LN", None),
                                ("shortformer", "standard", "none"), (False, True)))
EXAMPLES = max(1, settings().max_examples // 4)   # 48 combos: a quarter of the profile each


def tiny_model(n_layers, attn_only, norm, pos, smeared, seed):
    cfg = dict(n_layers=n_layers, d_model=6, n_heads=2, d_head=3, n_ctx=5, d_vocab=5,
               attn_only=attn_only, d_mlp=7, normalization_type=norm,
               positional_embedding_type=pos, smeared_key=smeared, initializer_range=0.5)
    model = Model(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 1)
    for name, value in model.params.items():   # biases, LN gains and alpha away from 0 and 1
        if not name.rsplit(".", 1)[1].startswith("W_"):
            value[...] = rng.uniform(-1, 1, value.shape) + (1.0 if name.endswith(".w") else 0.0)
    return model


@pytest.mark.parametrize("n_layers,attn_only,norm,pos,smeared", COMBOS)
@settings(max_examples=EXAMPLES)
@given(seed=st.integers(0, 2**31))
def test_model_backward_matches_finite_differences(n_layers, attn_only, norm, pos, smeared, seed):
    model = tiny_model(n_layers, attn_only, norm, pos, smeared, seed)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 5, (2, 5))
    dlogits = rng.uniform(-1, 1, (2, 5, 5))
    grads = model.backward(dlogits, model.forward_train(tokens)[1])
    assert set(grads) == set(model.params)
    for name, param in model.params.items():
        numeric = numerical_grad(lambda: model.forward_train(tokens)[0], param, dlogits)
        assert_grad_close(grads[name], numeric, name)


@settings(max_examples=EXAMPLES)
@given(seed=st.integers(0, 2**31), smeared=st.booleans())
def test_loss_gradient_matches_finite_differences(seed, smeared):
    model = tiny_model(2, False, "LN", "shortformer", smeared, seed)
    tokens = np.random.default_rng(seed).integers(0, 5, (3, 5))
    loss, grads = model.loss_and_grads(tokens)
    assert np.isclose(loss, model.per_token_loss(tokens).mean())
    for name, param in model.params.items():
        numeric = numerical_grad(lambda: model.loss_and_grads(tokens)[0], param, 1.0)
        assert_grad_close(grads[name], numeric, name)


@settings(max_examples=EXAMPLES)
@given(seed=st.integers(0, 2**31))
def test_gradient_through_interventions(seed):
    """Ablated heads and replayed patterns (interventions) are part of the graph too: ablated heads get no
    gradient into W_O, replayed layers none into W_Q/W_K."""
    model = tiny_model(2, True, None, "shortformer", False, seed)
    rng = np.random.default_rng(seed)
    tokens, dlogits = rng.integers(0, 5, (2, 5)), rng.uniform(-1, 1, (2, 5, 5))
    _, recorded = model.run_with_cache(rng.integers(0, 5, (2, 5)))
    hooks = combine(ablate_heads([(0, 1)]), replay(recorded, ["blocks.1.attn.hook_pattern"]))
    grads = model.backward(dlogits, model.forward_train(tokens, hooks)[1])
    assert np.all(grads["blocks.0.attn.W_O"][1] == 0) and np.all(grads["blocks.1.attn.W_Q"] == 0)
    for name, param in model.params.items():
        numeric = numerical_grad(lambda: model.forward_train(tokens, hooks)[0], param, dlogits)
        assert_grad_close(grads[name], numeric, name)
