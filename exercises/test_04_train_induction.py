"""Exercise 04: the student's loop must match minitransformer.train step for step; in the
full check (not EXERCISE_FAST) it must also grow an induction head in a 2-layer model, but
only once the step-for-step check and copy_losses' check pass (a loop known wrong would take
half a minute to say less).

The step check watches the pieces the docstring names (random_crops, loss_and_grads,
clip_grad_norm, learning_rate, AdamW) as your train calls them, and the engine's own steps
(minitransformer.train's train_step) as it trains the same 4 steps, and names the first
thing that differs: the batch, the learning rate, the frozen W_pos, the clipping, the
optimizer. copy_losses is checked on a stand-in model whose per-token losses are known by
construction: an ideal induction predictor.

For the teacher: minitransformer.train (its _train loop and train_step) is this exercise's
answer in the engine; the checks here hold no copy of it."""
import numpy as np
import pytest

import minitransformer.train as engine_training
from circuits import repeated_random_tokens
from exercises.harness import FAST, check_close, fail, load
from minitransformer.optim import global_norm
from minitransformer.presets import preset
from minitransformer.train import train as library_train

ex = load("ex04_train_induction")
MODEL, TRAIN = preset("tiny-induction")
STEPS, CLIP = 4, 0.01                 # a small clip, so that clipping changes every step
CONFIG = dict(MODEL, n_layers=1, d_model=32, d_head=16)     # d_head 16, d_model 32, T 64
PASSED = {}      # check name -> the student's functions it passed with (not run twice)


# ---- what the student's train and the engine's do, step by step ---------------------------

class Watch:
    """Puts recording stand-ins for the pieces the docstring names into the globals of the
    student's train (restored after the test), and records each call: ("crops", ...),
    ("loss", tokens, loss), ("clip", keys, max_norm, norm before), ("lr", step, ...),
    ("adamw", optimizer), ("step", optimizer, lr, keys, norm of the grads)."""

    def __init__(self, monkeypatch, train):
        self.events = []
        names = getattr(train, "__globals__", {})
        real = {name: names.get(name) for name in
                ("random_crops", "learning_rate", "clip_grad_norm", "AdamW", "Model")}
        record = self.events.append

        def random_crops(stream, n, n_ctx, rng, *args, **kwargs):
            record(("crops", dict(n=n, n_ctx=n_ctx, rng=rng, stream=len(stream), args=args,
                                  kwargs=kwargs)))
            return real["random_crops"](stream, n, n_ctx, rng, *args, **kwargs)

        def learning_rate(step, *args, **kwargs):
            record(("lr", step))
            return real["learning_rate"](step, *args, **kwargs)

        def clip_grad_norm(grads, max_norm):
            norm = real["clip_grad_norm"](grads, max_norm)
            record(("clip", set(grads), max_norm, float(norm)))
            return norm

        class AdamW(real["AdamW"] or object):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                record(("adamw", self))

            def step(self, params, grads, lr):
                record(("step", self, float(lr), set(grads), float(global_norm(grads))))
                return super().step(params, grads, lr)

        class Model(real["Model"] or object):
            def loss_and_grads(self, tokens, *args, **kwargs):
                loss, grads = super().loss_and_grads(tokens, *args, **kwargs)
                record(("loss", np.array(tokens), float(loss)))
                return loss, grads

        for name, stand_in in [("random_crops", random_crops), ("learning_rate", learning_rate),
                               ("clip_grad_norm", clip_grad_norm), ("AdamW", AdamW),
                               ("Model", Model)]:
            if real[name] is not None:
                monkeypatch.setitem(names, name, stand_in)

    def of(self, kind):
        return [event for event in self.events if event[0] == kind]


def engine_steps(monkeypatch, tmp_path, config, total_tokens):
    """minitransformer.train on the same 4 steps, with no data mixing -> (run, [per step:
    (tokens, lr)]) from its own train_step."""
    steps = []
    real = engine_training.train_step

    def train_step(model, optimizer, tokens, lr, grad_clip, *args, **kwargs):
        steps.append((np.array(tokens), float(lr)))
        return real(model, optimizer, tokens, lr, grad_clip, *args, **kwargs)
    with monkeypatch.context() as patched:
        patched.setattr(engine_training, "train_step", train_step)
        run = library_train(tmp_path / "run", config,
                            dict(TRAIN, total_tokens=total_tokens, snapshots=2, grad_clip=CLIP,
                                 repeat_fraction=0.0, synthetic_fraction=0.0),
                            progress=False)
    return run, steps


