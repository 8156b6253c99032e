"""Exercise 16's checks catch the typical mistakes (teacher-only): each mistake is applied to
the reference solution (its inputs changed, or a variant of it), exercise 16's check is run
on it, and the check must fail with a message that names the mistake."""
import dataclasses
import types

import numpy as np
import pytest

from exercises import test_16_logit_attribution as checks
from exercises.solutions import ex16_logit_attribution as solution


def current_as_next(tokens):
    """tokens whose [:, 1:] are the original [:, :-1]: code that reads tokens[:, t + 1] as
    prediction t's correct token then reads the current token, tokens[:, t]."""
    tokens = np.asarray(tokens)
    return np.concatenate([tokens[:, :1], tokens[:, :-1]], axis=1)


def with_params(model, **zeroed):
    """The model as the solution sees it (config, params), with those parameters zero."""
    params = dict(model.params, **{name: np.zeros_like(model.params[name]) for name in zeroed})
    return types.SimpleNamespace(config=model.config, params=params)


class Swapped(dict):
    """A cache whose entries `swap` redirects: {name: another name, or fn(cache) -> array};
    every read goes through the original cache (which notes what was read)."""

    def __init__(self, cache, swap):
        super().__init__(cache)
        self.cache, self.swap = cache, swap

    def __getitem__(self, name):
        new = self.swap.get(name, name)
        return new(self.cache) if callable(new) else self.cache[new]


def dla(model=lambda m: m, cache=lambda c: c, tokens=lambda t: t):
    """direct_logit_attribution with its inputs changed as a mistake would change them."""
    return lambda m, c, t: solution.direct_logit_attribution(model(m), cache(c), tokens(t))


def lens_variant(log_softmax=True, scale_of_last=False):
    """The logit lens with a mistake: logits read instead of log-probabilities, or ln_final
    applied to every stream with the last stream's scale."""
    def logit_lens(model, cache, tokens):
        cfg, p = model.config, model.params
        names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post"
                                               for l in range(cfg.n_layers)]
        streams = np.stack([cache[name][:, :-1] for name in names])
        if cfg.normalization_type == "LN":
            centred = streams - streams.mean(-1, keepdims=True)
            scale = (cache["ln_final.hook_scale"][:, :-1] if scale_of_last
                     else np.sqrt((centred ** 2).mean(-1, keepdims=True) + 1e-5))
            streams = centred / scale * p["ln_final.w"] + p["ln_final.b"]
        logits = streams @ p["unembed.W_U"] + p["unembed.b_U"]
        if log_softmax:
            m = logits.max(-1, keepdims=True)
            logits = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
        return np.take_along_axis(logits, np.asarray(tokens)[None, :, 1:, None], -1)[..., 0]
    return logit_lens


def by_copy(first, second):
    """attribution_by_copy over the given slices of predictions."""
    return lambda heads, length: np.stack([heads[..., first(length)].mean(axis=(2, 3)),
                                           heads[..., second(length)].mean(axis=(2, 3))])


NO_B_O = {f"blocks.{l}.attn.b_O": 0 for l in range(checks.L)}
HOOK_Z = {f"blocks.{l}.attn.hook_result": f"blocks.{l}.attn.hook_z" for l in range(checks.L)}
UNSCALED = {"ln_final.hook_scale": lambda c: np.ones_like(c["ln_final.hook_scale"])}
NO_LN = lambda m: types.SimpleNamespace(                               # noqa: E731
    config=dataclasses.replace(m.config, normalization_type=None), params=m.params)

