"""Exercise 03: a whole-model gradient check with hypothesis.

Paper: "Model Details: Small models" (1- to 6-layer transformers, attention-only or with
MLPs; Argument 2 adds the smeared key). Every configuration we train must have a correct
gradient, and a property test with random configurations is how we know.

What to compute:
  1. numerical_grad(f, x, dout): d/dx of sum(f() * dout) by central differences,
     (f(x + h e_i) - f(x - h e_i)) / 2h for each entry i, perturbing x in place.
  2. gradient_errors(model, tokens, dlogits): for every parameter, the largest gap
     between the model's backward a and numerical_grad n, relative to n's largest entry:
     max|a - n| / max(max|n|, 1e-2). (The 1e-2 floor is for b_K, whose gradient is exactly
     0 because softmax ignores a constant added to a whole row of scores: dividing the
     finite differences' rounding noise by ~0 would flag a correct backward.)
  3. model_cases(): a hypothesis strategy drawing a small model's configuration.

Shapes: numerical_grad: f() -> array like dout, x any shape -> gradient shaped like x.
        gradient_errors: tokens (B,T) int, dlogits (B,T,V) -> {param name: float}.
        model_cases() -> strategy of dicts: n_layers, attn_only, normalization_type,
        positional_embedding_type, smeared_key (ModelConfig fields) and seed.

Run: python -m exercises.ex03_model_gradient_check     Check: make exercise N=3
Hints, one step at a time: python -m exercises.hint 3 (then --step 2)
"""
import numpy as np
from hypothesis import given, settings, strategies as st

from minitransformer import Model

VOCAB = 8

def numerical_grad(f, x, dout, h=1e-6):
    """d/dx of sum(f() * dout), x perturbed in place one entry at a time -> like x."""
    raise NotImplementedError('exercise 03: central differences over every entry of x')


def tiny_model(case):
    """A float64 model small enough for finite differences (given). Biases, LayerNorm gains
    and the smear's alpha are drawn away from 0 so that no term hides behind a zero; every
    size differs (d_model 6, 2 heads of 3, 5 positions, 8 tokens, d_mlp 7), so that no
    axis stands in for another."""
    config = {k: v for k, v in case.items() if k != "seed"}
    config.update(d_model=6, n_heads=2, d_head=3, n_ctx=5, d_vocab=VOCAB, d_mlp=7,
                  initializer_range=0.5)
    model = Model(config, seed=case["seed"], dtype=np.float64)
    rng = np.random.default_rng(case["seed"] + 1)
    for name, value in model.params.items():
        if not name.rsplit(".", 1)[1].startswith("W_"):
            value[...] = rng.uniform(-1, 1, value.shape) + (1.0 if name.endswith(".w") else 0.0)
    return model


def gradient_errors(model, tokens, dlogits):
    """{param name: max|analytic - numeric| / max(max|numeric|, 1e-2)} for every parameter."""
    raise NotImplementedError(
        "exercise 03: the backward's gradient and numerical_grad's, per parameter")


def check_case(case, tolerance=1e-5):
    """Build the drawn model, check its gradient -> {name: error} (given)."""
    model = tiny_model(case)
    rng = np.random.default_rng(case["seed"])
    tokens = rng.integers(0, VOCAB, (2, 5))
    dlogits = rng.uniform(-1, 1, (2, 5, VOCAB))           # a random upstream gradient
    errors = gradient_errors(model, tokens, dlogits)
    worst = max(errors, key=errors.get)
    assert errors[worst] < tolerance, f"{case}: d{worst} is off by {errors[worst]:.1e}"
    return errors


def model_cases():
    """A hypothesis strategy of small model configurations (and a seed)."""
    raise NotImplementedError(
        'exercise 03: st.fixed_dictionaries over the five config fields and a seed')


def off_by_one_position(model):
    """model, its backward broken (given): each position's dlogits is read from the position
    before. A dlogits that is the same everywhere cannot show it; a random one does."""
    engine_backward = model.backward
    model.backward = lambda dlogits, cache: engine_backward(np.roll(dlogits, 1, axis=1), cache)
    return model


if __name__ == "__main__":
    worst, failures = {}, []

    @settings(max_examples=40, deadline=None, database=None)
    @given(model_cases())
    def every_configuration(case):
        try:
            errors = check_case(case)
        except AssertionError as failure:
            failures.append(str(failure))
            return
        for name, error in errors.items():
            kind = name.split(".")[-2] + "." + name.split(".")[-1] if "." in name else name
            worst[kind] = max(worst.get(kind, 0.0), error)

    every_configuration()
    print("40 random configurations, worst relative error per kind of parameter:")
    for kind, error in sorted(worst.items()):
        print(f"  {kind:<16} {error:.1e}")
    if failures:
        print(f"WRONG: {len(failures)} of 40 configurations fail on the engine's correct "
              f"backward, the first: {failures[0]}")
    else:
        print("ok     every configuration passes (the engine's backward is correct)")
    case = dict(n_layers=2, attn_only=False, normalization_type="LN",
                positional_embedding_type="standard", smeared_key=True, seed=1)
    rng = np.random.default_rng(1)
    errors = gradient_errors(off_by_one_position(tiny_model(case)),
                             rng.integers(0, VOCAB, (2, 5)), rng.uniform(-1, 1, (2, 5, VOCAB)))
    caught = max(errors.values())
    if caught > 1e-3:
        print(f"ok     a backward that reads dlogits one position off is caught (error "
              f"{caught:.1e} at {max(errors, key=errors.get)})")
    else:
        print(f"WRONG: a backward that reads dlogits one position off passes your check (worst "
              f"error {caught:.1e}): is the dlogits given used on both sides?")
