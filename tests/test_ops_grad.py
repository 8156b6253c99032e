"""Every op's backward against central finite differences: float64, random upstream
gradients, bounded inputs, ill-conditioned draws rejected with assume."""
import math

import numpy as np
from hypothesis import assume, given, strategies as st

from minitransformer import ops
from minitransformer.hooks import HookPoints
from minitransformer.interventions import HeadScale, Replay
from gradcheck import assert_grad_close, numerical_grad

seeds = st.integers(0, 2**32 - 1)
small = st.integers(1, 4)


def rand(rng, *shape, scale=1.0):
    return rng.uniform(-scale, scale, size=shape)


@given(seed=seeds, B=small, T=small, D=st.integers(2, 6))
def test_layernorm_backward(seed, B, T, D):
    rng = np.random.default_rng(seed)
    x, w, b, dout = rand(rng, B, T, D), rand(rng, D), rand(rng, D), rand(rng, B, T, D)
    assume((x.std(-1) > 0.1).all())     # LN of a near-constant row is ill-conditioned
    out, cache = ops.layernorm_forward(x, w, b)
    dx, dw, db = ops.layernorm_backward(dout, cache)
    f = lambda: ops.layernorm_forward(x, w, b)[0]
    assert_grad_close(dx, numerical_grad(f, x, dout), "dx")
    assert_grad_close(dw, numerical_grad(f, w, dout), "dw")
    assert_grad_close(db, numerical_grad(f, b, dout), "db")


@given(seed=seeds, B=small, T=small, I=small, O=small)
def test_linear_backward(seed, B, T, I, O):
    rng = np.random.default_rng(seed)
    x, W, b, dout = rand(rng, B, T, I), rand(rng, I, O), rand(rng, O), rand(rng, B, T, O)
    dx, dW, db = ops.linear_backward(dout, ops.linear_forward(x, W, b)[1])
    f = lambda: ops.linear_forward(x, W, b)[0]
    for name, analytic, wrt in (("dx", dx, x), ("dW", dW, W), ("db", db, b)):
        assert_grad_close(analytic, numerical_grad(f, wrt, dout), name)


@given(seed=seeds, act=st.sampled_from(["gelu_new", "relu"]), B=small, T=small, D=small, M=small)
def test_mlp_backward(seed, act, B, T, D, M):
    rng = np.random.default_rng(seed)
    x, dout = rand(rng, B, T, D, scale=2), rand(rng, B, T, D)
    W_in, b_in, W_out, b_out = rand(rng, D, M), rand(rng, M), rand(rng, M, D), rand(rng, D)
    pre = x @ W_in + b_in
    assume(act != "relu" or (np.abs(pre) > 1e-3).all())   # relu's kink is not differentiable
    _, cache = ops.mlp_forward(x, W_in, b_in, W_out, b_out, act)
    grads = ops.mlp_backward(dout, cache)
    f = lambda: ops.mlp_forward(x, W_in, b_in, W_out, b_out, act)[0]
    for name, analytic, wrt in zip(("dx", "dW_in", "db_in", "dW_out", "db_out"), grads,
                                   (x, W_in, b_in, W_out, b_out)):
        assert_grad_close(analytic, numerical_grad(f, wrt, dout), name)


@given(seed=seeds, dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 300))
def test_gelu_new_in_place_is_the_formula_to_the_bit(seed, dtype, n):
    x = rand(np.random.default_rng(seed), n, scale=6).astype(dtype)
    t = np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x))   # Python floats: x keeps its dtype
    out, (_, cached) = ops.gelu_new_forward(x)
    assert out.dtype == dtype and np.array_equal(cached, t)
    assert np.array_equal(out, 0.5 * x * (1.0 + t))


@given(seed=seeds, B=small, T=small, V=st.integers(2, 7), D=small)
def test_embed_backward(seed, B, T, V, D):
    rng = np.random.default_rng(seed)
    tokens, W_E, dout = rng.integers(0, V, (B, T)), rand(rng, V, D), rand(rng, B, T, D)
    dW_E = ops.embed_backward(dout, ops.embed_forward(tokens, W_E)[1])
    assert_grad_close(dW_E, numerical_grad(lambda: ops.embed_forward(tokens, W_E)[0], W_E, dout))