def first_difference(watch, engine, log, batch_size, n_ctx):
    """What the student's loop does otherwise than the engine's, in words (None: nothing the
    watch saw)."""
    crops, losses, steps = watch.of("crops"), watch.of("loss"), watch.of("step")
    clips, optimizers = watch.of("clip"), watch.of("adamw")
    if crops:
        if len({id(event[1]["rng"]) for event in crops}) > 1:
            return ("each step crops with a new rng, so every step trains on the same batch: "
                    "make none, use the rng made for you (once, before the loop)")
        first = crops[0][1]
        if first["n"] != batch_size or first["n_ctx"] != n_ctx:
            return (f"random_crops is asked for {first['n']} windows of {first['n_ctx']} "
                    f"tokens; a batch is batch_size ({batch_size}) windows of n_ctx ({n_ctx})")
        if first["args"] or first["kwargs"]:
            return (f"random_crops gets more than (stream, n, n_ctx, rng): {first['args']} "
                    f"{first['kwargs']}; the engine's batches are plain crops")
        if len(crops) != STEPS:
            return (f"random_crops was called {len(crops)} times in {STEPS} steps: one batch "
                    f"per step, so that the rng gives the engine's batches")
    if len(losses) != STEPS:
        return (f"loss_and_grads was called {len(losses)} times in {STEPS} steps: once per "
                f"step")
    for step, ((_, tokens, loss), (engine_tokens, _)) in enumerate(zip(losses, engine)):
        if tokens.shape != engine_tokens.shape or not np.array_equal(tokens, engine_tokens):
            return (f"step {step}'s batch differs from minitransformer.train's: "
                    + ("crop corpus.train (not corpus.eval) with the rng made for you, "
                       "default_rng(seed + 1)" if step == 0 else
                       "one random_crops call per step, all from the rng made for you"))
    if not steps:
        return ("AdamW.step is never called: the parameters must change through the AdamW "
                "made for you (its moments and bias correction are part of the engine's step)")
    if len(steps) != STEPS:
        return f"AdamW.step was called {len(steps)} times in {STEPS} steps: once per step"
    if len({id(event[1]) for event in steps}) > 1 or len(optimizers) > 1:
        return ("a new AdamW at every step: its moments and its step count start afresh each "
                "time, so every step is its first. Use the one made before the loop")
    for step, (_, _, lr, keys, norm) in enumerate(steps):
        if "pos_embed.W_pos" in keys:
            return (f"at step {step} the gradient of W_pos reaches AdamW, but this preset's "
                    f"W_pos is frozen (pos_trainable is False): drop it before the step, and "
                    f"before clipping (it must not count in the norm either)")
        if abs(lr - log["lr"][step]) > 1e-12 * log["lr"][step]:
            if abs(lr - TRAIN["lr"]) < 1e-15:
                return (f"step {step}'s learning rate is the base rate {lr:.3g}; "
                        f"minitransformer.train's is {log['lr'][step]:.3g}: the warmup is "
                        f"missing (learning_rate with the step number)")
            if step + 1 < len(log["lr"]) and abs(lr - log["lr"][step + 1]) < 1e-15:
                return (f"step {step}'s learning rate is {lr:.3g}, what minitransformer.train "
                        f"uses one step later: the warmup is one step ahead. The step number "
                        f"counts from 0")
            return (f"step {step}'s learning rate is {lr:.3g}, minitransformer.train's is "
                    f"{log['lr'][step]:.3g}: the warmup's rate of that step")
        if norm > CLIP * (1 + 1e-4):
            said = (f"the gradients reaching AdamW at step {step} have global norm {norm:.3g}, "
                    f"more than grad_clip ({CLIP})")
            at = {kind: [i for i, event in enumerate(watch.events) if event[0] == kind]
                  for kind in ("loss", "step", "clip")}
            window = range(at["loss"][step], at["step"][step])
            if not at["clip"]:
                return f"{said}: they are not clipped"
            if clips[0][2] != CLIP:
                return f"{said}: clip_grad_norm is given {clips[0][2]}, not grad_clip"
            if not any(i in window for i in at["clip"]):
                return f"{said}: clip_grad_norm comes after the step; it must come before"
            return f"{said}: are the clipped gradients the ones stepped?"
    for step, (_, keys, max_norm, norm) in enumerate(clips[:STEPS]):
        if "pos_embed.W_pos" in keys:
            return (f"at step {step} the gradients are clipped with the frozen W_pos's still "
                    f"in, so its gradient counts in their norm ({norm:.3g}, "
                    f"minitransformer.train's {log['grad_norm'][step]:.3g}): drop it first")
        if max_norm != CLIP:
            return f"clip_grad_norm is given {max_norm}, not grad_clip ({CLIP})"
    return None


