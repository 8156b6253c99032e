"""Exercise 02's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference attention_head_backward with one thing wrong; the exercise's own
checks (exercises/test_02_attention_backward.py) are run on it and must fail with a message
that names the problem (and the gradient, and where), never the formula. The mistaken
variants are near copies of the solution, which the students' tests must not hold: they
live here."""
import numpy as np
import pytest

import exercises.test_02_attention_backward as checks
from exercises.solutions import ex02_attention_backward as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def backward(row_term="right", scale="sqrt d_head", dq_from="rows", dk_from="columns",
             dv_from="columns", routes=("queries", "keys", "values"), dW_Q_from="x^T dq",
             dW_O="z^T dout", order=("x", "W_Q", "W_K", "W_V", "W_O")):
    """attention_head_backward with one step done otherwise."""
    def attention_head_backward(dout, cache):
        x, W_Q, W_K, W_V, W_O, q, k, v, pattern, z = cache
        dW_O_ = z.T @ dout if dW_O == "z^T dout" else dout.T @ z
        dz = dout @ W_O.T
        dpattern = dz @ v.T
        dv = pattern.T @ dz if dv_from == "columns" else pattern @ dz
        if row_term == "right":
            dscores = pattern * (dpattern - (dpattern * pattern).sum(-1, keepdims=True))
        elif row_term == "none":
            dscores = pattern * dpattern
        elif row_term == "axis 0":
            dscores = pattern * (dpattern - (dpattern * pattern).sum(0, keepdims=True))
        elif row_term == "no keepdims":
            dscores = pattern * (dpattern - (dpattern * pattern).sum(-1))
        E, D = q.shape[1], x.shape[1]
        c = {"sqrt d_head": E ** -0.5, "none": 1.0, "sqrt d_model": D ** -0.5,
             "twice": 1.0 / E}[scale]
        dq = (dscores @ k if dq_from == "rows" else dscores.T @ k) * c
        dk = (dscores.T @ q if dk_from == "columns" else dscores @ q) * c
        parts = {"queries": dq @ W_Q.T, "keys": dk @ W_K.T, "values": dv @ W_V.T}
        dx = sum(parts[r] for r in routes)
        dW_Q_ = x.T @ dq if dW_Q_from == "x^T dq" else x @ dq
        grads = {"x": dx, "W_Q": dW_Q_, "W_K": x.T @ dk, "W_V": x.T @ dv, "W_O": dW_O_}
        return tuple(grads[name] for name in order)
    return attention_head_backward


FD = checks.test_every_gradient_matches_finite_differences
ENGINE = checks.test_agrees_with_the_engine
SAME_VALUES = checks.test_the_pattern_cannot_matter_when_every_value_is_the_same
LAST = checks.test_a_loss_at_the_last_position_reaches_every_key_and_value
FUTURE = checks.test_no_gradient_flows_from_the_future


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for seed in range(3):
        FD(seed)
    SAME_VALUES()
    LAST()
    FUTURE()
    for sizes in [(7, 10, 4), (9, 6, 5)]:
        ENGINE(sizes)


def test_a_variant_written_otherwise_passes(monkeypatch):
    """The reference's parts, written with einsum and the row term as z . dz (as the engine
    does), pass."""
    def otherwise(dout, cache):
        x, W_Q, W_K, W_V, W_O, q, k, v, pattern, z = cache
        dz = np.einsum("td,ed->te", dout, W_O)
        dp = np.einsum("ie,je->ij", dz, v)
        ds = pattern * (dp - (dz * z).sum(-1)[:, None])
        dq = np.einsum("ij,je->ie", ds, k) / np.sqrt(q.shape[1])
        dk = np.einsum("ij,ie->je", ds, q) / np.sqrt(q.shape[1])
        dv = np.einsum("ij,ie->je", pattern, dz)
        dx = dq @ W_Q.T + dk @ W_K.T + dv @ W_V.T
        return dx, x.T @ dq, x.T @ dk, x.T @ dv, z.T @ dout
    monkeypatch.setattr(checks, "ex", with_mistake(attention_head_backward=otherwise))
    FD(0)
    SAME_VALUES()
    LAST()
    FUTURE()
    ENGINE((7, 10, 4))


ROW_TERM = ["the pattern cannot change the output", "dW_Q and dW_K must be 0",
            "term shared by the whole row is missing, or not taken along each row"]

