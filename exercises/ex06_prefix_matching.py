"""Exercise 06: the prefix-matching score.

Paper: "Key Concepts: Induction Heads" (prefix matching: "the head attends back to
previous tokens that were followed by the current and/or recent tokens") and method "(3)
Head activation evaluators: Prefix matching", which the paper plots for every head over
training (Argument 1, "Induction heads form in phase change").

What to compute: on BOS + a segment of `length` random tokens repeated `repeats` times,
for every head, the attention that each token of a later copy pays to the tokens that
followed its earlier occurrences, summed over those earlier occurrences, then averaged
over the tokens of the later copies and over the examples.
Precisely: segment position j of copy r sits at q = 1 + r length + j. For every earlier
copy m < r, the token after j's occurrence in copy m sits at k = 1 + m length + j + 1
(for the last j that is the first token of copy m + 1: what did come next). The score of
a head is pattern[q, k] summed over m, averaged over q (all r >= 1, all j) and examples.
1 = a perfect induction pattern; a head that spreads its attention evenly scores about
(earlier copies) / position, ~0.05 here.

Shapes: tokens (N, 1 + length repeats) from repeated_random_tokens -> scores
(n_layers, n_heads), one per head.

model.run_with_cache(tokens) -> (logits, cache); cache[f"blocks.{l}.attn.hook_pattern"] is
(N, H, T, T), [example, head, query, key].

Run: python -m exercises.ex06_prefix_matching    Check: make exercise N=6
Hints, one step at a time: python -m exercises.hint 6 (then --step 2)
"""
import numpy as np

from circuits import repeated_random_tokens
from exercises import common


def prefix_matching_score(model, tokens, length, repeats):
    """tokens (N, 1 + length * repeats) -> (n_layers, n_heads)."""
    raise NotImplementedError(
        'exercise 06: the (query, key) pairs, then the summed attention per head')


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    length, repeats = 15, 4                  # BOS + 15 x 4 = 61 tokens fit in n_ctx 64
    tokens = repeated_random_tokens(10, length, repeats, run.token_counts, seed=0)
    steps = run.snapshot_steps
    curves = np.stack([prefix_matching_score(run.model(s), tokens, length, repeats)
                       for s in steps])                                 # (S, L, H)
    seen = [run.tokens_at(s) / 1e3 for s in steps]
    fig, ax = plt.subplots(figsize=(7, 4))
    for layer in range(curves.shape[1]):
        for head in range(curves.shape[2]):
            print(f"head {layer}.{head}: prefix matching "
                  + "  ".join(f"{v:.2f}" for v in curves[:, layer, head]))
            ax.plot(seen, curves[:, layer, head], "o-", label=f"head {layer}.{head}")
    print("(one number per snapshot, at", ", ".join(f"{t:.0f}k" for t in seen), "tokens)")
    ax.set(xlabel="training tokens (thousands)", ylabel="prefix-matching score",
           title="induction heads form in a phase change", ylim=(0, 1))
    ax.legend()
    common.save(fig, "ex06_prefix_matching")
