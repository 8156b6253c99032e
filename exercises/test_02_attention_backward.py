"""Exercise 02: one causal attention head's backward, against finite differences and the
engine's attention_backward, and on two probes whose answer is known by construction: a head
whose values are all the same (its pattern cannot change the output, so dW_Q and dW_K are 0)
and a loss at the last position only (it reaches every key and value, but one query). A
failure names the gradient, where it differs and, where it can tell, the step of the backward
that is wrong and what is probably missing; never the formula.

Every size differs (7 positions, d_model 10, d_head 4), so that a missing transpose is an
error or a wrong number, never a right one by luck. With fewer positions than d_model (x of
full rank), the per-position gradients dq, dk, dv can be read back from dW_Q, dW_K, dW_V, and
the probes look at them position by position.

For the teacher: minitransformer.ops.attention's attention_backward (and in it
attend_backward and softmax_backward), which the checks compare with, hold this exercise's
answer; the checks here hold no copy of it."""
import numpy as np
import pytest

from exercises.common import finite_differences
from exercises.harness import check_close, check_shape, fail, load
from minitransformer.ops.attention import attend_forward, attention_backward, attention_forward

ex = load("ex02_attention_backward")

T, D, E = 7, 10, 4
NAMES = ("x", "W_Q", "W_K", "W_V", "W_O")        # the order of the returned gradients
ORDER = ("W_O", "W_V", "W_Q", "W_K", "x")        # the backward's order: the first wrong is named
SHAPES = {"x": (T, D), "W_Q": (D, E), "W_K": (D, E), "W_V": (D, E), "W_O": (E, D)}
SIZES = f"T {T}, d_model {D}, d_head {E}"
STEP = {"W_O": "the first step, back through out = z W_O",
        "W_V": "the step back through z = pattern v, to the values",
        "W_Q": "the steps back through the softmax and scores = q k^T / sqrt(E), to the queries",
        "W_K": "the steps back through the softmax and scores = q k^T / sqrt(E), to the keys",
        "x": "the last step, back through q = x W_Q, k = x W_K, v = x W_V"}
ROUTE = {"W_Q": "queries", "W_K": "keys", "W_V": "values"}


def case(seed, sizes=(T, D, E)):
    t, d, e = sizes
    rng = np.random.default_rng(seed)
    shapes = {"x": (t, d), "W_Q": (d, e), "W_K": (d, e), "W_V": (d, e), "W_O": (e, d)}
    return {n: rng.normal(size=s) for n, s in shapes.items()}, rng.normal(size=(t, d))


def gradients(inputs, dout):
    """The student's gradients {name: array}; an error from shapes that do not chain, or a
    wrong number of gradients, is named."""
    t, d = inputs["x"].shape
    e = inputs["W_Q"].shape[1]
    _, cache = ex.attention_head_forward(*inputs.values())
    try:
        grads = ex.attention_head_backward(dout, cache)
    except ValueError as error:
        if not any(word in str(error) for word in ("mismatch", "shapes", "broadcast",
                                                    "operand", "aligned")):
            raise
        fail(f"attention_head_backward raised ValueError ({error}) with T {t}, d_model {d}, "
             f"d_head {e}: two factors whose shapes do not chain. Is a transpose missing or "
             f"misplaced? Each gradient has the shape of what it is the gradient of: dz, dq, "
             f"dk, dv ({t}, {e}), dpattern and dscores ({t}, {t}), dx ({t}, {d})")
    if not isinstance(grads, (tuple, list)) or len(grads) != 5:
        fail(f"attention_head_backward should return 5 gradients, dx, dW_Q, dW_K, dW_V, dW_O "
             f"in that order; it returned {type(grads).__name__}"
             + (f" of {len(grads)}" if isinstance(grads, (tuple, list)) else ""))
    grads = dict(zip(NAMES, (np.asarray(g, dtype=np.float64) for g in grads)))
    named = {"x": "(T, d_model)", "W_O": "(d_head, d_model)"}
    for name in ORDER:
        shape, yours = inputs[name].shape, grads[name].shape
        hint = f"d{name} has {name}'s shape {named.get(name, '(d_model, d_head)')}"
        if yours == shape[::-1]:
            hint += ": yours is its transpose"
        elif yours in [inputs[other].shape for other in NAMES]:
            hint += "; are the gradients returned in the order dx, dW_Q, dW_K, dW_V, dW_O?"
        check_shape(f"d{name}", grads[name], shape, hint)
    return grads


def engine_gradients(inputs, dout):
    """The engine's gradients, one head and a batch of one (no biases)."""
    x, W_Q, W_K, W_V, W_O = inputs.values()
    zeros = np.zeros((1, W_Q.shape[1]))
    _, cache = attention_forward(x[None], x[None], W_Q[None], zeros, W_K[None], zeros,
                                 W_V[None], zeros, W_O[None], np.zeros(x.shape[1]))
    dqk, dv_in, grads = attention_backward(dout[None].copy(), cache)
    return {"x": (dqk + dv_in)[0], "W_Q": grads["W_Q"][0], "W_K": grads["W_K"][0],
            "W_V": grads["W_V"][0], "W_O": grads["W_O"][0]}


