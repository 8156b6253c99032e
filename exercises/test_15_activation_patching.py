"""Exercise 15: activation patching, checked against circuits.patching (the engine's own
patching: patch_hook, patch_resid, patch_head_out, logit_diff_metric, normalise) on a random
2-layer model with three heads, and on the hand-built induction circuit (circuits.handmade,
with bystander heads that nothing reads), whose maps are known. Shapes are chosen so that no
two axes have the same length: a hook that indexes the wrong axis gives wrong numbers (or an
IndexError), never right ones by chance."""
import functools

import numpy as np
import pytest

from circuits import induction_model, repeated_random_tokens
from circuits.patching import logit_diff_metric, normalise, patch_head_out, patch_hook, patch_resid
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex15_activation_patching")

V = 30                        # the random model: B 2, T 13 (BOS + 6 + 6), D 24, H 3, E 5, V 30
LENGTH, POSITION = 6, 2       # A at position 2 of the first copy, the query at 8
HAND_V, HAND_LENGTH, HAND_POSITION = 32, 12, 7     # the hand-built circuit: T 25, D 160, E 64
REAL = (2, 1)                 # its previous-token head is 0.2, its induction head 1.1


def call(what, function, *args):
    """function(*args); a hook that writes into its read-only activation -> a message."""
    try:
        return function(*args)
    except ValueError as error:
        if "read-only" in str(error):
            fail(f"{what}: your hook wrote into the activation it was given, which is "
                 f"read-only ({error}): write into a copy of it, and return the copy")
        raise


def read_only(x):
    x = np.array(x)
    x.flags.writeable = False
    return x


def runs(clean, position, length, d_vocab):
    """-> (corrupted, metric): A at `position` replaced by the smallest token its row lacks;
    the engine's logit difference at the query, target B over that token."""
    corrupted = clean.copy()
    for row in corrupted:
        row[position] = np.setdiff1d(np.arange(1, d_vocab), row)[0]
    query = position + length
    return corrupted, logit_diff_metric(query, clean[:, position + 1], corrupted[:, position])


def random_case():
    """-> (model, clean (2, 13), corrupted, metric) on a random float64 model with 3 heads."""
    model = Model(dict(n_layers=2, d_model=24, n_heads=3, d_head=5, n_ctx=16, d_vocab=V,
                       attn_only=True, normalization_type=None, initializer_range=0.5),
                  seed=3, dtype=np.float64)
    clean = repeated_random_tokens(2, LENGTH, 2, None, V, seed=0)
    return (model, clean, *runs(clean, POSITION, LENGTH, V))


@functools.lru_cache(maxsize=None)
def hand_built_model():
    """circuits.handmade.induction_model with two bystander heads in each layer around its
    one head (the real ones at REAL): random QK and OV circuits that write into the
    positional subspace, which no later head and no logit reads."""
    model = induction_model(d_vocab=HAND_V, n_ctx=64)
    cfg, p = model.config.to_dict(), model.params
    D, E, P = cfg["d_model"], cfg["d_head"], cfg["n_ctx"]
    rng = np.random.default_rng(0)
    params = dict(p)
    for layer, real in enumerate(REAL):
        a = f"blocks.{layer}.attn."
        heads = {n: [] for n in ("W_Q", "W_K", "W_V", "W_O")}
        for head in range(3):
            if head == real:
                for n in heads:
                    heads[n].append(p[a + n][0])
                continue
            for n in ("W_Q", "W_K", "W_V"):
                heads[n].append(rng.normal(size=(D, E)))
            W_O = np.zeros((E, D))
            W_O[:, HAND_V:HAND_V + P] = rng.normal(size=(E, P))      # the positional subspace
            heads["W_O"].append(W_O)
        params.update({a + n: np.stack(w) for n, w in heads.items()})
        params.update({a + n: np.zeros((3, E)) for n in ("b_Q", "b_K", "b_V")})
    return Model(dict(cfg, n_heads=3), params=params, dtype=np.float64)


def hand_built_case():
    """-> (model, clean (2, 25), corrupted, metric, clean value, corrupted value)."""
    model = hand_built_model()
    clean = repeated_random_tokens(2, HAND_LENGTH, 2, None, HAND_V, seed=0)
    corrupted, metric = runs(clean, HAND_POSITION, HAND_LENGTH, HAND_V)
    return (model, clean, corrupted, metric, metric(model.forward(clean)),
            metric(model.forward(corrupted)))


