"""Exercise 16: direct logit attribution against circuits.logit_path_terms (each head's paths,
the direct path) and the model's own logits; the logit lens against the engine's forward from
the last layer up (start_at_layer); the copies' windows against a loop and on the hand-built
induction model. Models with and without LayerNorm, with standard and shortformer positions,
biases set at random; shapes all different (2 layers, 3 heads, batch 4, T 11, d_head 8,
d_model 24, d_vocab 40), so that no axis can stand in for another."""
import numpy as np
import pytest

from circuits import induction_model, logit_path_terms, repeated_random_tokens
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex16_logit_attribution")

L, H, B, T, D, V = 2, 3, 4, 11, 24, 40
MODELS = {"without LayerNorm": (None, "standard"), "with LayerNorm": ("LN", "shortformer")}
OFF_BY_ONE = ("you read the logit of the token at the prediction's own position; prediction t "
              "is scored on the next token, tokens[:, t + 1]")


def random_model(which, **overrides):
    """A random model (float64) with every bias, and LayerNorm's gain and bias, set at
    random; overrides: parameters to set instead (e.g. {"unembed.b_U": 0})."""
    normalization, positions = MODELS[which]
    config = dict(n_layers=L, d_model=D, n_heads=H, d_head=8, n_ctx=16, d_vocab=V, attn_only=True,
                  normalization_type=normalization, positional_embedding_type=positions,
                  initializer_range=0.4)
    params = dict(Model(config, seed=3, dtype=np.float64).params)
    rng = np.random.default_rng(5)
    for name in sorted(params):
        if name.rsplit(".", 1)[1] in ("b_Q", "b_K", "b_V", "b_O", "b_U", "b"):
            params[name] = rng.normal(0, 0.5, params[name].shape)
        elif name.endswith(".w"):
            params[name] = 1 + rng.normal(0, 0.3, params[name].shape)
    for name, value in overrides.items():
        params[name] = np.broadcast_to(value, params[name].shape).copy()
    return Model(config, params=params, dtype=np.float64)


def random_tokens():
    return np.random.default_rng(7).integers(1, V, size=(B, T))


def at(x, tokens, shift=0):
    """x (B,T,V) -> (B,T-1): prediction t's entry at the correct token (shift 0), or, for the
    off-by-one mistakes, at position t of tokens[:, t] (shift -1) or position t + 1 of
    tokens[:, t + 1] (shift +1)."""
    rows = x[:, :-1] if shift <= 0 else x[:, 1:]
    read = tokens[:, 1:] if shift >= 0 else tokens[:, :-1]
    return np.take_along_axis(rows, read[..., None], -1)[..., 0]


def off_by_one(x, tokens):
    return {OFF_BY_ONE: at(x, tokens, -1), OFF_BY_ONE + " ": at(x, tokens, +1)}


class ReadCache(dict):
    """The cache as the code under test sees it; `read` lists the activations it looked up."""

    def __init__(self, cache):
        super().__init__(cache)
        self.read = []

    def __getitem__(self, name):
        self.read.append(name)
        return super().__getitem__(name)

    def get(self, name, default=None):
        self.read.append(name)
        return super().get(name, default)


def read_hook_z_only(read):
    return (any(n.endswith("hook_z") for n in read)
            and not any(n.endswith("hook_result") for n in read))


def attribute(model, tokens):
    """ex.direct_logit_attribution on model's own cache -> (yours, activation names read).
    An IndexError or ValueError (shapes that do not fit) becomes a message saying what the
    shapes are."""
    _, cache = model.run_with_cache(tokens)
    seen = ReadCache(cache)
    cfg = model.config
    try:
        yours = ex.direct_logit_attribution(model, seen, tokens)
    except (IndexError, ValueError) as error:
        if read_hook_z_only(seen.read):
            fail(f"direct_logit_attribution raised {type(error).__name__} ({error}) after "
                 f"reading hook_z: hook_z (B, T, H, d_head={cfg.d_head}) is what a head's "
                 f"attention mixed, before W_O; what the head writes into the residual stream, "
                 f"which W_U reads, is hook_result (B, T, H, d_model={cfg.d_model})")
        fail(f"direct_logit_attribution raised {type(error).__name__} ({error}): W_U is "
             f"(d_model, d_vocab) = ({cfg.d_model}, {cfg.d_vocab}), so a token's unembedding "
             f"is a column, on W_U's second axis, and hook_result is (B, T, H, "
             f"d_model={cfg.d_model})")
    for field in ("heads", "embed", "biases"):
        if not hasattr(yours, field):
            fail(f"direct_logit_attribution should return a LogitAttribution (heads, embed, "
                 f"biases); yours has no {field!r}")
    return yours, seen.read