def per_position(x, dW):
    """A weight's gradient read back as the gradient of its output (T, E), one row per
    position (x (T, D) of rank T < D)."""
    return np.linalg.lstsq(x.T, dW, rcond=None)[0]


def factor(yours, expected):
    """c if yours = c * expected (c != 1), else None."""
    size = np.abs(expected).max()
    if size == 0:
        return None
    c = float((yours * expected).sum() / (expected * expected).sum())
    if abs(c - 1) > 1e-6 and np.allclose(yours, c * expected, rtol=1e-6, atol=1e-9 * size):
        return c
    return None


def scale_mistake(name, c, e, d):
    """What a constant factor c on dW_Q or dW_K says (e: d_head, d: d_model)."""
    for value, says in [(np.sqrt(e), "lacks the 1/sqrt(d_head) that the scores carry"),
                        (np.sqrt(e / d), "is scaled by 1/sqrt(d_model); the scores' scale is "
                                         "1/sqrt(d_head)"),
                        (1 / np.sqrt(e), "has the scores' 1/sqrt(d_head) twice"),
                        (-1.0, "has the wrong sign")]:
        if abs(c - value) < 1e-6 * abs(value):
            return f"d{name} {says}"
    return f"d{name} is {c:.4g} times the right one: a constant factor too many or missing"


# ---- the probes: answers known by construction -------------------------------------------

def same_values_case(seed=11):
    """x whose feature 0 is 1 at every position, W_V reading that feature alone: every
    position's value is the same, so z = v whatever the pattern."""
    inputs, dout = case(seed)
    inputs["x"][:, 0] = 1.0
    inputs["W_V"][1:] = 0.0
    return inputs, dout


def last_position_case(seed=12):
    """A loss at the last position only."""
    inputs, dout = case(seed)
    dout[:-1] = 0.0
    return inputs, dout


def first_position_case(seed=3):
    """A loss at position 0 only."""
    inputs, dout = case(seed)
    dout[1:] = 0.0
    return inputs, dout


def row_term_problem():
    """What the same-values probe says (None: nothing wrong there)."""
    inputs, dout = same_values_case()
    grads = gradients(inputs, dout)
    typical = np.abs(engine_gradients(*case(11))["W_Q"]).max()
    worst = max(("W_Q", "W_K"), key=lambda n: np.abs(grads[n]).max())
    size = np.abs(grads[worst]).max()
    if size <= 1e-9 * typical:
        return None
    return (f"where every position's value is the same (x's feature 0 is 1 everywhere and "
            f"W_V reads only it), the pattern cannot change the output, so dW_Q and dW_K must "
            f"be 0; your d{worst} reaches {size:.3g}. The softmax's backward must give nothing "
            f"to a change that raises every score of a row alike (softmax ignores it): its "
            f"term shared by the whole row is missing, or not taken along each row (over the "
            f"keys, the last axis, kept as a column)")


def position_problem():
    """What the last-position probe says (None: nothing wrong there)."""
    inputs, dout = last_position_case()
    grads, right = gradients(inputs, dout), engine_gradients(inputs, dout)
    x = inputs["x"]
    for name in ("W_V", "W_K", "W_Q"):
        yours, expected = per_position(x, grads[name]), per_position(x, right[name])
        size = np.abs(expected).max()
        early = np.abs(yours[:-1]).max(-1) > 1e-6 * size
        needed = np.abs(expected[:-1]).max(-1) > 1e-6 * size
        if name == "W_Q" and early.any():
            where = [int(i) for i in np.flatnonzero(early)]
            return (f"with a loss at the last position only, your dW_Q takes gradient from the "
                    f"queries of earlier positions {where}; only the last query's scores reach "
                    f"that loss (a query's scores change its own position's output only). Is "
                    f"the scores' gradient transposed on the way to dq?")
        if name != "W_Q" and needed.any() and not early.any():
            what = {"W_V": ("value", "attends to every position", "attends to it",
                            "the pattern"),
                    "W_K": ("key", "scores every key", "scores it", "the scores' gradient")}[name]
            return (f"with a loss at the last position only, your d{name} comes from the last "
                    f"{what[0]} alone; but the last query {what[1]}, so every {what[0]} gets a "
                    f"gradient, from each query that {what[2]}. Is {what[3]}'s transpose "
                    f"missing on the way to d{what[0][0]}?")
    return None


