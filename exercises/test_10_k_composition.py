"""Exercise 10: K-composition scores against circuits.composition_scores, and the
previous-token QK trace against circuits.prev_token_qk_trace, on a 3-layer, 3-head model
(d_model 24, d_head 6, 30 tokens, 16 positions) whose heads' matrices each have a scale of
their own, so that a swapped, transposed or mis-normalised matrix, two heads crossed or a
wrong layer never gives the right number by luck; then the hand-built induction head.

No copy of the solution here: what a mistake would give comes from the engine run on a
changed model (its W_V and W_O exchanged and transposed, its layers swapped, other
previous-token weights), and a failure names the quantity, the entry and the mistake.

For the teacher: the engine holds this exercise's answers: composition_scores(model)['K']
[later, :, earlier, :] is k_composition_scores, prev_token_qk_trace(model, p)[.][layer, head]
is prev_token_trace."""
import numpy as np
import pytest

from circuits import (composition_scores, induction_model, ov_circuit, prev_token_qk_trace,
                      qk_circuit)
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex10_k_composition")

L, H, D, E, V, P = 3, 3, 24, 6, 30, 16


def random_model():
    """3 layers, 3 heads; each head's W_Q, W_K, W_V, W_O scaled by a factor of its own."""
    model = Model(dict(n_layers=L, d_model=D, n_heads=H, d_head=E, n_ctx=P, d_vocab=V,
                       attn_only=True, normalization_type=None), seed=7, dtype=np.float64)
    scale = np.random.default_rng(3).uniform(0.3, 3.0, size=(L, 4, H))  # layer, matrix, head
    for layer in range(L):
        for i, name in enumerate(("W_Q", "W_K", "W_V", "W_O")):
            key = f"blocks.{layer}.attn.{name}"
            model.params[key] = model.params[key] * scale[layer, i][:, None, None]
    return model


def altered(model, layers=(), transpose_ov=False, swap_qk=False, swap_with=None):
    """The model with, in each of `layers`: W_V and W_O exchanged and transposed (W_OV
    becomes W_OV^T), W_Q and W_K exchanged (W_QK becomes W_QK^T), or the layer's weights
    exchanged with those of layer `swap_with`."""
    p = dict(model.params)
    for layer in layers:
        a = f"blocks.{layer}.attn."
        if transpose_ov:
            p[a + "W_V"], p[a + "W_O"] = (p[a + "W_O"].transpose(0, 2, 1),
                                          p[a + "W_V"].transpose(0, 2, 1))
        if swap_qk:
            p[a + "W_Q"], p[a + "W_K"] = p[a + "W_K"], p[a + "W_Q"]
        if swap_with is not None:
            b = f"blocks.{swap_with}.attn."
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                p[a + name], p[b + name] = p[b + name], p[a + name]
    return Model(model.config, params=p, dtype=np.float64)


# ---- k_composition_scores --------------------------------------------------------------------

def k_mistakes(model, later, earlier):
    """{what went wrong: the (b, a) table it gives}."""
    scores = composition_scores(model)
    K = scores["K"][later, :, earlier, :]
    flipped = composition_scores(altered(model, [earlier], transpose_ov=True))
    qk_norm = qk_circuit(model, later).norm()[:, None]                  # (b, 1)
    ov_norm = ov_circuit(model, earlier).norm()[None, :]                 # (1, a)
    return {
        "that is Q-composition (the queries read W_OV^a's output): the keys read it through "
        "the transpose of W_QK^b": scores["Q"][later, :, earlier, :],
        "that is V-composition (W_OV^a W_OV^b): K-composition reads through b's QK circuit":
            scores["V"][later, :, earlier, :],
        "rows and columns are swapped: entry [b, a] is head b of the later layer reading "
        "head a of the earlier one": K.T,
        "W_OV^a is transposed, or the product is in the wrong order: head a writes first "
        "(x W_OV^a), then head b's keys read it": flipped["K"][later, :, earlier, :],
        "the product is in the wrong order: head a writes first (x W_OV^a), then head b's keys "
        "read it": flipped["Q"][later, :, earlier, :],
        "the roles are swapped: the earlier layer's head writes (its W_OV), the later layer's "
        "head reads (its W_QK)":
            composition_scores(altered(model, [later], swap_with=earlier))["K"][
                later, :, earlier, :],
        "the denominator is missing: divide by both norms, ||W_OV^a||_F and ||W_QK^b||_F":
            K * qk_norm * ov_norm,
        "the denominator is missing ||W_QK^b||_F": K * qk_norm,
        "the denominator is missing ||W_OV^a||_F": K * ov_norm,
        "the norms in the denominator are paired the wrong way: entry [b, a] divides by the "
        "norms of head b's W_QK and head a's W_OV": K * qk_norm * ov_norm / (qk_norm.T * ov_norm.T),
    }


