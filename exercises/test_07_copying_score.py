"""Exercise 07: the direct logit impact against the engine's head outputs, the copying score
on a hand-built model whose heads have known scores (each isolating one step of the score),
and against circuits.copying_score (models without LayerNorm, where the two are the same
quantity). No copy of the solution here: expected values come from the engine or are known
by construction, and a failure says what is wrong and where.

Sizes all differ where a wrong axis could hide: 5 or 6 examples, 4 heads, 6 or 12 sample
tokens, d_head 14, 13 tokens in the vocabulary, d_model 20."""
import numpy as np
import pytest

from circuits import copying_score, induction_model, repeated_random_tokens
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model
from minitransformer.params import param_shapes

ex = load("ex07_copying_score")


def random_model():
    model = Model(dict(n_layers=2, d_model=32, n_heads=2, n_ctx=32, d_vocab=50, attn_only=True,
                       normalization_type=None, initializer_range=0.5), seed=4, dtype=np.float64)
    rng = np.random.default_rng(7)
    for name, value in model.params.items():
        if ".b_" in name:                 # zero at init: make b_V count (o_j includes it)
            model.params[name] = rng.normal(0.0, 0.3, value.shape)
    return model


# ---- direct_logit_impact ------------------------------------------------------------------

def head_outputs(model, layer, tokens):
    """o_j = v_j W_O of every key j and head, (N, T, H, D), from the engine: hook_result with
    the layer's pattern replaced by the identity (each query attends to its own key only)."""
    def attend_to_yourself(pattern, name):
        return np.broadcast_to(np.eye(pattern.shape[-1]), pattern.shape).copy()
    _, cache = model.run_with_cache(
        tokens, hooks={f"blocks.{layer}.attn.hook_pattern": attend_to_yourself})
    return cache[f"blocks.{layer}.attn.hook_result"].astype(np.float64)


def read_by(outputs, W_U, columns):
    """outputs (N, n, H, D) read by W_U's `columns` (N, n) -> (N, H, n keys, n tokens)."""
    return np.stack([np.swapaxes(outputs[e] @ W_U[:, columns[e]], 0, 1)
                     for e in range(len(outputs))])


@pytest.mark.checks("direct_logit_impact")
@pytest.mark.parametrize("layer", [0, 1])
def test_impact_is_each_keys_output_read_by_W_U(layer):
    model = random_model()
    tokens = repeated_random_tokens(5, 12, 1, None, 50, seed=0)          # (5, 13)
    N, n, H = 5, 12, 2
    _, cache = model.run_with_cache(tokens)
    impact = ex.direct_logit_impact(model, cache, layer, tokens)
    shape_hint = "[example, head, key j - 1, sample token t]"
    if np.shape(impact) == (N, H, n + 1, n):
        shape_hint = "BOS is kept among the keys: keys j >= 1 only, " + shape_hint
    elif np.shape(impact) == (N, H, n, 50):
        shape_hint = ("every token of the vocabulary is read: only the n sample tokens' "
                      "logits, " + shape_hint)
    check_shape("direct_logit_impact", impact, (N, H, n, n), shape_hint)
    o = head_outputs(model, layer, tokens)[:, 1:]                          # keys j >= 1
    W_U = model.params["unembed.W_U"]
    expected = read_by(o, W_U, tokens[:, 1:])
    check_close(f"direct_logit_impact (layer {layer})", impact, expected,
                "each key's head output v_j W_O (the engine's) read by W_U", rtol=1e-8,
                atol=1e-10,
                mistakes={
                    "the last two axes are swapped: impact[e, h, j, t] is key j first, then "
                    "sample token t": np.swapaxes(expected, -1, -2),
                    "token t must be the sample's t-th token, tokens[e, 1 + t], not the token "
                    "whose id is t": read_by(o, W_U, np.tile(np.arange(n), (N, 1))),
                    "the tokens read are one off: the sample tokens are those after BOS":
                    read_by(o, W_U, tokens[:, :-1]),
                    "every example reads the first example's tokens: each example has its "
                    "own": read_by(o, W_U, np.tile(tokens[:1, 1:], (N, 1))),
                    "b_V is missing: the value vectors of the cache include it":
                    expected - read_by(np.broadcast_to(
                        np.einsum("he,hed->hd", model.params[f"blocks.{layer}.attn.b_V"],
                                  model.params[f"blocks.{layer}.attn.W_O"]), o.shape),
                        W_U, tokens[:, 1:])})


