"""Exercise 03: the student's finite differences are checked on functions whose derivative is
known (one whose outputs mix several inputs, so a dout read at the wrong entry shows; a
quadratic, on which central differences are exact and one-sided ones are not); their
gradient check must pass the engine's correct backward and catch two broken ones, one of
which a dout the same everywhere (all ones) cannot see; their strategy must draw every
option. The checks that run gradient_errors first make sure numerical_grad passes its own
(and the property test that gradient_errors does), and fail at once naming the one that
fails: a drawn configuration failing says less.

Sizes differ (x 3 x 4 against outputs 3 x 5; the tiny model: batch 2, 5 positions, 8 tokens,
d_model 6, 2 heads of 3, d_mlp 7), so that no axis stands in for another.

For the teacher: minitransformer.gradcheck.finite_differences is numerical_grad's answer in
the engine; the checks here hold no copy of it or of gradient_errors."""
import numpy as np
import pytest
from hypothesis import Phase, given, settings

import minitransformer.ops
from exercises.harness import check_close, check_shape, fail, load
from minitransformer.ops.layernorm import layernorm_backward

ex = load("ex03_model_gradient_check")
CASE = dict(n_layers=2, attn_only=False, normalization_type="LN",
            positional_embedding_type="shortformer", smeared_key=True, seed=3)
VOCAB = 8
PASSED = {}      # check name -> the student's functions it passed with (not run twice)


def students(*names):
    """The student's functions of these names, now (before any spy is put in their place)."""
    return tuple(getattr(ex, name) for name in names)


def passed(check, functions):
    """Remember that `check` passed with `functions` (from students())."""
    PASSED[check.__name__] = functions


def fail_unless_passes(what, *checks):
    """Run each (check, the functions it checks, its arguments) unless it passed already with
    these functions; if one fails, fail at once naming it (a NotImplementedError goes
    through)."""
    for check, functions, *args in checks:
        current = students(*functions)
        remembered = PASSED.get(check.__name__)
        if remembered is not None and all(a is b for a, b in zip(remembered, current)):
            continue
        try:
            check(*args)
        except pytest.fail.Exception as failure:
            fail(f"{what} not run: your {' and '.join(functions)} "
                 f"fail{'s' * (len(functions) == 1)} {check.__name__} first. Fix that: "
                 f"{failure.msg}")


# ---- numerical_grad -----------------------------------------------------------------------

def known(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3, 4)), rng.normal(size=(4, 5)), rng.normal(size=(3, 5))


def numerical_of(f, x, dout):
    """The student's numerical_grad of f at x; x must be left as it was."""
    kept = x.copy()
    numeric = ex.numerical_grad(f, x, dout)
    if not np.array_equal(x, kept):
        fail("numerical_grad left x changed: put each entry back after perturbing it (f() "
             "and the caller read x afterwards)")
    check_shape("numerical_grad", numeric, x.shape, "one derivative per entry of x, shaped "
                                                    "like x (not like f's output or dout)")
    return np.asarray(numeric, dtype=np.float64)


ONE_SIDED = ("yours is off by h/2 times the second derivative at every entry, the curvature "
             "a one-sided difference keeps: take x + h and x - h, whose curvature terms cancel")


def one_sided(gap, curvature, h=1e-6):
    """Is gap (yours - exact) +-h/2 times the second derivative `curvature`, everywhere?"""
    c = float((gap * curvature).sum() / (curvature * curvature).sum())
    return (abs(abs(c) - h / 2) < 0.05 * h
            and np.abs(gap - c * curvature).max() < 0.1 * np.abs(gap).max())


@pytest.mark.checks("numerical_grad")
def test_numerical_grad_of_a_known_function():
    """f = sin(x) A mixes the entries of each row of x into 5 outputs: d sum(f dout) / dx =
    cos(x) * (dout A^T), by calculus."""
    functions = students("numerical_grad")
    x, A, dout = known()
    numeric = numerical_of(lambda: np.sin(x) @ A, x, dout)
    exact = np.cos(x) * (dout @ A.T)
    cause = ""
    if one_sided(numeric - exact, -np.sin(x) * (dout @ A.T)):
        cause = ONE_SIDED
    elif np.abs(numeric).max() == 0:
        cause = ("yours is 0 everywhere: f() never saw your change. Perturb x itself, in "
                 "place (through a view of it, not a copy)")
    elif np.allclose(numeric, np.cos(x) * (np.ones_like(dout) @ A.T), rtol=1e-6):
        cause = ("yours is the derivative of sum(f()): dout is left out, and a check with "
                 "dout all ones cannot tell outputs apart")
    elif np.allclose(numeric, 2 * exact, rtol=1e-6):
        cause = "yours is twice the derivative: x + h and x - h lie 2h apart"
    elif np.allclose(numeric, exact / 2, rtol=1e-6):
        cause = "yours is half the derivative: x + h and x - h lie 2h apart, not 4h"
    elif np.allclose(numeric, -exact, rtol=1e-6):
        cause = "yours has the wrong sign: up minus down"
    check_close("numerical_grad of sum(sin(x) A * dout)", numeric, exact,
                "the exact derivative", rtol=1e-6, atol=1e-8, hint=cause)
    passed(test_numerical_grad_of_a_known_function, functions)