def engine_parts(model, tokens):
    """From circuits.logit_path_terms, (B,T,V) each: every head's direct part (all the paths
    that end at it: what it writes, read by W_U) (L,H,B,T,V), and the direct path (B,T,V)."""
    terms = logit_path_terms(model, tokens)
    heads = np.zeros((model.config.n_layers, model.config.n_heads) + terms[()].shape)
    for path, term in terms.items():
        if path:
            heads[path[-1]] += term
    return heads, terms[()]


def direct_path(model, tokens):
    return engine_parts(model, tokens)[1]


def final_scale(model, tokens):
    """(B, T-1): ln_final's frozen std at each prediction."""
    _, cache = model.run_with_cache(tokens)
    return cache["ln_final.hook_scale"][:, :-1, 0]


@pytest.mark.checks("direct_logit_attribution")
@pytest.mark.parametrize("which", MODELS)
def test_each_heads_part(which):
    model, tokens = random_model(which), random_tokens()
    yours, read = attribute(model, tokens)
    check_shape("heads", yours.heads, (L, H, B, T - 1),
                "[layer, head, batch, prediction t = 0 .. T-2]")
    heads, _ = engine_parts(model, tokens)
    expected = np.stack([[at(heads[l, h], tokens) for h in range(H)] for l in range(L)])
    mistakes = {OFF_BY_ONE: np.stack([[at(heads[l, h], tokens, -1) for h in range(H)]
                                      for l in range(L)]),
                OFF_BY_ONE + " ": np.stack([[at(heads[l, h], tokens, +1) for h in range(H)]
                                            for l in range(L)])}
    hint = "a head's part is what it writes into the stream, as the unembedding reads it"
    if model.config.normalization_type == "LN":
        mistakes["each part must be divided by ln_final's scale (cache 'ln_final.hook_scale'), "
                 "as ln_final divides the whole stream"] = expected * final_scale(model, tokens)
        hint += ("; with LayerNorm, through ln_final's centring, its frozen scale "
                 "('ln_final.hook_scale') and its w, as the stream is")
    if read_hook_z_only(read):
        hint += ("; you read hook_z, before W_O: what a head writes into the stream is "
                 "hook_result")
    check_close(f"heads ({which})", yours.heads, expected,
                "each head's paths in circuits.logit_path_terms", rtol=1e-6, atol=1e-9,
                mistakes=mistakes, hint=hint)


