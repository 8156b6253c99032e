"""Exercise 02: one causal attention head's backward, against finite differences and the
engine's multi-head attention_backward."""
import numpy as np
import pytest

from exercises.common import finite_differences
from exercises.harness import check_close, load
from minitransformer.ops.attention import attention_backward, attention_forward

ex = load("ex02_attention_backward")
NAMES = ("x", "W_Q", "W_K", "W_V", "W_O")      # the order of the returned gradients
CHECK_ORDER = ("W_O", "W_V", "W_Q", "W_K", "x")  # the backward's order: names the first wrong one


def case(seed, T=5, D=6, E=3):
    rng = np.random.default_rng(seed)
    shapes = {"x": (T, D), "W_Q": (D, E), "W_K": (D, E), "W_V": (D, E), "W_O": (E, D)}
    return {n: rng.normal(size=s) for n, s in shapes.items()}, rng.normal(size=(T, D))


def mistakes(dout, cache):
    """{explanation: the gradients (by name) that mistake gives}."""
    x, W_Q, W_K, W_V, W_O, q, k, v, pattern, z = cache
    dz = dout @ W_O.T
    dv, dpattern = pattern.T @ dz, dz @ v.T
    right = pattern * (dpattern - (dpattern * pattern).sum(-1, keepdims=True))

    def grads(dscores=right, scale=q.shape[1] ** -0.5, dk_from=None, paths=(1, 1, 1)):
        dq = dscores @ k * scale
        dk = (dscores.T if dk_from is None else dk_from) @ q * scale
        dx = paths[0] * dq @ W_Q.T + paths[1] * dk @ W_K.T + paths[2] * dv @ W_V.T
        return {"x": dx, "W_Q": x.T @ dq, "W_K": x.T @ dk}
    return {"the softmax backward lacks the row term: ds_ij = p_ij (dp_ij - sum_k dp_ik p_ik)":
            grads(dscores=pattern * dpattern),
            "dq and dk lack the 1/sqrt(d_head) of the scores": grads(scale=1.0),
            "dk needs the transpose: scores = q k^T, so dk = dscores^T q (times the scale)":
            grads(dk_from=right),
            "dx misses the path through the queries (x is read by q, k and v: three terms)":
            grads(paths=(0, 1, 1)),
            "dx misses the path through the keys (x is read by q, k and v: three terms)":
            grads(paths=(1, 0, 1)),
            "dx misses the path through the values (x is read by q, k and v: three terms)":
            grads(paths=(1, 1, 0))}


@pytest.mark.checks("attention_head_backward")
@pytest.mark.parametrize("seed", range(3))
def test_every_gradient_matches_finite_differences(seed):
    inputs, dout = case(seed)
    _, cache = ex.attention_head_forward(*inputs.values())
    grads = dict(zip(NAMES, ex.attention_head_backward(dout, cache)))
    known = mistakes(dout, cache)
    for name in CHECK_ORDER:
        numeric = finite_differences(lambda _: ex.attention_head_forward(*inputs.values())[0],
                                     inputs[name], dout)
        check_close(f"d{name}", grads[name], numeric, "finite differences", atol=1e-7,
                    mistakes={e: g[name] for e, g in known.items() if name in g})


@pytest.mark.checks("attention_head_backward")
def test_no_gradient_flows_from_the_future():
    """Causality: a loss on position 0 only cannot depend on later positions' x."""
    inputs, dout = case(3)
    dout[1:] = 0.0
    _, cache = ex.attention_head_forward(*inputs.values())
    dx = ex.attention_head_backward(dout, cache)[0]
    if np.abs(dx[1:]).max() > 1e-12:
        pytest.fail("your dx is non-zero at positions after 0 although only position 0 has a "
                    "gradient: position 0 attends only to itself, so later x cannot matter; "
                    "are the masked (future) entries of the pattern taking part?", pytrace=False)


@pytest.mark.checks("attention_head_backward")
def test_agrees_with_the_engine():
    inputs, dout = case(4, T=7, D=8, E=4)
    x, W_Q, W_K, W_V, W_O = inputs.values()
    zeros = np.zeros((1, W_Q.shape[1]))
    _, engine_cache = attention_forward(x[None], x[None], W_Q[None], zeros, W_K[None], zeros,
                                        W_V[None], zeros, W_O[None], np.zeros(x.shape[1]))
    dqk, dv_in, grads = attention_backward(dout[None], engine_cache)
    expected = {"x": (dqk + dv_in)[0], "W_Q": grads["W_Q"][0], "W_K": grads["W_K"][0],
                "W_V": grads["W_V"][0], "W_O": grads["W_O"][0]}
    _, cache = ex.attention_head_forward(*inputs.values())
    for name, yours in zip(NAMES, ex.attention_head_backward(dout, cache)):
        check_close(f"d{name}", yours, expected[name], "minitransformer.ops.attention_backward")