@functools.lru_cache(maxsize=None)
def hand_built_maps():
    """The engine's normalised maps of the hand-built circuit: residual (2, 25), heads (2, 3)."""
    model, clean, corrupted, metric, at_clean, at_corrupted = hand_built_case()
    _, cache = model.run_with_cache(clean)
    return tuple(read_only(normalise(m, at_clean, at_corrupted))
                 for m in (patch_resid(model, corrupted, cache, metric),
                           patch_head_out(model, corrupted, cache, metric)))


# ---- the runs and the metric ------------------------------------------------------------------

@pytest.mark.checks("corrupt")
def test_corrupt_replaces_one_token_per_row_by_a_new_one():
    tokens = repeated_random_tokens(60, 8, 2, None, V, seed=0)       # (60, 17)
    given = tokens.copy()
    position = 5
    yours = np.asarray(ex.corrupt(tokens, position, V, seed=1))
    if not np.array_equal(tokens, given):
        fail("corrupt changed the tokens it was given: the clean run still needs them; "
             "work on a copy")
    check_shape("corrupt", yours, tokens.shape, "one token replaced, nothing added")
    if not np.issubdtype(yours.dtype, np.integer):
        fail(f"corrupt should return token ids (integers), got {yours.dtype}")
    changed = sorted(set(np.nonzero(yours != tokens)[1].tolist()))
    if changed != [position]:
        where = {position + 1: f"position {position + 1}, one after the one asked for",
                 position - 1: f"position {position - 1}, one before the one asked for"}
        fail(f"corrupt(tokens, {position}, ...) should change position {position} only; "
             f"yours changed " + (where[changed[0]] if len(changed) == 1 and changed[0] in where
                                  else f"positions {changed}"))
    new = yours[:, position]
    if (new <= 0).any() or (new >= V).any():
        fail(f"a new token is {new[(new <= 0) | (new >= V)][0]}: draw from 1..d_vocab-1 "
             f"(0 is BOS)")
    for row, (old, token) in enumerate(zip(tokens, new)):
        if token in old:
            fail(f"row {row}'s token at position {position} is {token}, a token the row "
                 f"already holds (at position {int(np.nonzero(old == token)[0][0])}): every "
                 f"row needs a token there that it does not hold anywhere")
    if not np.array_equal(yours, np.asarray(ex.corrupt(tokens, position, V, seed=1))):
        fail("the same seed gave different tokens: draw from a generator seeded by `seed`")


@pytest.mark.checks("logit_difference")
def test_logit_difference_against_the_engine():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 11))                              # (B, T, V)
    target, distractor, query = np.array([3, 1, 9, 4]), np.array([8, 6, 2, 10]), 3
    yours = ex.logit_difference(logits, query, target, distractor)
    if np.ndim(yours) != 0:
        fail(f"logit_difference should return one number (the mean over rows), got shape "
             f"{np.shape(yours)}")
    every_pair = np.mean(logits[:, query][:, target] - logits[:, query][:, distractor])
    check_close("logit_difference", yours, logit_diff_metric(query, target, distractor)(logits),
                "circuits.patching.logit_diff_metric",
                mistakes={"you read the logits at position query + 1; the logits at `query` "
                          "are the prediction of the token after it":
                          logit_diff_metric(query + 1, target, distractor)(logits),
                          "you read the logits at position query - 1, one before the query":
                          logit_diff_metric(query - 1, target, distractor)(logits),
                          "the sign is the wrong way round: the target's logit minus the "
                          "distractor's": -logit_diff_metric(query, target, distractor)(logits),
                          "you averaged over every pair of rows (row b's logits at row c's "
                          "target): read each row at its own target and distractor": every_pair})


