"""Exercise 03: the student's gradient checker must pass a correct model and catch a
broken backward; their strategy must cover the configurations."""
import numpy as np
import pytest
from hypothesis import given, settings

import minitransformer.ops
from exercises.harness import check_close, fail, load
from minitransformer.ops.layernorm import layernorm_backward

ex = load("ex03_model_gradient_check")
CASE = dict(n_layers=2, attn_only=False, normalization_type="LN",
            positional_embedding_type="shortformer", smeared_key=True, seed=3)


@pytest.mark.checks("numerical_grad")
def test_numerical_grad_of_a_known_function():
    rng = np.random.default_rng(0)
    x, dout = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    kept = x.copy()
    numeric = ex.numerical_grad(lambda: np.sin(x) * x, x, dout)
    if not np.array_equal(x, kept):
        fail("numerical_grad left x changed: put each entry back after perturbing it")
    check_close("numerical_grad of sum(sin(x) x * dout)", numeric,
                (np.cos(x) * x + np.sin(x)) * dout, "the exact derivative (cos(x) x + sin(x)) dout",
                rtol=1e-6, atol=1e-8,
                mistakes={"you divided by h instead of 2h (central differences span 2h)":
                          2 * (np.cos(x) * x + np.sin(x)) * dout},
                hint="each entry: (sum(f * dout) at x+h minus at x-h) / 2h")


@pytest.mark.checks("gradient_errors")
def test_a_correct_model_passes():
    model = ex.tiny_model(CASE)
    rng = np.random.default_rng(0)
    errors = ex.gradient_errors(model, rng.integers(0, 5, (2, 5)), rng.uniform(-1, 1, (2, 5, 5)))
    missing, extra = set(model.params) - set(errors), set(errors) - set(model.params)
    if missing or extra:
        fail(f"gradient_errors should give one error per parameter; missing "
             f"{sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    bad = {k: v for k, v in errors.items() if not v < 1e-5}
    if bad:
        fail(f"gradient_errors reports errors {bad} on the engine's correct backward; is "
             f"numerical_grad right, and do you divide by max(max|numeric|, 1e-2)?")


@pytest.mark.checks("gradient_errors")
def test_a_broken_backward_is_caught(monkeypatch):
    """Drop LayerNorm's mean term from the engine's backward: the check must say so."""
    def broken(dout, cache):
        dx, dw, db = layernorm_backward(dout, cache)
        xhat, rstd, w = cache
        return dx + rstd * (dout * w).mean(-1, keepdims=True), dw, db
    monkeypatch.setattr(minitransformer.ops, "layernorm_backward", broken)
    model = ex.tiny_model(CASE)
    rng = np.random.default_rng(0)
    errors = ex.gradient_errors(model, rng.integers(0, 5, (2, 5)), rng.uniform(-1, 1, (2, 5, 5)))
    if not errors["embed.W_E"] > 1e-3:
        fail(f"a LayerNorm backward without its mean term gives a wrong embed.W_E gradient, "
             f"but your gradient_errors reports only {errors['embed.W_E']:.1e} for it")


@pytest.mark.checks("model_cases")
def test_the_strategy_draws_valid_and_varied_models():
    seen = {k: set() for k in CASE}

    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(ex.model_cases())
    def collect(case):
        if set(case) != set(CASE):
            fail(f"model_cases should draw the keys {sorted(CASE)}, drew {sorted(case)}")
        ex.tiny_model(case)                          # a valid configuration
        for key, value in case.items():
            seen[key].add(value)

    collect()
    for key in ("n_layers", "attn_only", "normalization_type", "positional_embedding_type",
                "smeared_key"):
        if len(seen[key]) < 2:
            fail(f"in 40 draws model_cases gave {key} only {seen[key]}: draw every option")
    if len(seen["positional_embedding_type"]) < 3:
        fail(f"model_cases drew only {seen['positional_embedding_type']} positional types "
             f"of shortformer, standard, none")


@pytest.mark.checks("model_cases")
def test_the_property_holds_on_random_models():
    @settings(max_examples=6, deadline=None, database=None, derandomize=True)
    @given(ex.model_cases())
    def prop(case):
        ex.check_case(case)
    prop()