@pytest.mark.checks("k_composition_scores")
@pytest.mark.parametrize("later, earlier", [(1, 0), (2, 0), (2, 1)])
def test_k_composition_matches_the_library(later, earlier):
    model = random_model()
    yours = ex.k_composition_scores(model, later, earlier)
    check_shape(f"k_composition_scores(model, {later}, {earlier})", yours, (H, H),
                "[later head b, earlier head a]")
    check_close(f"K-composition of layer {later} reading layer {earlier} (entry = [later head "
                f"b, earlier head a])", yours,
                composition_scores(model)["K"][later, :, earlier, :],
                f"circuits.composition_scores(model)['K'][{later}, :, {earlier}, :]",
                rtol=1e-8, mistakes=k_mistakes(model, later, earlier))


@pytest.mark.checks("k_composition_scores")
def test_the_hand_built_induction_head_reads_the_previous_token_head():
    """Head 1.0's keys read exactly what 0.0 writes: its K-composition is far above random."""
    model = induction_model(d_vocab=16, n_ctx=24)
    yours = np.asarray(ex.k_composition_scores(model, 1, 0), dtype=np.float64)
    check_shape("k_composition_scores of the hand-built model", yours, (1, 1), "one head a layer")
    check_close("K-composition of the hand-built induction head 1.0 with the previous-token "
                "head 0.0", yours, composition_scores(model)["K"][1, :, 0, :],
                "circuits.composition_scores", rtol=1e-6, atol=1e-9,
                hint="its keys, and only its keys, read what 0.0 writes: K-composition well "
                     "above random; its queries read nothing of it (Q-composition 0)")


# ---- prev_token_trace ----------------------------------------------------------------------

def engine_trace(model, layer, head, p, layers=None, identity_embedding=False):
    """circuits.prev_token_qk_trace of head `head` of `layer` with only the heads of `layers`
    (every earlier layer by default) as the earlier heads k, weighted by p[layer of k, k]:
    a 2-layer model is built whose layer 0 holds those heads and whose layer 1 holds this
    head alone. identity_embedding: W_E = the identity (the trace over D, not V)."""
    layers = range(layer) if layers is None else layers
    heads = [(l, h) for l in layers for h in range(H)]
    vocab = D if identity_embedding else V
    built = Model(dict(n_layers=2, d_model=D, n_heads=len(heads), d_head=E, n_ctx=P,
                       d_vocab=vocab, attn_only=True, normalization_type=None), dtype=np.float64)
    src, q = model.params, dict(built.params)
    q["embed.W_E"] = np.eye(D) if identity_embedding else src["embed.W_E"]
    for name in ("W_V", "W_O"):
        q[f"blocks.0.attn.{name}"] = np.stack([src[f"blocks.{l}.attn.{name}"][h] for l, h in heads])
    for name in ("W_Q", "W_K"):
        q[f"blocks.1.attn.{name}"] = np.zeros_like(q[f"blocks.1.attn.{name}"])
        q[f"blocks.1.attn.{name}"][0] = src[f"blocks.{layer}.attn.{name}"][head]
    weights = np.zeros((2, len(heads)))
    weights[0] = [p[l, h] for l, h in heads]
    trace, normalised = prev_token_qk_trace(Model(built.config, params=q, dtype=np.float64),
                                            weights)
    return trace[1, 0], normalised[1, 0]