@pytest.mark.checks("normalised_metric")
def test_normalised_metric_is_0_at_corrupted_and_1_at_clean():
    clean, corrupted = 2.5, -0.7
    for value, expected, which in ((clean, 1.0, "clean"), (corrupted, 0.0, "corrupted")):
        yours = float(np.asarray(ex.normalised_metric(value, clean, corrupted))) + 0.0   # no -0
        if not np.isclose(yours, expected):
            wrong_way = " (the wrong way round)" if np.isclose(yours, 1.0 - expected) else ""
            fail(f"normalised_metric of the {which} run's own value should be {expected:.0f}, "
                 f"yours is {yours:.3g}{wrong_way}")
    values = np.random.default_rng(0).normal(size=(2, 13))           # a whole map at once
    check_close("normalised_metric of a (2, 13) map",
                ex.normalised_metric(values, clean, corrupted),
                normalise(values, clean, corrupted), "circuits.patching.normalise",
                mistakes={"yours is 1 at the corrupted run's value and 0 at the clean run's: "
                          "the wrong way round": normalise(values, corrupted, clean),
                          "divide by the gap between the clean and corrupted values, not by "
                          "the clean value": (values - corrupted) / clean})


# ---- the hooks ---------------------------------------------------------------------------------

@pytest.mark.checks("patch_position_hook")
def test_the_position_hook_puts_one_clean_position_into_the_corrupted_run():
    rng = np.random.default_rng(0)
    clean, corrupted = rng.normal(size=(2, 3, 7, 5))                  # (B, T, D): 3, 7, 5
    name, position = "blocks.1.hook_resid_pre", 2

    def engine(source, index, into):                                   # circuits.patching's hook
        return patch_hook({name: source}, name, index)[name](read_only(into), name)
    hook = ex.patch_position_hook(clean, position)
    if not callable(hook):
        fail(f"patch_position_hook should return a hook, a function (activation, name), "
             f"got {type(hook).__name__}")
    yours = call("patch_position_hook", hook, read_only(corrupted), name)
    if yours is None:
        fail("your hook returned None, which keeps the corrupted activation as it was: return "
             "the patched copy")
    check_close(f"the hook's activation (patched at position {position})", yours,
                engine(clean, (slice(None), position), corrupted), "circuits.patching.patch_hook",
                mistakes={"you patched every position: take only position "
                          f"{position} from the clean run": clean,
                          f"you patched position {position + 1}, one after the one asked for":
                          engine(clean, (slice(None), position + 1), corrupted),
                          f"you patched position {position - 1}, one before the one asked for":
                          engine(clean, (slice(None), position - 1), corrupted),
                          f"you patched row {position} of the batch (axis 0); positions are "
                          f"axis 1": engine(clean, position, corrupted),
                          "yours is the clean activation with the corrupted one at the "
                          "position: the other way round; the hook runs in the corrupted run "
                          "and brings in the clean value":
                          engine(corrupted, (slice(None), position), clean)})


@pytest.mark.checks("patch_head_hook")
def test_the_head_hook_puts_one_clean_head_into_the_corrupted_run():
    rng = np.random.default_rng(1)
    clean, corrupted = rng.normal(size=(2, 2, 7, 3, 4))               # z (B, T, H, E): 2, 7, 3, 4
    name, head = "blocks.0.attn.hook_z", 1

    def engine(source, index, into):
        return patch_hook({name: source}, name, index)[name](read_only(into), name)
    hook = ex.patch_head_hook(clean, head)
    if not callable(hook):
        fail(f"patch_head_hook should return a hook, a function (z, name), got "
             f"{type(hook).__name__}")
    yours = call("patch_head_hook", hook, read_only(corrupted), name)
    if yours is None:
        fail("your hook returned None, which keeps the corrupted z as it was: return the "
             "patched copy")
    check_close(f"the hook's z (head {head} patched)", yours,
                engine(clean, (slice(None), slice(None), head), corrupted),
                "circuits.patching.patch_hook",
                mistakes={f"you patched position {head} of every head: z is (B, T, H, E), "
                          f"the heads are axis 2, the positions axis 1":
                          engine(clean, (slice(None), head), corrupted),
                          f"you patched entry {head} of d_head (the last axis) of every head; "
                          f"the heads are axis 2": engine(clean, (..., head), corrupted),
                          f"you patched row {head} of the batch (axis 0); the heads are axis 2":
                          engine(clean, head, corrupted),
                          "you patched every head at once: take one head from the clean run":
                          clean,
                          "yours is the clean z with the corrupted head in it: the other way "
                          "round; the hook runs in the corrupted run and brings in the clean "
                          "head": engine(corrupted, (slice(None), slice(None), head), clean)})


