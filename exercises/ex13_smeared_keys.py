"""Exercise 13 (stretch): smeared keys give a 1-layer model an induction head (Argument 2).

Paper: Argument 2 ("when we change the transformer architecture in a way that shifts
whether induction heads can form ... the dramatic improvement in in-context learning
shifts in a precisely matching way") and "Model Details: Smeared key models". A 1-layer
model cannot form an induction head: its keys know only their own token, and matching on
the previous token needs an earlier head to move it. The smeared key moves it inside the
head: per head a trainable alpha, s = sigmoid(alpha), and

    k_j <- s k_j + (1 - s) k_{j-1}        (the first position unchanged).

What to compute:
  1. smear_keys(k, alpha): the smeared keys and a cache for the backward.
  2. smear_keys_backward(dsmeared, cache): dk and dalpha.

Then a 1-layer smeared model trains with your two functions in place of the engine's
(train(..., smear=(smear_keys, smear_keys_backward)); minitransformer.ops.smear_forward
and smear_backward otherwise), beside a 1-layer control, on repeated random segments:
does the smeared one grow an induction head?

Shapes: k (B, H, T, E), alpha (H,) -> smeared (B, H, T, E), cache.
        dsmeared (B, H, T, E) -> dk (B, H, T, E), dalpha (H,).

Run: python -m exercises.ex13_smeared_keys (about 1 minute: two models)
Check: make exercise N=13
Hints, one step at a time: python -m exercises.hint 13 (then --step 2)
"""
import tempfile

import numpy as np

from circuits import prefix_matching_score
from exercises import common
from minitransformer.presets import preset
from minitransformer.train import train


def train_one_layer(out, smeared, total_tokens=800_000, seed=0):
    """The tiny-induction recipe with one layer, smeared keys (by your two functions) or
    not -> Run (given)."""
    model_config, train_config = preset("tiny-induction")
    model_config.update(n_layers=1, smeared_key=smeared)
    train_config.update(total_tokens=total_tokens, seed=seed, snapshots=9)
    return train(out, model_config, train_config, force=True, progress=False,
                 smear=(smear_keys, smear_keys_backward))


def smear_keys(k, alpha):
    """k (B, H, T, E), alpha (H,) -> smeared k (B, H, T, E), cache."""
    raise NotImplementedError('exercise 13: s = sigmoid(alpha) per head, k_prev, and the mix')


def smear_keys_backward(dsmeared, cache):
    """dsmeared (B, H, T, E) -> dk (B, H, T, E), dalpha (H,)."""
    raise NotImplementedError(
        'exercise 13: every route from k_j to the output, and the chain rule through sigmoid')


if __name__ == "__main__":
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    with tempfile.TemporaryDirectory() as tmp:
        for smeared in (True, False):
            run = train_one_layer(f"{tmp}/{smeared}", smeared)
            curve = np.array([prefix_matching_score(run.model(s), token_counts=run.token_counts)
                              .max() for s in run.snapshot_steps])
            seen = run.snapshot_tokens / 1e3
            name = "1 layer, smeared keys" if smeared else "1 layer, control"
            print(f"{name}: best head's prefix matching "
                  + "  ".join(f"{t:.0f}k:{v:.2f}" for t, v in zip(seen, curve)))
            if smeared:
                alpha = np.asarray(run.model().params["blocks.0.attn.alpha"], dtype=float)
                s = np.round(1 / (1 + np.exp(-alpha)), 2)
                print(f"  sigmoid(alpha) per head at the end: {s} (small: the key is mostly "
                      f"the previous token's)")
            ax.plot(seen, curve, "o-", label=name)
    two_layer = common.trained_run()                                   # for comparison
    ax.plot(two_layer.snapshot_tokens / 1e3,
            [prefix_matching_score(two_layer.model(s), token_counts=two_layer.token_counts).max()
             for s in two_layer.snapshot_steps], "s--", label="2 layers, no smear")
    ax.set(xlabel="training tokens (thousands)", ylabel="best head's prefix matching",
           title="smeared keys: induction in one layer, and earlier", ylim=(0, 1))
    ax.legend()
    common.save(fig, "ex13_smeared_keys")