def fail_unless_passes(what, *checks):
    """Run each (check, functions, its arguments) unless it passed already with these
    functions; if one fails, fail at once naming it (a NotImplementedError goes through)."""
    for check, functions, *args in checks:
        current = tuple(getattr(ex, f) for f in functions)
        remembered = PASSED.get(check.__name__)
        if remembered is not None and all(a is b for a, b in zip(remembered, current)):
            continue
        try:
            check(*args)
        except pytest.fail.Exception as failure:
            fail(f"{what} not trained: your {' and '.join(functions)} "
                 f"fail{'s' * (len(functions) == 1)} {check.__name__} first, and training on "
                 f"it would take half a minute to say less. Fix that: {failure.msg}")


@pytest.mark.checks("train")
def test_a_few_steps_match_minitransformer_train(tmp_path, monkeypatch):
    functions = (ex.train,)
    tokens = STEPS * TRAIN["batch_size"] * CONFIG["n_ctx"]
    recipe = {k: TRAIN[k] for k in ("batch_size", "lr", "warmup_steps")}
    watch = Watch(monkeypatch, ex.train)
    model, losses = ex.train(CONFIG, total_tokens=tokens, grad_clip=CLIP, **recipe)
    run, engine = engine_steps(monkeypatch, tmp_path, CONFIG, tokens)
    log = {k: np.asarray(v) for k, v in run.log.items()}
    said = first_difference(watch, engine, log, TRAIN["batch_size"], CONFIG["n_ctx"])
    if len(losses) != STEPS:
        fail(f"train should take {STEPS} steps for {tokens} tokens (batches of "
             f"{TRAIN['batch_size']} x {CONFIG['n_ctx']}) and return one loss per step; "
             f"it returned {len(losses)} losses" + (f"; {said}" if said else ""))
    check_close("loss curve", np.asarray(losses, dtype=np.float64), log["loss"],
                "minitransformer.train's", rtol=1e-6,
                hint=said or "each step's loss, as loss_and_grads gives it, in order")
    expected = run.params()
    for name, value in model.params.items():
        check_close(f"{name} after {STEPS} steps", value, expected[name],
                    "minitransformer.train's", rtol=1e-5, atol=1e-7,
                    hint=said or "the batches, learning rates and clipped gradients agree with "
                                 "minitransformer.train's: is the AdamW made for you stepped "
                                 "with exactly those?")
    if said:                      # the same numbers up to rounding, here, but not the same loop
        fail(f"your weights after {STEPS} steps agree with minitransformer.train's within "
             f"rounding on this model, but not your loop: {said}")
    PASSED[test_a_few_steps_match_minitransformer_train.__name__] = functions


# ---- copy_losses on a stand-in whose losses are known -------------------------------------

class IdealInduction:
    """A stand-in model whose loss at each token is known by construction, an ideal induction
    predictor's: FROM_BOS for the token after BOS, NEW for a token never seen before,
    UNPREDICTABLE for a token seen before whose predecessor never preceded it, COPIED for one
    that an earlier occurrence of its predecessor predicts; plus position / 1000 (so that a
    window one token off shows) and, in example n, n / 10 (so that a lost example shows)."""
    FROM_BOS, NEW, UNPREDICTABLE, COPIED = 9.0, 3.0, 7.0, 1.0

    def __init__(self):
        self.asked = []

    def per_token_loss(self, tokens):
        tokens = np.asarray(tokens)
        self.asked.append(tokens)
        losses = np.zeros((tokens.shape[0], tokens.shape[1] - 1))
        for n, row in enumerate(tokens):
            for i in range(1, len(row)):                      # predicting row[i] from row[:i]
                follows = {row[j + 1] for j in range(i - 1) if row[j] == row[i - 1]}
                kind = (self.FROM_BOS if i == 1 else self.COPIED if row[i] in follows else
                        self.UNPREDICTABLE if row[i] in row[:i] else self.NEW)
                losses[n, i - 1] = kind + i / 1000 + n / 10
        return losses