# ---- the two maps ------------------------------------------------------------------------------

def check_map(name, yours, expected, mistakes):
    """check_close, after looking for a map shifted by one position."""
    yours = np.asarray(yours, dtype=np.float64)
    check_shape(name, yours, expected.shape, "(n_layers, T): a layer per row, a position "
                                             "per column")
    close = functools.partial(np.allclose, rtol=1e-5, atol=1e-8)
    if not close(yours, expected):
        if close(yours[:, :-1], expected[:, 1:]):
            fail(f"{name}: your column p holds what patching position p + 1 gives: an "
                 f"off-by-one in the position")
        if close(yours[:, 1:], expected[:, :-1]):
            fail(f"{name}: your column p holds what patching position p - 1 gives: an "
                 f"off-by-one in the position")
    check_close(name, yours, expected, "circuits.patching.patch_resid", mistakes=mistakes)


@pytest.mark.checks("patch_residual")
def test_residual_map_against_the_engine():
    model, clean, corrupted, metric = random_case()
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    yours = call("patch_residual", ex.patch_residual, model, clean, corrupted, metric)
    T = clean.shape[1]
    whole = [metric(model.forward(corrupted, hooks=patch_hook(
        clean_cache, f"blocks.{layer}.hook_resid_pre", slice(None)))) for layer in range(2)]
    check_map("patch_residual (random model)", yours,
              patch_resid(model, corrupted, clean_cache, metric),
              mistakes={"every position of a layer gives the same value: you patched the whole "
                        "sequence at once; patch one position per run":
                        np.repeat(np.array(whole)[:, None], T, axis=1),
                        "you ran the clean tokens with the corrupted run's activation patched "
                        "in: the other way round (the corrupted run is the one to restore)":
                        patch_resid(model, clean, corrupted_cache, metric),
                        "you patched blocks.{l}.hook_resid_post, the output of layer l; the map "
                        "is of its input, blocks.{l}.hook_resid_pre":
                        patch_resid(model, corrupted, clean_cache, metric,
                                    hook="hook_resid_post")})


@pytest.mark.checks("patch_residual")
def test_residual_map_of_the_hand_built_circuit():
    model, clean, corrupted, metric, at_clean, at_corrupted = hand_built_case()
    yours = call("patch_residual", ex.patch_residual, model, clean, corrupted, metric)
    check_shape("patch_residual (hand-built circuit)", yours, (2, clean.shape[1]))
    yours = normalise(yours, at_clean, at_corrupted)
    c = HAND_POSITION
    for layer, position, why in [(0, c, "A's place, where the corrupted run replaced A"),
                                 (1, c + 1, "the position after A, where the previous-token "
                                            "head wrote A")]:
        if not np.isclose(yours[layer, position], 1.0, atol=1e-6):
            fail(f"hand-built circuit: patching the input of layer {layer} at position "
                 f"{position}, {why}, restores the clean answer (1.00 normalised); yours gives "
                 f"{yours[layer, position]:.2f}")
    check_map("patch_residual (hand-built circuit), normalised", yours, hand_built_maps()[0], {})


@pytest.mark.checks("patch_head_outputs")
def test_head_map_against_the_engine():
    model, clean, corrupted, metric = random_case()
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    yours = call("patch_head_outputs", ex.patch_head_outputs, model, clean, corrupted, metric)
    check_shape("patch_head_outputs", yours, (2, 3), "(n_layers, n_heads)")

    def patched(index):                         # index(head) -> the part of z to patch
        return np.array([[metric(model.forward(corrupted, hooks=patch_hook(
            clean_cache, f"blocks.{layer}.attn.hook_z", index(head)))) for head in range(3)]
            for layer in range(2)])
    check_close("patch_head_outputs (random model, 3 heads)", yours,
                patch_head_out(model, corrupted, clean_cache, metric),
                "circuits.patching.patch_head_out",
                mistakes={"you patched position h of every head: hook_z is (B, T, H, E), the "
                          "heads are axis 2, the positions axis 1":
                          patched(lambda head: (slice(None), head)),
                          "you patched entry h of d_head (z's last axis); the heads are axis 2":
                          patched(lambda head: (..., head)),
                          "every head of a layer gives the same value: you patched all of the "
                          "layer's heads at once": patched(lambda head: slice(None)),
                          "you ran the clean tokens with the corrupted run's head output "
                          "patched in: the other way round (the corrupted run is the one to "
                          "restore)": patch_head_out(model, clean, corrupted_cache, metric)})