# (mistake, function, its mistaken version, the check (test function and its argument),
#  words the check's message must contain)
MISTAKES = [
    ("logit of the current token", "direct_logit_attribution", dla(tokens=current_as_next),
     (checks.test_each_heads_part, "without LayerNorm"), "the next token"),
    ("logit of the current token, the parts' sum", "direct_logit_attribution",
     dla(tokens=current_as_next), (checks.test_the_parts_sum_to_the_logit, "with LayerNorm"),
     "the next token"),
    ("W_U indexed on the wrong axis", "direct_logit_attribution",
     dla(model=lambda m: types.SimpleNamespace(
         config=m.config, params=dict(m.params, **{"unembed.W_U": m.params["unembed.W_U"].T}))),
     (checks.test_each_heads_part, "without LayerNorm"), "W_U's second axis"),
    ("b_U forgotten", "direct_logit_attribution",
     dla(model=lambda m: with_params(m, **{"unembed.b_U": 0})),
     (checks.test_the_embedding_and_the_biases, "with LayerNorm"), "b_U is missing"),
    ("b_U forgotten, the parts' sum", "direct_logit_attribution",
     dla(model=lambda m: with_params(m, **{"unembed.b_U": 0})),
     (checks.test_the_parts_sum_to_the_logit, "without LayerNorm"), "is a bias"),
    ("b_O forgotten", "direct_logit_attribution", dla(model=lambda m: with_params(m, **NO_B_O)),
     (checks.test_the_embedding_and_the_biases, "without LayerNorm"), "b_O is missing"),
    ("b_O forgotten, with LayerNorm", "direct_logit_attribution",
     dla(model=lambda m: with_params(m, **NO_B_O)),
     (checks.test_the_embedding_and_the_biases, "with LayerNorm"), "every b_O"),
    ("ln_final's b forgotten", "direct_logit_attribution",
     dla(model=lambda m: with_params(m, **{"ln_final.b": 0})),
     (checks.test_the_embedding_and_the_biases, "with LayerNorm"), "ln_final's b is missing"),
    ("hook_z instead of hook_result", "direct_logit_attribution",
     dla(cache=lambda c: Swapped(c, HOOK_Z)), (checks.test_each_heads_part, "with LayerNorm"),
     "hook_result (B, T, H, d_model"),
    ("LayerNorm's scale forgotten", "direct_logit_attribution",
     dla(cache=lambda c: Swapped(c, UNSCALED)), (checks.test_each_heads_part, "with LayerNorm"),
     "divided by ln_final's scale"),
    ("token embedding without the positions", "direct_logit_attribution",
     dla(cache=lambda c: Swapped(c, {"blocks.0.hook_resid_pre": "hook_embed"})),
     (checks.test_the_embedding_and_the_biases, "without LayerNorm"), "positional embedding"),
    ("lens: log-prob of the current token", "logit_lens",
     lambda m, c, t: solution.logit_lens(m, c, current_as_next(t)),
     (checks.test_logit_lens_against_the_engine, "with LayerNorm"), "the next token"),
    ("lens: logits, not log-probabilities", "logit_lens", lens_variant(log_softmax=False),
     (checks.test_logit_lens_against_the_engine, "without LayerNorm"), "log-probability"),
    ("lens: ln_final skipped", "logit_lens", lambda m, c, t: solution.logit_lens(NO_LN(m), c, t),
     (checks.test_logit_lens_against_the_engine, "with LayerNorm"), "through ln_final"),
    ("lens: the last stream's LayerNorm scale for every stream", "logit_lens",
     lens_variant(scale_of_last=True),
     (checks.test_logit_lens_against_the_engine, "with LayerNorm"), "each stream's own"),
    ("lens: no row for the embedding", "logit_lens",
     lambda m, c, t: solution.logit_lens(m, c, t)[1:],
     (checks.test_logit_lens_against_the_engine, "without LayerNorm"), "blocks.0.hook_resid_pre"),
    ("copies: the unpredictable first token of the second copy counted", "attribution_by_copy",
     by_copy(lambda n: slice(1, n), lambda n: slice(n, 2 * n)),
     (checks.test_attribution_by_copy_against_a_loop,), "belongs to neither copy"),
    ("copies: the first copy from BOS", "attribution_by_copy",
     by_copy(lambda n: slice(0, n), lambda n: slice(n + 1, 2 * n)),
     (checks.test_attribution_by_copy_against_a_loop,), "made at BOS"),
    ("copies: each window one prediction early", "attribution_by_copy",
     by_copy(lambda n: slice(0, n - 1), lambda n: slice(n, 2 * n - 1)),
     (checks.test_attribution_by_copy_against_a_loop,), "predicts t + 1"),
    ("copies: the second copy read to the end", "attribution_by_copy",
     by_copy(lambda n: slice(1, n), lambda n: slice(n + 1, None)),
     (checks.test_attribution_by_copy_against_a_loop,), "the second copy only"),
]


@pytest.mark.parametrize("mistake, function, mistaken, check, words", MISTAKES,
                         ids=[m[0] for m in MISTAKES])
def test_the_check_names_the_mistake(monkeypatch, mistake, function, mistaken, check, words):
    test, *args = check
    functions = {name: getattr(solution, name) for name in
                 ("direct_logit_attribution", "logit_lens", "attribution_by_copy")}
    functions[function] = mistaken
    monkeypatch.setattr(checks, "ex", types.SimpleNamespace(**functions))
    with pytest.raises(pytest.fail.Exception) as failure:
        test(*args)
    assert words in failure.value.msg, f"{mistake}: the check says {failure.value.msg!r}"


def test_the_reference_passes_these_checks(monkeypatch):
    monkeypatch.setattr(checks, "ex", solution)
    for test, *args in {m[3] for m in MISTAKES}:
        test(*args)
