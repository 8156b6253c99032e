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

import circuits
from circuits import repeated_random_tokens
from exercises import common


def prefix_matching_score(model, tokens, length, repeats):
    """tokens (N, 1 + length * repeats) -> (n_layers, n_heads)."""
    # BEGIN SOLUTION: the (query, key) pairs, then the summed attention per head
    # Hint 1: list the (query, key) pairs first: each token of a later copy, and for each
    #   earlier occurrence of its token, the token just after it. Then read the pattern at
    #   all the pairs at once, and mind what the average is over.
    # Hint 2: segment position j of copy r is at 1 + r length + j (BOS is position 0); the
    #   token after its occurrence in copy m < r is at 1 + m length + j + 1. Two index
    #   arrays, queries and keys, one entry per (r, j, m); `pattern[:, :, queries, keys]` is
    #   (N, H, pairs). Sum over the pairs, average over the examples, and divide by the
    #   number of queries, not of pairs: a token of copy r has r earlier occurrences, and
    #   its attention to all of them counts.
    # Hint 3: `for r in range(1, repeats): for j in range(length): for m in range(r):`
    #   append `1 + r * length + j` to queries and `1 + m * length + j + 1` to keys; then
    #   per layer `scores[layer] = pattern[:, :, queries, keys].sum(-1).mean(0) / ((repeats
    #   - 1) * length)`, each layer's pattern from the cache of one run_with_cache.
    queries, keys = [], []
    for r in range(1, repeats):
        for j in range(length):
            for m in range(r):
                queries.append(1 + r * length + j)
                keys.append(1 + m * length + j + 1)
    queries, keys = np.array(queries), np.array(keys)
    n_queries = (repeats - 1) * length
    _, cache = model.run_with_cache(tokens)
    scores = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer in range(model.config.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]          # (N, H, T, T)
        scores[layer] = pattern[:, :, queries, keys].sum(-1).mean(0) / n_queries
    return scores
    # END SOLUTION


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
    engine = np.stack([circuits.prefix_matching_score(run.model(s), 10, length, repeats,
                                                      run.token_counts, seed=0)
                       for s in steps])                                 # the same tokens
    if np.allclose(curves, engine, rtol=1e-5, atol=1e-6):
        print("ok     your scores are circuits.prefix_matching_score's at every snapshot")
    else:
        s, l, h = np.unravel_index(np.argmax(np.abs(curves - engine)), engine.shape)
        print(f"WRONG: your scores differ from circuits.prefix_matching_score's on the same "
              f"tokens, most at head {l}.{h}, snapshot {s} (yours {curves[s, l, h]:.3f}, "
              f"circuits' {engine[s, l, h]:.3f})")
    ax.set(xlabel="training tokens (thousands)", ylabel="prefix-matching score",
           title="induction heads form in a phase change", ylim=(0, 1))
    ax.legend()
    common.save(fig, "ex06_prefix_matching")

    # The same on natural text: the README's 2-layer model (common.natural_run), trained on
    # bytes of Python's standard library with nothing planted, a snapshot every 0.5M tokens.
    from circuits import HeadScores
    from circuits.scores import HEAD_SAMPLE, PREFIX_MATCHING_THRESHOLD
    print("\nOn natural text (the README's attn-only-2l: bytes of Python's standard library, "
          "nothing planted):")
    natural = common.natural_run(make=False)
    if natural is None:
        print(common.natural_missing())
    else:
        s = HEAD_SAMPLE                      # BOS + 25 x 4, 10 examples: what HeadScores reads
        text_tokens = repeated_random_tokens(s.n_examples, s.length, s.repeats,
                                             natural.token_counts, seed=s.seed)
        text_curves = np.stack([prefix_matching_score(natural.model(step), text_tokens,
                                                      s.length, s.repeats)
                                for step in natural.snapshot_steps])       # (S, L, H)
        millions = [natural.tokens_at(step) / 1e6 for step in natural.snapshot_steps]
        for layer in range(text_curves.shape[1]):
            for head in range(text_curves.shape[2]):
                print(f"head {layer}.{head}: prefix matching "
                      + " ".join(f"{v:.2f}" for v in text_curves[:, layer, head]))
        print("(one number per snapshot, at", ", ".join(f"{t:.1f}M" for t in millions), "tokens)")
        scores = HeadScores.of_run(natural)             # the tools' scores of the final weights
        gap = np.abs(text_curves[-1] - scores.prefix_matching).max()
        print(f"your scores of the final weights against HeadScores.prefix_matching: largest "
              f"gap {gap:.1e}  {'ok' if gap < 1e-5 else 'WRONG'}")
        top = np.unravel_index(np.argmax(text_curves[-1]), text_curves.shape[1:])
        rise = text_curves[:, top[0], top[1]]
        half = int(np.argmax(rise >= (rise[0] + rise[-1]) / 2))
        kind = scores.classes[top]
        formed = rise[0] < PREFIX_MATCHING_THRESHOLD <= rise[-1]
        verdict = ("ok" if kind == "induction" and formed else
                   f"WRONG: HeadScores classes it {kind}" if kind != "induction" else
                   f"WRONG: it did not rise past {PREFIX_MATCHING_THRESHOLD}")
        print(f"the head that prefix-matches most at the end: {top[0]}.{top[1]}, "
              f"{rise[0]:.2f} -> {rise[-1]:.2f}, half of its rise by {millions[half]:.1f}M "
              f"tokens; HeadScores classes it {kind}  {verdict}")
        fig, ax = plt.subplots(figsize=(7, 4))
        for layer in range(text_curves.shape[1]):
            for head in range(text_curves.shape[2]):
                ax.plot(millions, text_curves[:, layer, head], "o-", label=f"head {layer}.{head}")
        ax.set(xlabel="training tokens (millions)", ylabel="prefix-matching score", ylim=(0, 1),
               title="on natural text: the induction head forms at a few million tokens")
        ax.legend()
        common.save(fig, "ex06_prefix_matching_natural")