@pytest.mark.checks("patch_head_outputs")
def test_head_map_of_the_hand_built_circuit():
    model, clean, corrupted, metric, at_clean, at_corrupted = hand_built_case()
    yours = call("patch_head_outputs", ex.patch_head_outputs, model, clean, corrupted, metric)
    check_shape("patch_head_outputs (hand-built circuit)", yours, (2, 3), "(n_layers, n_heads)")
    yours = normalise(yours, at_clean, at_corrupted)
    for layer, what in enumerate(("previous-token head", "induction head")):
        head = REAL[layer]
        if not np.isclose(yours[layer, head], 1.0, atol=1e-6):
            fail(f"hand-built circuit: patching the {what} {layer}.{head} restores the clean "
                 f"answer (1.00 normalised); yours gives {yours[layer, head]:.2f}")
    check_close("patch_head_outputs (hand-built circuit), normalised", yours,
                hand_built_maps()[1], "circuits.patching.patch_head_out",
                hint="the bystander heads write where nothing reads: patching them changes "
                     "nothing (0)")


# ---- naming the heads --------------------------------------------------------------------------

def check_named(what, yours, previous_token, induction, moved):
    """yours: name_heads' answer; moved: the layer whose heads move the information."""
    try:
        (pl, ph), (il, ih) = yours
        yours = ((int(pl), int(ph)), (int(il), int(ih)))
    except (TypeError, ValueError):
        fail(f"{what}: name_heads should return ((layer, head), (layer, head)), got {yours!r}")
    if yours == (previous_token, induction):
        return
    named = (f"{what}: yours names {yours[0]} and {yours[1]}, expected {previous_token} and "
             f"{induction}")
    if yours == (previous_token[::-1], induction[::-1]):
        fail(f"{named}: (head, layer) instead of (layer, head)")
    if yours[1] == previous_token:
        fail(f"{named}: your induction head is the previous-token head, the largest effect "
             f"of the whole map; the induction head is in a layer after layer {moved}, where "
             f"the information moves one position on")
    if yours[0][0] != moved:
        fail(f"{named}: your previous-token head is in layer {yours[0][0]}, but the position "
             f"that matters moves one step on between the inputs of layers {moved} and "
             f"{moved + 1}: a head of layer {moved} moved it")
    fail(named)


@pytest.mark.checks("name_heads")
def test_name_heads_on_made_up_maps():
    T = 11
    # 3 layers, 4 heads: the peak stays at 4 through layer 1's input and moves to 5 after
    # layer 1, so the previous-token head is layer 1's strongest (1.3); the induction head is
    # layer 2's strongest (2.1), although 1.3 is the largest effect of the whole map
    residual = np.zeros((3, T))
    residual[0, 4], residual[1, 4], residual[1, 5], residual[2, 5] = 1.0, 0.9, 0.1, 0.95
    heads = np.array([[0.05, 0.1, 0.0, 0.02], [0.1, 0.0, 0.05, 0.9], [0.2, 0.6, 0.3, 0.1]])
    check_named("3 layers, 4 heads", ex.name_heads(residual, heads), (1, 3), (2, 1), moved=1)
    # 4 layers, 3 heads: the move is between the inputs of layers 2 and 3
    residual = np.zeros((4, T))
    residual[:3, 6], residual[3, 7] = 1.0, 1.0
    heads = np.array([[0.3, 0.0, 0.1], [0.0, 0.2, 0.1], [0.1, 0.0, 0.8], [0.7, 0.1, 0.05]])
    check_named("4 layers, 3 heads", ex.name_heads(residual, heads), (2, 2), (3, 0), moved=2)


@pytest.mark.checks("name_heads")
def test_name_heads_on_the_hand_built_circuit():
    residual, heads = hand_built_maps()                 # the engine's maps, normalised
    check_named("hand-built circuit", ex.name_heads(residual, heads), (0, REAL[0]),
                (1, REAL[1]), moved=0)
