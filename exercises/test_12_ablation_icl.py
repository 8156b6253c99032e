"""Exercise 12: the ICL score against circuits.icl_score, the pattern-preserving ablation
against the engine's (interventions.replay and ablate_heads, which the student's hooks must
not use), and the known answer of the hand-built circuit. No copy of the solution here: a
failure says what is wrong and where.

The random model has every size different (batch 4, 20 positions, 3 layers, 3 heads,
d_head 5, d_model 24, 40 tokens) and random biases, so that a wrong axis, head or layer, or
a lost b_O, changes the losses."""
import numpy as np
import pytest

from circuits import icl_score, induction_model, repeated_random_tokens
from exercises.harness import check_close, fail, load
from minitransformer import Model
from minitransformer.interventions import HeadScale, Replay, ablate_heads, combine, replay

ex = load("ex12_ablation_icl")

B, T, L, H, E, D, V = 4, 20, 3, 3, 5, 24, 40


class Watched(Model):
    """A Model that notes where a forward is given the engine's own interventions
    (interventions.replay's Replay, ablate_heads' HeadScale) instead of hooks of one's own."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.engine_used = []

    def _forward(self, tokens, hooks=None, *args, **kwargs):
        for name, fns in dict(hooks or {}).items():
            for fn in fns if isinstance(fns, (list, tuple)) else [fns]:
                if isinstance(fn, (Replay, HeadScale)):
                    self.engine_used.append(f"{type(fn).__name__} at {name}")
        return super()._forward(tokens, hooks, *args, **kwargs)


def random_model():
    config = dict(n_layers=L, d_model=D, n_heads=H, d_head=E, n_ctx=T + 4, d_vocab=V,
                  attn_only=True, normalization_type=None, initializer_range=0.3)
    params = Model(config, seed=8, dtype=np.float64).params
    rng = np.random.default_rng(12)
    for name, value in params.items():
        if ".b_" in name:                 # biases are zero at init: make b_O and b_V count
            params[name] = rng.normal(0.0, 0.3, value.shape)
    return Watched(config, params=params, dtype=np.float64)


def off_by_one(losses, early, late, window):
    """Index i read as column i (it is column i - 1)."""
    last = losses.shape[1] - 1
    around = lambda i: losses[:, min(max(0, i - window), last):min(last, i + window) + 1].mean()
    return around(late) - around(early)


@pytest.mark.checks("icl_score")
def test_icl_score_matches_the_library():
    losses = np.random.default_rng(0).uniform(0, 5, (5, 63))
    for early, late, window in [(6, 62, 1), (10, 40, 3), (1, 63, 2), (20, 30, 0)]:
        check_close(f"icl_score(early={early}, late={late}, half_window={window})",
                    ex.icl_score(losses, early, late, window),
                    icl_score(losses, early, late, window), "circuits.icl_score", rtol=1e-9,
                    mistakes={"yours reads context index i from column i of losses: "
                              "column 0 holds context index 1": off_by_one(losses, early, late,
                                                                           window),
                              "that is early minus late; the score is late minus early":
                              -icl_score(losses, early, late, window)},
                    hint="look at which columns each window reads, where it is clipped at "
                         "the ends of the context, and whether every sequence is in the mean")


def mistaken_losses(model, tokens, cache, layer, head):
    """{what went wrong: the per-token losses it gives}, each from the engine's hooks."""
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    kept = replay(cache, names)
    b_O = model.params[f"blocks.{layer}.attn.b_O"]
    out = f"blocks.{layer}.hook_attn_out"

    def losses(*hooks):
        return model.per_token_loss(tokens, hooks=combine(*hooks))
    found = {
        "the patterns are recomputed after the ablation (a full ablation): put the clean "
        "run's recorded pattern back at every layer's hook_pattern":
        losses(ablate_heads([(layer, head)])),
        "every layer gets the last layer's recorded pattern: does the hook look up the "
        "pattern by the name it is called with, or by a loop variable (which has its last "
        "value when the hooks run)?":
        losses(replay({name: cache[names[-1]] for name in names}, names),
               ablate_heads([(layer, head)])),
        f"nothing is zeroed: the head's output reaches the rest as before. Does the hook at "
        f"blocks.{layer}.attn.hook_z return its changed copy?": losses(kept),
        f"every head of layer {layer} is zeroed, not head {head} alone":
        losses(kept, ablate_heads([(layer, h) for h in range(H)])),
        f"layer {layer}'s whole attention output is zeroed, b_O included: only head "
        f"{head}'s output goes, and b_O belongs to no head":
        losses(kept, {out: lambda a, name: np.zeros_like(a)}),
        f"b_O of layer {layer} is removed too: it belongs to the layer, not to head {head}":
        losses(kept, ablate_heads([(layer, head)]), {out: lambda a, name: a - b_O})}
    for other in range(H):
        if other != head:
            found[f"head {other} is zeroed, not head {head}: z is (B,T,H,E)"] = losses(
                kept, ablate_heads([(layer, other)]))
    position = (np.arange(T) != head)[None, :, None, None]
    found[f"position {head} is zeroed (axis 1 of z (B,T,H,E)), not head {head} (axis 2)"] = \
        losses(kept, {f"blocks.{layer}.attn.hook_z": lambda z, name: z * position})
    for other in range(L):
        if other != layer:
            found[f"head {head} of layer {other} is zeroed, not of layer {layer}"] = losses(
                kept, ablate_heads([(other, head)]))
    return found