# ---- copying_score: a hand-built model whose heads' scores are known ----------------------

V, SAMPLE, E_PROBE = 13, 6, 14
PAIRS = {a: a + 1 if a % 2 else a - 1 for a in range(1, V)}     # 1<->2, 3<->4, ... 11<->12
COPIED_BY_HEAD_2 = [1, 3]
PROBE_TOKENS = np.array([[0, 1, 6, 9, 2, 5, 10], [0, 1, 12, 7, 8, 2, 11],
                         [0, 3, 5, 10, 4, 9, 6], [0, 3, 8, 11, 12, 4, 7],
                         [0, 1, 11, 6, 12, 2, 5]])
# each sample: 6 distinct tokens, three whole pairs, and one of COPIED_BY_HEAD_2 at position 1


def probe_model():
    """1 layer, 4 heads, no LayerNorm. Head h's output from a key holding token a raises the
    logits by row a of its matrix (W_E, W_O and W_U identities on the token dimensions):
      head 0: I + 2 (every token raised by 2, the attended one by 1 more)  -> score 1
      head 1: -I (the attended token lowered, nothing else)                  -> score -1
      head 2: I for tokens 1 and 3, -I for the others; every query attends only to a key
              holding 1 or 3 (key 1 in PROBE_TOKENS), through its QK circuit -> score 1
      head 3: I plus the token's pair (the attended token and one other raised alike)
                                                                             -> score 2/3
    Heads 0, 1 and 3 attend uniformly (zero W_Q, W_K)."""
    P, D = SAMPLE + 1, V + SAMPLE + 1
    config = dict(n_layers=1, d_model=D, n_heads=4, d_head=E_PROBE, n_ctx=P, d_vocab=V,
                  attn_only=True, normalization_type=None,
                  positional_embedding_type="shortformer")
    p = {name: np.zeros(shape) for name, shape in
         param_shapes(Model(config, dtype=np.float64).config).items()}
    tokens, eye = np.arange(V), np.eye(V)
    p["embed.W_E"][tokens, tokens] = 1.0
    p["pos_embed.W_pos"][np.arange(P), V + np.arange(P)] = 1.0
    p["unembed.W_U"][tokens, tokens] = 1.0
    pair = np.zeros((V, V))
    pair[list(PAIRS), list(PAIRS.values())] = 1.0
    sign = np.where(np.isin(tokens, COPIED_BY_HEAD_2), 1.0, -1.0)
    raises = [eye + 2.0, -eye, sign[:, None] * eye, eye + pair]
    for h, matrix in enumerate(raises):
        p["blocks.0.attn.W_V"][h, :V, :V] = matrix
        p["blocks.0.attn.W_O"][h, tokens, tokens] = 1.0
    p["blocks.0.attn.W_Q"][2, V:, 0] = 1.0                       # every query: direction 0
    p["blocks.0.attn.W_K"][2, COPIED_BY_HEAD_2, 0] = 30.0 * np.sqrt(E_PROBE)
    return Model(config, params=p, dtype=np.float64)


def near(x, value):
    return np.isfinite(x) and abs(x - value) < 1e-3


def shown(x):
    return "NaN" if np.isnan(x) else f"{np.round(x, 6) + 0.0:.3g}"