@given(seed=seeds, B=small, T=st.integers(1, 6))
def test_causal_softmax_backward(seed, B, T):
    rng = np.random.default_rng(seed)
    scores, dpattern = rand(rng, B, 2, T, T, scale=3), rand(rng, B, 2, T, T)
    pattern = ops.softmax_forward(scores.copy())
    assert np.allclose(pattern.sum(-1), 1) and np.all(np.triu(pattern[0, 0], 1) == 0)
    dscores = ops.softmax_backward(dpattern.copy(), pattern)
    numeric = numerical_grad(lambda: ops.softmax_forward(scores.copy()), scores, dpattern)
    assert_grad_close(np.tril(dscores), np.tril(numeric))   # above the diagonal: masked, -inf


@given(seed=seeds, B=small, H=small, T=small, E=small)
def test_smear_backward(seed, B, H, T, E):
    rng = np.random.default_rng(seed)
    k, alpha, dout = rand(rng, B, H, T, E), rand(rng, H, scale=3), rand(rng, B, H, T, E)
    smeared, cache = ops.smear_forward(k, alpha)
    assert np.allclose(smeared[:, :, 0], k[:, :, 0])     # the first position is unchanged
    dk, dalpha = ops.smear_backward(dout, cache)
    f = lambda: ops.smear_forward(k, alpha)[0]
    assert_grad_close(dk, numerical_grad(f, k, dout), "dk")
    assert_grad_close(dalpha, numerical_grad(f, alpha, dout), "dalpha")


attention_options = st.sampled_from(["plain", "smeared", "masked", "batch-masked", "replayed",
                                     "z replayed"])


@given(seed=seeds, option=attention_options, B=small, T=st.integers(1, 5), H=st.integers(1, 3),
       E=st.integers(1, 4), D=st.integers(2, 5))
def test_attention_backward(seed, option, B, T, H, E, D):
    rng = np.random.default_rng(seed)
    qk_in, v_in, dout = rand(rng, B, T, D), rand(rng, B, T, D), rand(rng, B, T, D)
    w = dict(W_Q=rand(rng, H, D, E), b_Q=rand(rng, H, E), W_K=rand(rng, H, D, E),
             b_K=rand(rng, H, E), W_V=rand(rng, H, D, E), b_V=rand(rng, H, E),
             W_O=rand(rng, H, E, D), b_O=rand(rng, D))
    hooks = {"masked": {"hook_z": HeadScale(rng.integers(0, 2, H).astype(float))},
             "batch-masked": {"hook_z": HeadScale(rand(rng, B, H))},
             "replayed": {"hook_pattern": Replay(ops.softmax_forward(rand(rng, B, H, T, T, scale=2)))},
             "z replayed": {"hook_z": [Replay(rand(rng, B, T, H, E)), HeadScale(rand(rng, H))]}}
    extra = dict(alpha=rand(rng, H, scale=2)) if option == "smeared" else \
        dict(hook=HookPoints(hooks.get(option, {})))
    f = lambda: ops.attention_forward(qk_in, v_in, **w, **extra)[0]
    dqk, dv, grads = ops.attention_backward(dout, ops.attention_forward(qk_in, v_in, **w, **extra)[1])
    assert_grad_close(dv, numerical_grad(f, v_in, dout), "dv_input")
    if option in ("replayed", "z replayed"):
        assert dqk is None
        assert np.allclose(numerical_grad(f, qk_in, dout), 0)
    else:
        assert_grad_close(dqk, numerical_grad(f, qk_in, dout), "dqk_input")
    wrt = dict(w, **{k: v for k, v in extra.items() if k == "alpha"})
    for name, analytic in grads.items():
        assert_grad_close(analytic, numerical_grad(f, wrt[name], dout), name)


@given(seed=seeds, B=small, T=st.integers(2, 5), V=st.integers(2, 7))
def test_cross_entropy_backward(seed, B, T, V):
    rng = np.random.default_rng(seed)
    logits, tokens = rand(rng, B, T, V, scale=4), rng.integers(0, V, (B, T))
    dloss = rng.uniform(0.5, 2.0)          # a random upstream gradient for the scalar loss
    loss, cache = ops.cross_entropy_forward(logits, tokens)
    manual = -np.mean([np.log(np.exp(logits[b, t]) / np.exp(logits[b, t]).sum())[tokens[b, t + 1]]
                       for b in range(B) for t in range(T - 1)])
    assert np.isclose(loss, manual)
    f = lambda: ops.cross_entropy_forward(logits, tokens)[0]
    assert_grad_close(ops.cross_entropy_backward(dloss, cache), numerical_grad(f, logits, dloss))
