"""Exercise 04: the student's loop must match minitransformer.train step for step; in the
full check (not EXERCISE_FAST) it must also grow an induction head in a 2-layer model."""
import numpy as np
import pytest

from circuits import repeated_random_tokens
from exercises.harness import FAST, check_close, fail, load
from minitransformer import Model
from minitransformer.presets import preset
from minitransformer.train import train as library_train

ex = load("ex04_train_induction")
MODEL, TRAIN = preset("tiny-induction")


@pytest.mark.checks("train")
def test_a_few_steps_match_minitransformer_train(tmp_path):
    config = dict(MODEL, n_layers=1, d_model=32, d_head=16)
    steps, clip = 4, 0.01                 # a small clip, so that clipping changes every step
    tokens = steps * TRAIN["batch_size"] * config["n_ctx"]
    recipe = {k: TRAIN[k] for k in ("batch_size", "lr", "warmup_steps")}
    model, losses = ex.train(config, total_tokens=tokens, grad_clip=clip, **recipe)
    if len(losses) != steps:
        fail(f"train should take {steps} steps for {tokens} tokens (batches of "
             f"{TRAIN['batch_size']} x {config['n_ctx']}) and return one loss per step; "
             f"it returned {len(losses)} losses")
    run = library_train(tmp_path / "run", config,
                        dict(TRAIN, total_tokens=tokens, snapshots=2, grad_clip=clip,
                             repeat_fraction=0.0, synthetic_fraction=0.0),  # no data mixing
                        progress=False)
    check_close("loss curve", losses, run.log["loss"], "minitransformer.train's", rtol=1e-6,
                hint="the first loss differs: the batches differ (use random_crops with the "
                     "given rng, once per step)" if abs(losses[0] - run.log["loss"][0]) > 1e-6
                else "the later steps differ: check the gradient clipping, the warmup learning "
                     "rate and that the frozen W_pos gradient is dropped")
    expected = run.params()
    check_close("W_pos", model.params["pos_embed.W_pos"], expected["pos_embed.W_pos"],
                "the fixed sinusoidal positions", rtol=0, atol=0,
                hint="this preset freezes W_pos (pos_trainable=False): drop its gradient")
    for name, value in model.params.items():
        check_close(f"{name} after {steps} steps", value, expected[name],
                    "minitransformer.train's", rtol=1e-5, atol=1e-7,
                    hint="the losses agree but the weights do not: is the AdamW step given "
                         "learning_rate(step, lr, warmup_steps), after clip_grad_norm?")


@pytest.mark.checks("copy_losses")
def test_copy_losses():
    model = Model(dict(MODEL, n_layers=1, d_model=32, d_head=16), seed=0)
    length = 20
    tokens = repeated_random_tokens(4, length, 2, seed=1)
    losses = model.per_token_loss(tokens)
    first, second = ex.copy_losses(model, tokens, length)
    check_close("first-copy loss", first, losses[:, 1:length].mean(),
                "the mean of per_token_loss over the first copy (its first token left out)",
                rtol=1e-6, mistakes={"the first copy's first token (predicted from BOS alone) "
                                     "should be left out": losses[:, :length].mean()})
    check_close("second-copy loss", second, losses[:, length + 1:].mean(),
                "the mean of per_token_loss over the second copy (its first token left out)",
                rtol=1e-6, mistakes={"the second copy's first token cannot be predicted "
                                     "(nothing says the segment restarts): leave it out":
                                     losses[:, length:].mean()})


@pytest.mark.checks("copy_losses")
@pytest.mark.skipif(FAST, reason="EXERCISE_FAST: the full training run is skipped; the "
                                 "step-for-step match with minitransformer.train stands in")
def test_the_two_layer_model_learns_induction():
    """About a minute: 800k tokens of repeated random segments."""
    model, losses = ex.train(dict(MODEL, n_layers=2))
    length = (MODEL["n_ctx"] - 1) // 2
    first, second = ex.copy_losses(model, repeated_random_tokens(32, length, 2, seed=7), length)
    if not second < first - 2.0:
        fail(f"after training, the 2-layer model's loss on the second copy of a random "
             f"segment ({second:.2f}) should be far below the first copy's ({first:.2f}): "
             f"no induction head formed; final train loss {np.mean(losses[-50:]):.2f}")