def route_problem(inputs, dout, yours):
    """Which of x's three routes yours lacks, if that is what is wrong with dx."""
    x = inputs["x"]

    def reading(route):          # the forward with x read only by `route`, the others fixed
        def forward(x_):
            reads = {r: (x_ if r == route else x) for r in ("queries", "keys", "values")}
            q = reads["queries"] @ inputs["W_Q"]
            k = reads["keys"] @ inputs["W_K"]
            v = reads["values"] @ inputs["W_V"]
            _, z = attend_forward(q[None].copy(), k[None].copy(), v[None].copy())
            return z[0] @ inputs["W_O"]
        return finite_differences(forward, x.copy(), dout)

    routes = {route: reading(route) for route in ("queries", "keys", "values")}
    total = sum(routes.values())
    size = np.abs(total).max()
    for route, part in routes.items():
        if np.allclose(yours, total - part, rtol=1e-5, atol=1e-7 * size):
            return (f"dx lacks the route through the {route}: x is read three times, by q, k "
                    f"and v, and each reading sends a gradient back to x")
    return None


def explain(name, inputs, dout, yours, expected):
    """Where the first wrong gradient (in the backward's order) goes wrong, and what is
    probably missing, in words."""
    where = f"the first wrong one in the backward's order: {STEP[name]}"
    e, d = inputs["W_Q"].shape[1], inputs["x"].shape[1]
    if name in ("W_Q", "W_K"):
        c = factor(yours, expected)
        if c is not None:
            return f"{where}; {scale_mistake(name, c, e, d)}"
        other = "W_K" if name == "W_Q" else "W_Q"
        swapped = engine_gradients(inputs, dout)[other]
        if np.allclose(yours, swapped, rtol=1e-6, atol=1e-9):
            return f"{where}; d{name} holds what d{other} should: are dq and dk swapped?"
    if name in ("W_V", "W_Q", "W_K"):
        said = row_term_problem() if name != "W_V" else None
        said = said or position_problem()
        if said:
            return f"{where}; {said}"
    if name == "x":
        said = route_problem(inputs, dout, yours)
        if said:
            return f"{where}; {said}"
        return (f"{where}: dW_Q, dW_K and dW_V are right, so are dq, dk and dv; x is read "
                f"three times, and each reading goes back through its own weight")
    if name == "W_O":
        return f"{where}: it needs only z and dout"
    return where


def check_in_order(grads, expected, inputs, dout, against, **tolerance):
    for name in ORDER:
        if not np.allclose(grads[name], expected[name], **tolerance):
            hint = explain(name, inputs, dout, grads[name], expected[name])
            check_close(f"d{name}", grads[name], expected[name], against, hint=hint,
                        **tolerance)


# ---- the checks ---------------------------------------------------------------------------

@pytest.mark.checks("attention_head_backward")
@pytest.mark.parametrize("seed", range(3))
def test_every_gradient_matches_finite_differences(seed):
    inputs, dout = case(seed)
    grads = gradients(inputs, dout)
    numeric = {name: finite_differences(
        lambda _: ex.attention_head_forward(*inputs.values())[0], inputs[name], dout)
        for name in NAMES}
    check_in_order(grads, numeric, inputs, dout, "finite differences", rtol=1e-5, atol=1e-7)


@pytest.mark.checks("attention_head_backward")
def test_the_pattern_cannot_matter_when_every_value_is_the_same():
    said = row_term_problem()
    if said:
        fail(said)


@pytest.mark.checks("attention_head_backward")
def test_a_loss_at_the_last_position_reaches_every_key_and_value():
    said = position_problem()
    if said:
        fail(said)


@pytest.mark.checks("attention_head_backward")
def test_no_gradient_flows_from_the_future():
    """Causality: a loss on position 0 only cannot depend on later positions' x."""
    inputs, dout = first_position_case()
    grads = gradients(inputs, dout)
    later = np.abs(grads["x"][1:]).max(-1)
    if later.max() > 1e-12:
        x = inputs["x"]
        routes = [ROUTE[n] for n in ("W_Q", "W_K", "W_V")
                  if np.abs(per_position(x, grads[n])[1:]).max() > 1e-9]
        fail(f"your dx is non-zero at positions after 0 (first at position "
             f"{1 + int(np.argmax(later > 1e-12))}, {later.max():.3g}) although only position "
             f"0 has a gradient: position 0 attends only to itself, so later x cannot matter"
             + (f"; the gradient gets there through the {' and the '.join(routes)}. Are the "
                f"masked (future) entries taking part, or is the pattern (or the scores' "
                f"gradient) transposed?" if routes else
                "; are the masked (future) entries of the pattern taking part?"))


@pytest.mark.checks("attention_head_backward")
@pytest.mark.parametrize("sizes", [(T, D, E), (9, 6, 5)], ids=["T7-D10-E4", "T9-D6-E5"])
def test_agrees_with_the_engine(sizes):
    inputs, dout = case(4, sizes)
    grads = gradients(inputs, dout)
    expected = engine_gradients(inputs, dout)
    check_in_order(grads, expected, inputs, dout, "minitransformer.ops.attention_backward",
                   rtol=1e-7, atol=1e-10)