@pytest.mark.checks("numerical_grad")
def test_numerical_grad_is_central():
    """f = (x * x) A: central differences are exact on a quadratic (up to rounding, ~1e-9
    here); a one-sided difference is off by h * (dout A^T), ~1e-6."""
    functions = students("numerical_grad")
    x, A, dout = known(1)
    numeric = numerical_of(lambda: (x * x) @ A, x, dout)
    exact = 2 * x * (dout @ A.T)
    cause = ONE_SIDED if one_sided(numeric - exact, 2 * (dout @ A.T)) else ""
    check_close("numerical_grad of sum((x * x) A * dout)", numeric, exact,
                "the exact derivative", rtol=1e-7, atol=1e-8, hint=cause)
    passed(test_numerical_grad_is_central, functions)


NUMERICAL_GRAD_CHECKS = ((test_numerical_grad_of_a_known_function, ("numerical_grad",)),
                         (test_numerical_grad_is_central, ("numerical_grad",)))


# ---- gradient_errors ----------------------------------------------------------------------

def inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (2, 5)), rng.uniform(-1, 1, (2, 5, VOCAB))


class Watched:
    """What gradient_errors gives the model's backward and numerical_grad, for a message."""

    def __init__(self, monkeypatch, model):
        self.to_backward, self.to_numerical, self.perturbed = [], [], []
        self.params = list(model.params.values())
        engine_backward = model.backward

        def backward(dlogits, cache):
            self.to_backward.append(np.array(dlogits, dtype=np.float64))
            return engine_backward(dlogits, cache)
        model.backward = backward
        theirs = ex.numerical_grad
        if "numerical_grad" in getattr(ex.gradient_errors, "__globals__", {}):
            def numerical_grad(f, x, dout, *args, **kwargs):
                self.to_numerical.append(np.array(dout, dtype=np.float64))
                self.perturbed.append(any(x is p for p in self.params))
                return theirs(f, x, dout, *args, **kwargs)
            monkeypatch.setitem(ex.gradient_errors.__globals__, "numerical_grad",
                                numerical_grad)

    def dout_problem(self, dlogits):
        """Where gradient_errors did not pass on the dlogits given, in words (or '')."""
        for where, received in (("model.backward", self.to_backward),
                                ("numerical_grad", self.to_numerical)):
            other = [d for d in received if d.shape != dlogits.shape or not np.allclose(d, dlogits)]
            if other:
                what = ("a dout of all ones" if np.allclose(other[0], 1.0)
                        else "another array")
                return f"your gradient_errors gives {where} {what}, not the dlogits it was given"
        return ""

    def copies(self):
        """Did gradient_errors give numerical_grad copies, not the model's arrays?"""
        return bool(self.perturbed) and not any(self.perturbed)


def errors_of(model, tokens, dlogits):
    errors = ex.gradient_errors(model, tokens, dlogits)
    missing, extra = set(model.params) - set(errors), set(errors) - set(model.params)
    if missing or extra:
        fail(f"gradient_errors should give one error per parameter, keyed like model.params; "
             f"missing {sorted(missing)[:3]}, extra {sorted(extra)[:3]}")
    return {name: float(value) for name, value in errors.items()}


@pytest.mark.checks("gradient_errors")
def test_a_correct_model_passes(monkeypatch):
    fail_unless_passes("gradient_errors' checks", *NUMERICAL_GRAD_CHECKS)
    functions = students("numerical_grad", "gradient_errors")
    model = ex.tiny_model(CASE)
    watched = Watched(monkeypatch, model)
    tokens, dlogits = inputs()
    errors = errors_of(model, tokens, dlogits)
    bad = {k: v for k, v in errors.items() if not v < 1e-5}
    if bad:
        worst = max(bad, key=bad.get)
        said = watched.dout_problem(dlogits)
        if said:
            cause = f"{said}: both sides must differentiate the same sum(logits * dlogits)"
        elif set(bad) <= {f"blocks.{l}.attn.b_K" for l in range(2)}:
            cause = ("b_K's gradient is exactly 0 (softmax ignores a constant added to a row "
                     "of scores), so finite differences give rounding noise there: what you "
                     "divide by must not fall below the docstring's floor")
        elif watched.copies():
            cause = ("numerical_grad is given copies, not the model's own arrays "
                     "(model.params[name]): perturbing a copy never moves the logits")
        else:
            cause = ("is each parameter's numeric gradient compared with the backward's of the "
                     "same name, relative to the numeric gradient's largest entry?")
        fail(f"gradient_errors reports {len(bad)} parameter{'s' * (len(bad) > 1)} wrong on the "
             f"engine's correct backward, worst {worst} ({bad[worst]:.2g}): {cause}")
    passed(test_a_correct_model_passes, functions)


