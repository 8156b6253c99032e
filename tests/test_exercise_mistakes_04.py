"""Exercise 04's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference train or copy_losses with one thing wrong (the crops, the clipping,
the warmup, the frozen W_pos, the AdamW step; a window one token off); the exercise's own
checks (exercises/test_04_train_induction.py) are run on it and must fail with a message
that names the problem, and the full training check must fail at once, naming the check that
failed, without training. The mistaken variants are near copies of the solution, which the
students' tests must not hold: they live here."""
import math
import time
import numpy as np
import pytest

import exercises.test_04_train_induction as checks
from exercises.solutions import ex04_train_induction as solution
import mistakes  # noqa: E402  (tests/mistakes.py)
# the names the reference's train reads, which the check's watch replaces: the variants below
# read them from this module's globals, so that the watch sees them too
from minitransformer import AdamW, Model, clip_grad_norm, learning_rate  # noqa: F401
from minitransformer.data import random_crops, repeated_segments_corpus  # noqa: F401


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with no check remembered as passed."""
    monkeypatch.setattr(checks, "PASSED", {})


with_mistake, failure_of = mistakes.bound(checks, solution)


def loop(rng_each_step=False, split="train", crops_extra=None, clip="before", clip_to=None,
         drop_pos="before clip", warmup_offset=0, warmup=True, optimizer_each_step=False):
    """train with one thing done otherwise (the rest as the reference's)."""
    def train(model_config, total_tokens=800_000, batch_size=16, lr=5e-3, warmup_steps=200,
              grad_clip=1.0, seed=0):
        g = train.__globals__
        corpus = repeated_segments_corpus()
        model = g["Model"](model_config, seed=seed)
        rng = np.random.default_rng(seed + 1)
        optimizer = g["AdamW"](betas=(0.9, 0.99))
        n_steps = math.ceil(total_tokens / (batch_size * model.config.n_ctx))
        losses = []
        for step in range(n_steps):
            if rng_each_step:
                rng = np.random.default_rng(seed + 1)
            stream = corpus.train if split == "train" else corpus.eval
            tokens = g["random_crops"](stream, batch_size, model.config.n_ctx, rng,
                                       **(crops_extra or {}))
            loss, grads = model.loss_and_grads(tokens)
            frozen = not model.config.pos_trainable
            if frozen and drop_pos == "before clip":
                grads.pop("pos_embed.W_pos", None)
            if clip == "before":
                g["clip_grad_norm"](grads, grad_clip if clip_to is None else clip_to)
            if frozen and drop_pos == "after clip":
                grads.pop("pos_embed.W_pos", None)
            if optimizer_each_step:
                optimizer = g["AdamW"](betas=(0.9, 0.99))
            rate = (g["learning_rate"](step + warmup_offset, lr, warmup_steps) if warmup
                    else lr)
            optimizer.step(model.params, grads, rate)
            if clip == "after":
                g["clip_grad_norm"](grads, grad_clip)
            losses.append(loss)
        return model, losses
    return train


def copies(first=(1, None), second=(1, None), axis=None):
    """copy_losses with each copy's window moved: (start offset, end offset) from the
    reference's losses[:, 1:length] and losses[:, length + 1:]."""
    def copy_losses(model, tokens, length):
        losses = model.per_token_loss(tokens)
        a, b = first
        c, d = second
        one = losses[:, a:length + (b or 0)]
        two = losses[:, length + c:(2 * length + d) if d else None]
        if axis is not None:
            return one.mean(axis), two.mean(axis)
        return float(one.mean()), float(two.mean())
    return copy_losses


STEP_CHECK = checks.test_a_few_steps_match_minitransformer_train


def test_the_solution_passes(monkeypatch, tmp_path):
    monkeypatch.setattr(checks, "ex", with_mistake())
    STEP_CHECK(tmp_path / "a", monkeypatch)
    checks.test_copy_losses()


def test_the_stand_in_loop_passes(monkeypatch, tmp_path):
    """The variants' loop, with nothing changed, is the reference's."""
    monkeypatch.setattr(checks, "ex", with_mistake(train=loop()))
    STEP_CHECK(tmp_path, monkeypatch)


@pytest.mark.parametrize("mistake, says", [
    (loop(rng_each_step=True), ["each step crops with a new rng", "the same batch"]),
    (loop(split="eval"), ["step 0's batch differs", "corpus.train (not corpus.eval)"]),
    (loop(crops_extra={"bos_first": True}), ["more than (stream, n, n_ctx, rng)",
                                             "bos_first"]),
    (loop(clip="none"), ["global norm", "more than grad_clip (0.01)", "not clipped"]),
    (loop(clip="after"), ["more than grad_clip", "comes after the step"]),
    (loop(clip_to=1.0), ["clip_grad_norm is given 1.0, not grad_clip"]),
    (loop(drop_pos="never"), ["gradient of W_pos reaches AdamW", "frozen"]),
    (loop(drop_pos="after clip"), ["agree with minitransformer.train's within rounding",
                                   "clipped with the frozen W_pos's still in",
                                   "counts in their norm"]),
    (loop(warmup=False), ["base rate", "warmup is missing"]),
    (loop(warmup_offset=1), ["one step later", "warmup is one step ahead", "counts from 0"]),
    (loop(optimizer_each_step=True), ["a new AdamW at every step", "start afresh"]),
], ids=["rng each step", "eval split", "bos_first", "no clip", "clip after step",
        "clip to 1", "W_pos not dropped", "W_pos dropped after clip", "no warmup",
        "warmup one ahead", "AdamW each step"])
def test_loop_mistakes_are_named(monkeypatch, tmp_path, mistake, says):
    message = failure_of(monkeypatch, STEP_CHECK, tmp_path, monkeypatch, train=mistake)
    for phrase in says:
        assert phrase in message, message


@pytest.mark.parametrize("mistake, says", [
    (copies(first=(0, None)), ["first-copy loss: yours differs", "first copy's first token",
                               "predicted from BOS alone"]),
    (copies(second=(0, None)), ["second-copy loss", "second copy's first token",
                                "nothing before it predicts"]),
    (copies(first=(2, 1)), ["first-copy loss", "one token late",
                            "counts the second copy's first"]),
    (copies(second=(2, None)), ["second-copy loss", "one token late"]),
    (copies(first=(0, -1)), ["first-copy loss", "one token early"]),
    (copies(axis=0), ["first-copy loss: yours has shape (11,)", "one float"]),
], ids=["first token counted", "second copy's first counted", "first one late",
        "second one late", "first one early", "mean over examples only"])
def test_copy_losses_mistakes_are_named(monkeypatch, mistake, says):
    message = failure_of(monkeypatch, checks.test_copy_losses, copy_losses=mistake)
    for phrase in says:
        assert phrase in message, message


def test_a_lost_example_is_named(monkeypatch):
    def first_example(model, tokens, length):
        losses = model.per_token_loss(tokens)[:1]
        return float(losses[:, 1:length].mean()), float(losses[:, length + 1:].mean())
    message = failure_of(monkeypatch, checks.test_copy_losses, copy_losses=first_example)
    assert "only the first example counts" in message, message


@pytest.mark.parametrize("replaced, failed", [
    (dict(train=loop(warmup=False)), "test_a_few_steps_match_minitransformer_train"),
    (dict(copy_losses=copies(first=(0, None))), "test_copy_losses"),
], ids=["loop", "copy_losses"])
def test_the_training_check_fails_at_once_naming_the_failed_check(monkeypatch, tmp_path,
                                                                 replaced, failed):
    start = time.perf_counter()
    message = failure_of(monkeypatch, checks.test_the_two_layer_model_learns_induction,
                         tmp_path, monkeypatch, **replaced)
    assert time.perf_counter() - start < 10.0
    assert "the 2-layer model not trained: your" in message and f"{failed} first" in message, \
        message


def test_a_stub_still_fails_with_not_implemented(monkeypatch, tmp_path):
    def stub(*args, **kwargs):
        raise NotImplementedError("exercise 04: write this")
    monkeypatch.setattr(checks, "ex", with_mistake(train=stub))
    with pytest.raises(NotImplementedError):
        checks.test_the_two_layer_model_learns_induction(tmp_path, monkeypatch)


def test_no_message_gives_the_code(monkeypatch, tmp_path):
    for number, mistake in enumerate([loop(warmup=False), loop(warmup_offset=1), loop(clip="none"),
                                      loop(drop_pos="never"), loop(rng_each_step=True)]):
        message = failure_of(monkeypatch, STEP_CHECK, tmp_path / str(number), monkeypatch,
                             train=mistake)
        for code in ("learning_rate(step", "clip_grad_norm(grads", "grads.pop",
                     "optimizer.step(", "random_crops(corpus"):
            assert code not in message, f"the message gives {code!r}: {message}"
    for mistake in [copies(first=(0, None)), copies(second=(0, None)), copies(first=(2, 1))]:
        message = failure_of(monkeypatch, checks.test_copy_losses, copy_losses=mistake)
        for code in ("losses[:", "1:length", "length + 1:"):
            assert code not in message, f"the message gives {code!r}: {message}"