def tokens_mean(losses, first, last):
    """The mean loss of predicting tokens first..last (of every example)."""
    return float(losses[:, first - 1:last].mean())


def copy_mistake(value, which, length, losses):
    """What a first- or second-copy loss of `value` on IdealInduction points to."""
    start = 2 if which == "first" else length + 2
    end = length if which == "first" else 2 * length
    windows = {(start - 1, end): (f"yours counts the {which} copy's first token, "
                                  + ("predicted from BOS alone" if which == "first" else
                                     "which nothing before it predicts") + ": leave it out"),
               (start + 1, end + (which == "first")): (
                   f"your window is one token late: it leaves out the {which} copy's second "
                   f"token" + (" and counts the second copy's first" if which == "first"
                               else "")),
               (start - 1, end - 1): (f"your window is one token early: it counts the {which} "
                                      f"copy's first token and leaves out its last"),
               (start, end - 1): f"yours leaves out the {which} copy's last token"}
    for (first, last), says in windows.items():
        if abs(value - tokens_mean(losses, first, last)) < 1e-9:
            return says
    if abs(value - tokens_mean(losses[:1], start, end)) < 1e-9:
        return "only the first example counts in yours: average over every example"
    return ""


@pytest.mark.checks("copy_losses")
def test_copy_losses():
    functions = (ex.copy_losses,)
    length, n = 12, 3
    tokens = repeated_random_tokens(n, length, 2, None, 64, seed=1)
    model = IdealInduction()
    result = ex.copy_losses(model, tokens, length)
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"copy_losses should return two floats (first copy, second copy); it returned "
             f"{result!r:.80}")
    if not model.asked or not np.array_equal(model.asked[0], tokens):
        fail("copy_losses should read the losses from model.per_token_loss(tokens)")
    losses = IdealInduction().per_token_loss(tokens)
    shift = np.mean(np.arange(n)) / 10
    for which, value, kind, positions in [
            ("first", result[0], IdealInduction.NEW, np.arange(2, length + 1)),
            ("second", result[1], IdealInduction.COPIED, np.arange(length + 2, 2 * length + 1))]:
        if np.ndim(value) != 0:
            fail(f"{which}-copy loss: yours has shape {np.shape(value)}; one float, the mean "
                 f"over the examples and the copy's tokens")
        check_close(f"{which}-copy loss", float(value), kind + positions.mean() / 1000 + shift,
                    f"an ideal induction predictor's (its loss on every token of the {which} "
                    f"copy but the first is {kind:g} + position / 1000, + n / 10 in example n)",
                    rtol=1e-12, hint=copy_mistake(float(value), which, length, losses))
    PASSED[test_copy_losses.__name__] = functions


@pytest.mark.checks("copy_losses")
@pytest.mark.skipif(FAST, reason="EXERCISE_FAST: the full training run is skipped; the "
                                 "step-for-step match with minitransformer.train stands in")
def test_the_two_layer_model_learns_induction(tmp_path, monkeypatch):
    """About a minute: 800k tokens of repeated random segments."""
    fail_unless_passes("the 2-layer model",
                       (test_a_few_steps_match_minitransformer_train, ("train",), tmp_path,
                        monkeypatch),
                       (test_copy_losses, ("copy_losses",)))
    model, losses = ex.train(dict(MODEL, n_layers=2))
    length = (MODEL["n_ctx"] - 1) // 2
    first, second = ex.copy_losses(model, repeated_random_tokens(32, length, 2, seed=7), length)
    if not second < first - 2.0:
        fail(f"after training, the 2-layer model's loss on the second copy of a random "
             f"segment ({second:.2f}) should be far below the first copy's ({first:.2f}): "
             f"no induction head formed; final train loss {np.mean(losses[-50:]):.2f}")