MISTAKES = {
    "no row term": (backward(row_term="none"), ["dW_Q: yours differs", "at entry"] + ROW_TERM),
    "row term over the queries": (backward(row_term="axis 0"), ["dW_Q: yours differs"]
                                  + ROW_TERM),
    "row term without keepdims": (backward(row_term="no keepdims"), ["dW_Q: yours differs"]
                                  + ROW_TERM),
    "no scale": (backward(scale="none"), ["dW_Q", "lacks the 1/sqrt(d_head)"]),
    "d_model's scale": (backward(scale="sqrt d_model"), ["dW_Q", "1/sqrt(d_model)"]),
    "scale twice": (backward(scale="twice"), ["dW_Q", "twice"]),
    "dk untransposed": (backward(dk_from="rows"), ["dW_K: yours differs",
                                                   "from the last key alone",
                                                   "transpose missing on the way to dk"]),
    "dq transposed": (backward(dq_from="columns"), ["dW_Q: yours differs",
                                                    "queries of earlier positions",
                                                    "transposed on the way to dq"]),
    "dv untransposed": (backward(dv_from="rows"), ["dW_V: yours differs",
                                                   "from the last value alone",
                                                   "pattern's transpose missing"]),
    "no query route": (backward(routes=("keys", "values")), ["dx: yours differs",
                                                             "lacks the route through the "
                                                             "queries", "read three times"]),
    "no key route": (backward(routes=("queries", "values")), ["dx", "through the keys"]),
    "no value route": (backward(routes=("queries", "keys")), ["dx", "through the values"]),
    "dq and dk swapped": (backward(order=("x", "W_K", "W_Q", "W_V", "W_O")),
                          ["dW_Q: yours differs", "holds what dW_K should"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_named_against_finite_differences(monkeypatch, mistake):
    variant, says = MISTAKES[mistake]
    message = failure_of(monkeypatch, FD, 1, attention_head_backward=variant)
    for phrase in says:
        assert phrase in message, f"{mistake}: {phrase!r} not in: {message}"
    assert "first wrong one in the backward's order" in message, message


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_also_fails_against_the_engine(monkeypatch, mistake):
    variant, says = MISTAKES[mistake]
    message = failure_of(monkeypatch, ENGINE, (9, 6, 5), attention_head_backward=variant)
    assert "minitransformer.ops.attention_backward" in message and "at entry" in message, message


@pytest.mark.parametrize("mistake, test", [
    ("no row term", SAME_VALUES), ("row term over the queries", SAME_VALUES),
    ("row term without keepdims", SAME_VALUES), ("dk untransposed", LAST),
    ("dq transposed", LAST), ("dv untransposed", LAST)])
def test_the_probes_name_their_mistake_on_their_own(monkeypatch, mistake, test):
    variant, says = MISTAKES[mistake]
    message = failure_of(monkeypatch, test, attention_head_backward=variant)
    for phrase in says[2:] if mistake.startswith(("no row", "row")) else says[1:]:
        assert phrase in message, f"{mistake}: {phrase!r} not in: {message}"


def test_gradient_flowing_from_the_future_is_named(monkeypatch):
    message = failure_of(monkeypatch, FUTURE, attention_head_backward=backward(dv_from="rows"))
    assert "non-zero at positions after 0" in message and "through the values" in message, \
        message


@pytest.mark.parametrize("variant, says", [
    (backward(dW_Q_from="x dq"), ["raised ValueError", "do not chain",
                                  "Is a transpose missing or misplaced"]),
    (backward(dW_O="dout^T z"), ["dW_O: yours has shape (10, 4), expected (4, 10)",
                                 "yours is its transpose"]),
    (backward(order=("W_Q", "x", "W_K", "W_V", "W_O")), ["the order dx, dW_Q"]),
], ids=["x dq", "dW_O transposed", "returned out of order"])
def test_shape_mistakes_are_named(monkeypatch, variant, says):
    message = failure_of(monkeypatch, FD, 0, attention_head_backward=variant)
    for phrase in says:
        assert phrase in message, message


def test_no_message_gives_the_formula(monkeypatch):
    for mistake, (variant, _) in MISTAKES.items():
        message = failure_of(monkeypatch, FD, 0, attention_head_backward=variant)
        for formula in ("dpattern * pattern", "sum_k", "dscores^T", "dscores.T", "pattern^T",
                        ".T @", "dq W_Q^T", "x^T dq"):
            assert formula not in message, f"{mistake}: the message gives {formula!r}: {message}"