@pytest.mark.checks("direct_logit_attribution")
@pytest.mark.parametrize("which", MODELS)
def test_the_embedding_and_the_biases(which):
    """embed + biases is the direct path (no head on it); the biases are what changes when
    the model's b_U, b_O or ln_final.b are set to zero."""
    model, tokens = random_model(which), random_tokens()
    yours, _ = attribute(model, tokens)
    for field in ("embed", "biases"):
        check_shape(field, getattr(yours, field), (B, T - 1), "[batch, prediction t = 0 .. T-2]")
    if model.config.normalization_type is None:
        no_bias = {f"blocks.{l}.attn.b_O": 0 for l in range(L)} | {"unembed.b_U": 0}
        tokens_only = dict(no_bias, **{"pos_embed.W_pos": 0})
        embedding = direct_path(random_model(which, **no_bias), tokens)
        mistakes = off_by_one(embedding, tokens)
        mistakes["the embedding's part is the whole stream entering layer 0 "
                 "(blocks.0.hook_resid_pre): with standard positions, the positional "
                 "embedding is in it too"] = at(direct_path(random_model(which, **tokens_only),
                                                            tokens), tokens)
        check_close(f"embed ({which})", yours.embed, at(embedding, tokens),
                    "the direct path of the model without biases", rtol=1e-6, atol=1e-9,
                    mistakes=mistakes, hint="embed is what the embedding wrote, as the "
                    "unembedding reads it; no bias belongs in it")
    expected = at(direct_path(model, tokens), tokens)
    mistakes = off_by_one(direct_path(model, tokens), tokens)
    # b_U and ln_final.b come after the stream, so zeroing them leaves the rest as it was
    mistakes["b_U is missing: the unembedding's bias belongs in biases"] = at(
        direct_path(random_model(which, **{"unembed.b_U": 0}), tokens), tokens)
    if model.config.normalization_type == "LN":
        mistakes["ln_final's b is missing: ln_final adds it after the scale, and W_U reads it"] = \
            at(direct_path(random_model(which, **{"ln_final.b": 0}), tokens), tokens)
    else:   # without LayerNorm, b_O's part does not depend on the rest of the stream
        no_b_O = {f"blocks.{l}.attn.b_O": 0 for l in range(L)}
        mistakes["b_O is missing: every layer adds its b_O to the stream (hook_result leaves "
                 "it out), and it belongs in biases"] = at(
            direct_path(random_model(which, **no_b_O), tokens), tokens)
    check_close(f"embed + biases ({which})", yours.embed + yours.biases, expected,
                "the direct path of circuits.logit_path_terms", rtol=1e-6, atol=1e-9,
                mistakes=mistakes,
                hint="biases holds every b_O, b_U and, with LayerNorm, ln_final's b, read at "
                     "the correct token")


@pytest.mark.checks("direct_logit_attribution")
@pytest.mark.parametrize("which", MODELS)
def test_the_parts_sum_to_the_logit(which):
    model, tokens = random_model(which), random_tokens()
    yours, _ = attribute(model, tokens)
    total = np.sum(yours.heads, axis=(0, 1)) + yours.embed + yours.biases
    logits = model.forward(tokens)
    check_close(f"heads + embed + biases ({which})", total, at(logits, tokens),
                "the model's logit of the correct token (model.forward)", rtol=1e-6, atol=1e-9,
                mistakes=off_by_one(logits, tokens),
                hint="the parts should add up to the logit: is a bias (b_O of each layer, b_U, "
                     "ln_final's b) missing, or one part read differently from the others?")


@pytest.mark.checks("direct_logit_attribution")
def test_the_hand_built_induction_head_writes_the_copied_token():
    model, length = induction_model(d_vocab=32, n_ctx=64), 20
    tokens = repeated_random_tokens(3, length, 2, None, 32, seed=1)
    _, cache = model.run_with_cache(tokens)
    heads = ex.direct_logit_attribution(model, cache, tokens).heads
    second = heads[1, 0, :, length + 1:]
    if not second.min() > 9:
        fail(f"head 1.0 of the hand-built model copies the token after the earlier "
             f"occurrence with logit 10, which is the correct token on the second copy "
             f"(predictions t = {length + 1} .. {2 * length - 1}); yours gives it as little as "
             f"{second.min():.2f}")


def lens_expected(model, tokens, final_ln_scale=False, without_ln=False):
    """The engine's log-probabilities (L+1, B, T, V) from each stream: the forward from
    layer n_layers up, i.e. only ln_final and the unembedding, on that stream.
    final_ln_scale: with ln_final's scale fixed at the last stream's (a mistake);
    without_ln: from the same weights without ln_final (a mistake)."""
    _, cache = model.run_with_cache(tokens)
    streams = [cache["blocks.0.hook_resid_pre"]] + [cache[f"blocks.{l}.hook_resid_post"]
                                                    for l in range(L)]
    hooks = None
    if final_ln_scale:
        hooks = {"ln_final.hook_scale": lambda scale, name: cache["ln_final.hook_scale"]}
    if without_ln:
        config = dict(model.config.to_dict(), normalization_type=None)
        model = Model(config, params={k: v for k, v in model.params.items() if "ln" not in k},
                      dtype=np.float64)
    logits = np.stack([model.forward(tokens, hooks=hooks, start_at_layer=L, resid_pre=stream)
                       for stream in streams])
    shifted = logits - logits.max(-1, keepdims=True)
    return logits, shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.mark.checks("logit_lens")