@pytest.mark.checks("pattern_preserving_losses")
@pytest.mark.parametrize("layer, head", [(0, 2), (1, 1)])
def test_pattern_preserving_losses_match_the_engine(layer, head):
    model = random_model()
    tokens = np.random.default_rng(1).integers(0, V, (B, T))
    what = f"pattern_preserving_losses(model, tokens, {layer}, {head})"
    try:
        yours = ex.pattern_preserving_losses(model, tokens, layer, head)
    except ValueError as error:
        if "read-only" not in str(error):
            raise
        fail(f"{what}: a hook wrote into the activation it was given ({error}): hooks get "
             f"read-only arrays; change a copy and return it")
    if model.engine_used:
        fail(f"{what} uses the engine's interventions ({', '.join(model.engine_used)}): "
             f"build the ablation from hook functions of your own")
    _, cache = model.run_with_cache(tokens)
    patterns = [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    expected = model.per_token_loss(tokens, hooks=combine(replay(cache, patterns),
                                                          ablate_heads([(layer, head)])))
    check_close(f"losses without head {layer}.{head}", yours, expected,
                "the engine's pattern-preserving ablation (interventions.replay + "
                "ablate_heads)", rtol=1e-9, atol=1e-10,
                mistakes=mistaken_losses(model, tokens, cache, layer, head))


@pytest.mark.checks("icl_change")
def test_the_hand_built_circuit():
    """Ablating the induction head kills in-context learning. Ablating the previous-token
    head with patterns preserved does not: its only job was to shape head 1.0's pattern."""
    model = induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(6, 20, 3, None, 32, seed=0)
    change = ex.icl_change(model, tokens, early=10, late=55, half_window=2)
    if np.shape(change) != (2, 1):
        fail(f"icl_change should be (n_layers, n_heads) = (2, 1), got {np.shape(change)}")
    if not change[1, 0] > 1.0:
        fail(f"removing the hand-built induction head 1.0 should make late tokens much "
             f"harder (ICL score up by several nats); yours changes it by {change[1, 0]:+.2f}")
    if not abs(change[0, 0]) < 0.1:
        fail(f"with patterns preserved, removing head 0.0 should change nothing (head 1.0 "
             f"still attends where it did and copies the token it finds); yours changes the "
             f"ICL score by {change[0, 0]:+.2f}: are the patterns replayed?")


@pytest.mark.checks("icl_change")
def test_icl_change_against_the_engine():
    """Every head of a random 3-head model: the ICL score with that head ablated (patterns
    preserved, by the engine) minus the clean one, in (layer, head) order."""
    model = random_model()
    tokens = np.random.default_rng(2).integers(0, V, (B, T))
    early, late, window = 4, 16, 1
    _, cache = model.run_with_cache(tokens)
    kept = replay(cache, [f"blocks.{l}.attn.hook_pattern" for l in range(L)])
    clean = icl_score(model.per_token_loss(tokens), early, late, window)
    expected = np.array([[icl_score(model.per_token_loss(
        tokens, hooks=combine(kept, ablate_heads([(l, h)]))), early, late, window) - clean
        for h in range(H)] for l in range(L)])
    check_close("icl_change", ex.icl_change(model, tokens, early, late, window), expected,
                "the engine's ICL-score changes", rtol=1e-7, atol=1e-9,
                mistakes={"that is the ablated score alone: subtract the clean model's":
                          expected + clean,
                          "that is clean minus ablated: the change is ablated minus clean":
                          -expected,
                          "the rows are heads and the columns layers: it is (n_layers, "
                          "n_heads), change[layer, head]": expected.T})