def probe_message(head, x):
    """-> (what head `head` of the probe model is and what its score must be, against
    yours (x); what yours points to, or '')."""
    n = SAMPLE
    if abs(x) > 1:
        cause = ("outside [-1, 1], so negative raises count in A and O. Does the ReLU come "
                 "after the mean-subtraction?")
    elif head == 0 and near(x, 1 / 5):
        cause = ("the raise on every token counts in yours. Is the impact mean-subtracted over "
                 "the sample tokens (its last axis) before the ReLU?")
    elif head == 1 and np.isnan(x):
        cause = ("NaN is 0 / 0, nothing raised at all: an impact that is <= 0 everywhere keeps "
                 "nothing if the ReLU comes before the mean-subtraction")
    elif head == 2 and near(x, 0.0):
        cause = ("0 is what equal weights on every key give. Is w_j the attention key j gets, "
                 "summed over the queries (the pattern's axis 2), not over the keys?")
    elif head == 2 and near(x, -1 / 11):
        cause = ("the weights are one key off. Are they keys 1 to n (BOS left out), as the "
                 "impact's keys are?")
    elif head == 2 and near(x, 2 / 3):
        cause = ("the mean is subtracted over the keys, not over the sample tokens t (the "
                 "impact's last axis)?")
    elif head == 3 and near(x, 0.0):
        cause = "0 compares with the other tokens' total raise. Is O the raise on an average one?"
    else:
        cause = ""
    what = [f"raises the token it attends to by 1 and every token by 2 alike; a raise that "
            f"every token gets is no preference, so its score is 1",
            f"lowers the token it attends to and nothing else; against the mean that is a "
            f"raise on every other token, so its score is -1",
            f"attends from every query to key 1 alone, whose token it copies; it lowers the "
            f"tokens of the other keys, which get no attention. Weighted by attention its "
            f"score is 1",
            f"raises the token it attends to and one other token alike; against the average "
            f"other token it still prefers the attended one: its score is {(n - 2) / n:.3g}"]
    return (f"head 0.{head} of the hand-built model {what[head]}, yours is {shown(x)}", cause)


@pytest.mark.checks("copying_score")
def test_hand_built_heads_have_their_known_scores():
    model = probe_model()
    scores = ex.copying_score(model, PROBE_TOKENS)
    check_shape("copying_score", scores, (1, 4), "(n_layers, n_heads)")
    known = np.array([1.0, -1.0, 1.0, (SAMPLE - 2) / SAMPLE])
    wrong = [head for head in range(4)
             if not (np.isfinite(scores[0, head]) and abs(scores[0, head] - known[head]) < 1e-6)]
    if wrong:
        messages = [probe_message(head, float(scores[0, head])) for head in wrong]
        named = [i for i, (_, cause) in enumerate(messages) if cause]
        first = named[0] if named else 0
        text, cause = messages[first]
        others = [f"0.{head}" for i, head in enumerate(wrong) if i != first]
        fail(f"copying score: {text}" + (f": {cause}" if cause else "")
             + (f" (head{'s' * (len(others) > 1)} {', '.join(others)} "
                f"differ{'s' * (len(others) == 1)} too)"
                if others else ""))


# ---- copying_score against the library ----------------------------------------------------

def nan_hint(yours, expected):
    """A word on NaN where yours and the library's disagree about it."""
    yours = np.asarray(yours, dtype=np.float64)
    lost = np.argwhere(np.isnan(expected) & ~np.isnan(yours))
    if lost.size:
        l, h = lost[0]
        return (f"the library's score of head {l}.{h} is NaN: that head writes nothing W_U "
                f"reads (A + O = 0); yours gives {yours[l, h]:.3g}: leave 0 / 0 as NaN")
    extra = np.argwhere(np.isnan(yours) & ~np.isnan(expected))
    if extra.size:
        l, h = extra[0]
        return (f"yours is NaN at head {l}.{h}, where the library's is {expected[l, h]:.3g}: "
                f"A + O is 0 in yours there")
    return ""


@pytest.mark.checks("copying_score")
@pytest.mark.parametrize("which", ["random", "hand-built induction"])
def test_matches_the_library(which):
    model = random_model() if which == "random" else induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(6, 20, 1, None, model.config.d_vocab, seed=0)
    yours = ex.copying_score(model, tokens)
    check_shape("copying_score", yours, (model.config.n_layers, model.config.n_heads),
                "(n_layers, n_heads)")
    expected = copying_score(model, n_examples=6, length=20, seed=0)
    check_close(f"copying scores ({which} model; entry = (layer, head))", yours, expected,
                "circuits.copying_score", rtol=1e-4, atol=1e-6, hint=nan_hint(yours, expected))


@pytest.mark.checks("copying_score")
def test_the_hand_built_induction_head_copies():
    model = induction_model(d_vocab=32, n_ctx=64)
    scores = ex.copying_score(model, repeated_random_tokens(4, 20, 1, None, 32, seed=1))
    if not scores[1, 0] > 0.95:
        fail(f"head 1.0 of the hand-built induction model copies the attended token to the "
             f"logits exactly; its score should be ~1, yours is {scores[1, 0]:.2f}")