@pytest.mark.parametrize("which", MODELS)
def test_logit_lens_against_the_engine(which):
    model, tokens = random_model(which), random_tokens()
    _, cache = model.run_with_cache(tokens)
    yours = ex.logit_lens(model, cache, tokens)
    check_shape("logit_lens", yours, (L + 1, B, T - 1),
                "one row for the stream entering layer 0 (blocks.0.hook_resid_pre), then one "
                "after each layer; [row, batch, prediction t = 0 .. T-2]")
    logits, log_probs = lens_expected(model, tokens)
    rows = lambda x, shift=0: np.stack([at(row, tokens, shift) for row in x])   # noqa: E731
    mistakes = {OFF_BY_ONE: rows(log_probs, -1), OFF_BY_ONE + " ": rows(log_probs, +1),
                "that is the correct token's logit; the lens reads its log-probability, "
                "normalised over the whole vocabulary (a log-softmax)": rows(logits)}
    if model.config.normalization_type == "LN":
        mistakes["each stream goes through ln_final before W_U, as the last one does"] = \
            rows(lens_expected(model, tokens, without_ln=True)[1])
        mistakes["ln_final's scale is each stream's own: apply ln_final in full to each, not "
                 "with the last stream's scale"] = \
            rows(lens_expected(model, tokens, final_ln_scale=True)[1])
    check_close(f"logit_lens ({which})", yours, rows(log_probs),
                "ln_final and the unembedding of the engine on each stream", rtol=1e-6,
                atol=1e-9, mistakes=mistakes,
                hint="the rows are the stream entering layer 0, then after layer 0, 1, ... "
                     "in order")


def loop_means(heads, first_copy, second_copy):
    """(2, L, H): the mean over the batch and the given predictions t, by a loop."""
    return np.array([[[np.mean([heads[l, h, b, t] for b in range(heads.shape[2]) for t in ts])
                       for h in range(heads.shape[1])] for l in range(heads.shape[0])]
                     for ts in (first_copy, second_copy)])


@pytest.mark.checks("attribution_by_copy")
def test_attribution_by_copy_against_a_loop():
    length = 7
    # three copies: T - 1 = 3 length predictions; only the first two copies are read
    heads = np.random.default_rng(2).normal(size=(L, H, B, 3 * length))
    first, second = range(1, length), range(length + 1, 2 * length)
    check_close("attribution_by_copy", ex.attribution_by_copy(heads, length),
                loop_means(heads, first, second), "a loop over the predictions t", rtol=1e-9,
                mistakes={"prediction t = length, the second copy's first token, cannot be "
                          "predicted: it belongs to neither copy":
                          loop_means(heads, first, range(length, 2 * length)),
                          "prediction t = 0 is made at BOS, before the first copy":
                          loop_means(heads, range(0, length), second),
                          "a prediction is made at position t and predicts t + 1: count it in "
                          "a copy when both are inside it":
                          loop_means(heads, range(0, length - 1), range(length, 2 * length - 1)),
                          "read the second copy only, not the predictions after it":
                          loop_means(heads, first, range(length + 1, 3 * length))},
                hint="first copy: predictions made at its tokens of their next token in it; "
                     "then the same for the second, and the mean over the batch and those")


@pytest.mark.checks("attribution_by_copy")
def test_the_hand_built_induction_head_writes_the_second_copy():
    model, length = induction_model(d_vocab=32, n_ctx=64), 20
    tokens = repeated_random_tokens(3, length, 2, None, 32, seed=1)
    heads, _ = engine_parts(model, tokens)                         # (2, 1, B, T, V) here
    heads = np.stack([[at(heads[l, 0], tokens)] for l in range(2)])
    first, second = np.asarray(ex.attribution_by_copy(heads, length))
    if not (second[1, 0] > 9 and abs(first[1, 0]) < 1):
        fail(f"head 1.0 of the hand-built model writes the correct token with logit 10 on "
             f"the second copy and ~0 on the first; yours gives {first[1, 0]:.2f} (first) "
             f"and {second[1, 0]:.2f} (second)")