def without_the_mean_term(monkeypatch, model):
    """The engine's LayerNorm backward, its mean term dropped: wrong for any dlogits."""
    def broken(dout, cache):
        dx, dw, db = layernorm_backward(dout, cache)
        xhat, rstd, w = cache
        return dx + rstd * (dout * w).mean(-1, keepdims=True), dw, db
    monkeypatch.setattr(minitransformer.ops, "layernorm_backward", broken)
    return model


def one_position_off(monkeypatch, model):
    """The model's backward reading each position's dlogits from the position before: a
    dlogits the same everywhere (all ones) cannot show it."""
    engine_backward = model.backward
    model.backward = lambda dlogits, cache: engine_backward(np.roll(dlogits, 1, axis=1), cache)
    return model


BROKEN = {"LayerNorm's backward without its mean term": (without_the_mean_term, "embed.W_E"),
          "a backward that reads each position's dlogits from the position before":
          (one_position_off, "unembed.W_U")}


@pytest.mark.checks("gradient_errors")
@pytest.mark.parametrize("broken", BROKEN, ids=["LN mean term", "dlogits one position off"])
def test_a_broken_backward_is_caught(monkeypatch, broken):
    fail_unless_passes("gradient_errors' checks", *NUMERICAL_GRAD_CHECKS)
    make_broken, parameter = BROKEN[broken]
    model = ex.tiny_model(CASE)
    watched = Watched(monkeypatch, model)
    make_broken(monkeypatch, model)
    tokens, dlogits = inputs()
    errors = errors_of(model, tokens, dlogits)
    name = parameter
    if not errors[name] > 1e-3:
        said = watched.dout_problem(dlogits)
        fail(f"with {broken}, the gradients are wrong (of {name} too), but your gradient_errors "
             f"reports only {errors[name]:.1e} for {name}: "
             + (f"{said}, and a dout the same at every position cannot tell positions apart"
                if said else "does it compare the model's backward with finite differences "
                             "of the same sum(logits * dlogits)?"))


# ---- model_cases --------------------------------------------------------------------------

@pytest.mark.checks("model_cases")
def test_the_strategy_draws_valid_and_varied_models():
    seen = {k: set() for k in CASE}

    @settings(max_examples=40, deadline=None, database=None, derandomize=True)
    @given(ex.model_cases())
    def collect(case):
        if set(case) != set(CASE):
            fail(f"model_cases should draw the keys {sorted(CASE)}, drew {sorted(case)}")
        try:
            ex.tiny_model(case)                      # a valid configuration
        except (ValueError, TypeError) as error:
            fail(f"model_cases drew {case}, which is not a valid configuration: {error}")
        for key, value in case.items():
            seen[key].add(value)

    collect()
    for key in ("n_layers", "attn_only", "normalization_type", "positional_embedding_type",
                "smeared_key", "seed"):
        if len(seen[key]) < 2:
            fail(f"in 40 draws model_cases gave {key} only {seen[key]}: draw every option"
                 + (" (a seed drawn from a range, so that the models differ)"
                    if key == "seed" else ""))
    if len(seen["positional_embedding_type"]) < 3:
        fail(f"model_cases drew only {seen['positional_embedding_type']} positional types "
             f"of shortformer, standard, none")


@pytest.mark.checks("model_cases")
def test_the_property_holds_on_random_models(monkeypatch):
    fail_unless_passes("the property test", *NUMERICAL_GRAD_CHECKS,
                       (test_a_correct_model_passes, ("numerical_grad", "gradient_errors"),
                        monkeypatch))
    @settings(max_examples=6, deadline=None, database=None, derandomize=True,
              phases=(Phase.generate,))           # no shrinking: a failure is named at once
    @given(ex.model_cases())
    def prop(case):
        ex.check_case(case)
    try:
        prop()
    except AssertionError as failure:
        fail(f"check_case fails on a configuration model_cases drew, with the engine's correct "
             f"backward: {failure}. Your gradient_errors passes on the fixed model, so the "
             f"drawn one differs: is every drawn field a ModelConfig value?")