def trace_mistakes(model, layer, head, p):
    """{what went wrong: the (trace, normalised trace) it gives}."""
    mistakes = {
        "the heads k are not weighted by their previous-token scores p_k":
            engine_trace(model, layer, head, np.ones_like(p)),
        "p is indexed [layer, head]: head k of layer l weighs p[l, k]":
            engine_trace(model, layer, head, p.T),
        "W_OV^k enters untransposed: the key at j holds x_{j-1} W_OV^k, which the score reads "
        "transposed, (x_{j-1} W_OV^k)^T":
            engine_trace(altered(model, range(L), transpose_ov=True), layer, head, p),
        "the query side and the key side are swapped: the present token is read by W_Q, the "
        "key's previous token by W_K":
            engine_trace(altered(model, [layer], swap_qk=True), layer, head, p),
        f"the heads of layer {layer} itself count in yours: only the heads of earlier layers "
        f"wrote into the keys it reads": engine_trace(model, layer, head, p, range(layer + 1)),
        "the trace is over the residual stream (D x D), without the embeddings: W is V x V, "
        "token against token": engine_trace(model, layer, head, p, identity_embedding=True),
    }
    if layer > 1:
        mistakes[f"only layer {layer - 1}'s heads count in yours: the heads of every earlier "
                 f"layer (0 .. {layer - 1}) do"] = engine_trace(model, layer, head, p, [layer - 1])
        mistakes[f"only layer 0's heads count in yours: the heads of every earlier layer "
                 f"(0 .. {layer - 1}) do"] = engine_trace(model, layer, head, p, [0])
    if head != 0:
        mistakes[f"these are head {layer}.0's: use the `head` given"] = \
            engine_trace(model, layer, 0, p)
    return mistakes


PREVIOUS = np.random.default_rng(0).uniform(0.1, 1.0, (L, H))


@pytest.mark.checks("prev_token_trace")
@pytest.mark.parametrize("layer, head", [(1, 0), (1, 2), (2, 1)])
def test_trace_matches_the_library(layer, head):
    model = random_model()
    trace, normalised = prev_token_qk_trace(model, PREVIOUS)
    yours = ex.prev_token_trace(model, layer, head, PREVIOUS.copy())
    if not (isinstance(yours, tuple) and len(yours) == 2):
        fail("prev_token_trace should return two numbers: (trace, trace / ||W||_F)")
    mistakes = trace_mistakes(model, layer, head, PREVIOUS)
    check_close(f"trace of W for head {layer}.{head}", yours[0], trace[layer, head],
                "circuits.prev_token_qk_trace", rtol=1e-7,
                mistakes={what: value[0] for what, value in mistakes.items()},
                hint="the trace is the sum of W's diagonal, W[t, t] over the tokens t")
    norm, yours_norm = trace[layer, head] / normalised[layer, head], yours[0] / yours[1]
    hint = (f"the trace is right, so yours divides it by {yours_norm:.4g}, but ||W||_F is "
            f"{norm:.4g}" + (": that is ||W||_F squared" if np.isclose(yours_norm, norm ** 2)
                             else ": is it the Frobenius norm of the whole V x V W, not of one "
                                  "of its factors, nor a product of theirs?"))
    check_close(f"normalised trace for head {layer}.{head}", yours[1], normalised[layer, head],
                "circuits.prev_token_qk_trace", rtol=1e-7, hint=hint)


@pytest.mark.checks("prev_token_trace")
def test_the_hand_built_induction_head_has_a_positive_trace():
    model = induction_model(d_vocab=16, n_ctx=24)
    trace, normalised = ex.prev_token_trace(model, 1, 0, np.array([[1.0], [0.0]]))
    if not (trace > 0 and normalised > 0.9 * np.sqrt(16)):
        fail(f"the hand-built head 1.0 matches the present token with the key's previous "
             f"token exactly (W is a multiple of the identity: normalised trace sqrt(V) = 4); "
             f"yours gives trace {trace:.3g}, normalised {normalised:.3g}")
