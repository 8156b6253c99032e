"""Exercise 04: train a 1-layer and a 2-layer attention-only model; which learns induction?

Paper: Argument 1, "Transformer language models undergo a phase change during training"
and its footnote on one-layer models: induction heads need two heads composed, so only the
2-layer model can form one. On repeated random segments (the purest induction task: only
copying what came before lowers the loss) you watch it happen in under a minute.

What to compute:
  1. train(...): the training loop. Each step: a batch of random crops of the corpus, the
     loss and gradients, drop the gradient of a frozen W_pos, clip the global gradient
     norm, then an AdamW step at the warmup learning rate.
  2. copy_losses(model, tokens, length): on BOS + a random segment of `length` tokens +
     the same segment again, the mean loss on the first copy and on the second copy.

Shapes: train(model_config, ...) -> (Model, list of float losses, one per step).
        copy_losses: tokens (N, 1 + 2 length) int -> (first float, second float).

The pieces: minitransformer.data.random_crops(stream, batch, n_ctx, rng),
model.loss_and_grads(tokens) -> (loss, grads), minitransformer.clip_grad_norm(grads,
max_norm), minitransformer.learning_rate(step, base_lr, warmup_steps),
AdamW.step(params, grads, lr), and model.per_token_loss(tokens), (N, T-1): entry i is the
loss of predicting token i+1. Use the rng made for you and no other randomness: the test
compares your weights after a few steps with minitransformer.train's, bit for bit.

Run: python -m exercises.ex04_train_induction (about 1-2 minutes)   Check: make exercise N=4
Hints, one step at a time: python -m exercises.hint 4 (then --step 2)
"""
import math
import time

import numpy as np

from circuits import repeated_random_tokens
from exercises import common
from minitransformer import AdamW, Model, clip_grad_norm, learning_rate
from minitransformer.data import random_crops, repeated_segments_corpus
from minitransformer.presets import preset


def train(model_config, total_tokens=800_000, batch_size=16, lr=5e-3, warmup_steps=200,
          grad_clip=1.0, seed=0):
    """Train on repeated random segments -> (model, per-step losses). The defaults are the
    tiny-induction preset's."""
    corpus = repeated_segments_corpus()
    model = Model(model_config, seed=seed)
    rng = np.random.default_rng(seed + 1)       # the data stream, as minitransformer.train
    optimizer = AdamW(betas=(0.9, 0.99))
    n_steps = math.ceil(total_tokens / (batch_size * model.config.n_ctx))
    losses = []
    # BEGIN SOLUTION: the loop: crops, loss_and_grads, frozen W_pos, clip, AdamW step
    # Hint 1: each step: a batch, its loss and gradients, then one optimizer step. Three
    #   details make it the engine's step: which gradients reach AdamW (a frozen W_pos's
    #   must not), how large they are (clipped as a whole, before the step), and the
    #   learning rate (a warmup counted from step 0).
    # Hint 2: `random_crops(corpus.train, batch_size, n_ctx, rng)` with the rng made for
    #   you, once per step; model.loss_and_grads gives (loss, grads); a frozen W_pos
    #   is `not model.config.pos_trainable`; `clip_grad_norm(grads, grad_clip)` scales the
    #   grads in place; `learning_rate(step, lr, warmup_steps)` with the step from 0; the one
    #   AdamW made above, stepped once per step; one loss per step in losses.
    # Hint 3: per step: `tokens = random_crops(corpus.train, batch_size,
    #   model.config.n_ctx, rng)`; `loss, grads = model.loss_and_grads(tokens)`; `if not
    #   model.config.pos_trainable: grads.pop("pos_embed.W_pos", None)`;
    #   `clip_grad_norm(grads, grad_clip)`; `optimizer.step(model.params, grads,
    #   learning_rate(step, lr, warmup_steps))`; `losses.append(loss)`.
    for step in range(n_steps):
        tokens = random_crops(corpus.train, batch_size, model.config.n_ctx, rng)
        loss, grads = model.loss_and_grads(tokens)
        if not model.config.pos_trainable:           # the preset's sinusoidal W_pos is fixed
            grads.pop("pos_embed.W_pos", None)
        clip_grad_norm(grads, grad_clip)
        optimizer.step(model.params, grads, learning_rate(step, lr, warmup_steps))
        losses.append(loss)
    # END SOLUTION
    return model, losses


def copy_losses(model, tokens, length):
    """BOS + segment + segment (N, 1 + 2 length) -> (mean loss on the first copy, on the
    second copy), the unpredictable first token of each copy left out."""
    # BEGIN SOLUTION: per_token_loss, then the two copies' means
    # Hint 1: per_token_loss's entry i is the loss of predicting token i + 1. Which
    #   tokens are the first copy, which the second, and which two can no model predict?
    # Hint 2: the first copy is tokens 1..length, the second length + 1..2 length. Leave out
    #   the first copy's first token (predicted from BOS alone) and the second copy's first
    #   (nothing before it says the segment restarts); average the rest of each copy over
    #   every example, as a float.
    # Hint 3: `losses = model.per_token_loss(tokens)`; return
    #   `float(losses[:, 1:length].mean())` and `float(losses[:, length + 1:].mean())`.
    losses = model.per_token_loss(tokens)                # (N, 2 length)
    return float(losses[:, 1:length].mean()), float(losses[:, length + 1:].mean())
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    model_config, _ = preset("tiny-induction")
    length = (model_config["n_ctx"] - 1) // 2
    tokens = repeated_random_tokens(32, length, 2, seed=7)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    gaps = {}
    for n_layers in (1, 2):
        start = time.time()
        model, losses = train(dict(model_config, n_layers=n_layers))
        first, second = copy_losses(model, tokens, length)
        gaps[n_layers] = first - second
        print(f"{n_layers}-layer: {time.time() - start:.0f} s; loss on repeated random tokens: "
              f"first copy {first:.2f}, second copy {second:.2f} nats"
              + ("  <- induction" if second < first - 1 else ""))
        smooth = np.convolve(losses, np.ones(20) / 20, "valid")
        left.plot(np.arange(len(smooth)) * 16 * model.config.n_ctx / 1e3, smooth,
                  label=f"{n_layers} layer{'s' * (n_layers > 1)}")
        right.plot(np.arange(1, tokens.shape[1]), model.per_token_loss(tokens).mean(0),
                   label=f"{n_layers} layer{'s' * (n_layers > 1)}")
    left.set(xlabel="training tokens (thousands)", ylabel="train loss (nats)",
             title="the 2-layer loss drops in a sudden step")
    right.axvline(length + 0.5, color="gray", ls=":")
    right.set(xlabel="position (the segment repeats after the dotted line)",
              ylabel="loss (nats)", title="repeated random tokens")
    left.legend(), right.legend()
    common.save(fig, "ex04_train_induction")
    # measured with the engine's loop (seed 0): the 2-layer model's second copy is ~5.6 nats
    # below its first, the 1-layer model's ~0.7
    if gaps[2] > 2.0 and gaps[1] < 2.0:
        print(f"ok     only the 2-layer model learns induction: its second copy is "
              f"{gaps[2]:.1f} nats below the first, the 1-layer model's {gaps[1]:.1f}")
    else:
        print(f"WRONG: the second copy should be far below the first (more than 2 nats) for "
              f"the 2-layer model only; yours: 2-layer {gaps[2]:.1f}, 1-layer {gaps[1]:.1f} "
              f"nats. make exercise N=4 compares your loop with the engine's step by step")
