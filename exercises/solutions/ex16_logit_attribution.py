"""Exercise 16: direct logit attribution, and a logit lens.

Paper: "Key Concepts: Induction Heads" (induction heads "increase the likelihood of [B]
given [A][B]...[A]"; copying: "the head's output increases the logit corresponding to the
attended-to token") and A Mathematical Framework for Transformer Circuits (the residual
stream is the sum of what every layer wrote into it; "Path Expansion of Logits"): the
unembedding is linear, so the logit of the correct next token splits into one part per
writer. Direct logit attribution (DLA) reads each head's part; the logit lens
(nostalgebraist, 2020) reads the whole stream after each layer as if it were the last.
Both are the first look the field takes at a new model (TransformerLens:
`cache.decompose_resid`, `cache.accumulated_resid`).

What to compute, for an attention-only model, on tokens (B, T); prediction t = 0 .. T-2 is
made at position t and its correct token is tokens[:, t + 1]:
  1. direct_logit_attribution(model, cache, tokens) -> LogitAttribution, whose parts sum to
     the model's logit of the correct token at each prediction:
       heads   each head's output (cache "blocks.{l}.attn.hook_result", b_O excluded) read
               by the unembedding at the correct token;
       embed   what the embedding wrote: the stream entering layer 0, "blocks.0.hook_resid_pre";
       biases  every other constant: each layer's b_O, and the unembedding's bias b_U (with
               LayerNorm, ln_final's b too).
     With LayerNorm (normalization_type "LN"), ln_final sits between the stream and W_U. It
     centres the stream, divides it by its standard deviation and multiplies by w. Freeze
     the division at its value in this forward pass, the cache's "ln_final.hook_scale"
     (B, T, 1), as TransformerLens's `apply_ln_to_stack` does: then every step is linear,
     and each part goes through them on its own. Without LayerNorm W_U reads the stream as
     it is.
  2. logit_lens(model, cache, tokens): the residual stream before any layer, then after
     each layer ("blocks.{l}.hook_resid_post"), read through ln_final (in full: its own
     mean and scale for each stream) and W_U, b_U, as the model reads its last one -> the
     log-probability of the correct token. The last row is the model's own.
  3. attribution_by_copy(heads, length): on BOS + a segment of `length` random tokens
     written twice (or more), each head's mean part over the predictions inside the first
     copy and inside the second. Only the second copy can be predicted, and only by looking
     back: the heads that write the correct token there and not in the first copy are the
     induction heads. A prediction belongs to a copy when the token it is made at and the
     token it predicts are both in that copy.

Shapes: LogitAttribution.heads (n_layers, n_heads, B, T-1); embed, biases (B, T-1).
        logit_lens -> (n_layers + 1, B, T-1).
        attribution_by_copy: heads (L, H, B, T-1) -> (2, L, H): [first copy, second copy].

model.params: "unembed.W_U" (D, V), "unembed.b_U" (V,), "blocks.{l}.attn.b_O" (D,),
"ln_final.w", "ln_final.b" (D,) where there is LayerNorm; model.config.normalization_type,
.n_layers, .n_heads. The engine's LayerNorm is minitransformer.ops.layernorm_forward.

DLA sees only the direct path: what a head writes that a later head reads and moves (a
previous-token head's output, read by an induction head's keys) is not in its part. So a
head with a small part may still matter; exercise 12's ablations measure that.

Run: python -m exercises.ex16_logit_attribution    Check: make exercise N=16
Hints, one step at a time: python -m exercises.hint 16 (then --step 2, --step 3)
"""
from dataclasses import dataclass

import numpy as np

from circuits import HeadScores, repeated_random_tokens
from exercises import common
from minitransformer.ops.layernorm import layernorm_forward


@dataclass(frozen=True)
class LogitAttribution:
    """The correct next token's logit at each prediction t = 0 .. T-2, split by writer."""
    heads: np.ndarray      # (n_layers, n_heads, B, T-1) each head's output, read by W_U
    embed: np.ndarray      # (B, T-1) the embedding's (blocks.0.hook_resid_pre)
    biases: np.ndarray     # (B, T-1) every b_O, b_U (and ln_final's b)

    def total(self):
        """(B, T-1): the sum of the parts, which is the model's logit of the correct token."""
        return self.heads.sum(axis=(0, 1)) + self.embed + self.biases


def direct_logit_attribution(model, cache, tokens):
    """cache: model.run_with_cache(tokens)'s; tokens (B, T) -> LogitAttribution."""
    cfg, p = model.config, model.params
    if not cfg.attn_only:
        raise ValueError("direct_logit_attribution: for attention-only models; a model with "
                         "MLPs has their outputs in the stream too")
    tokens = np.asarray(tokens)
    # BEGIN SOLUTION: read every part of the final stream at the correct next token
    # Hint 1: start with the correct token of each prediction and its column of the
    #   unembedding: `tokens[:, 1:]`, and the stream at positions 0 .. T-2, `[:, :-1]`. Every
    #   part is then a vector of d_model at each (batch, position), read the same way: a
    #   dot product with the unembedding column of that prediction's correct token. Cast
    #   to float64.
    # Hint 2: `W_U[:, tokens[:, 1:]]` is (D, B, T-1). Stack the layers' hook_result into
    #   (L, H, B, T-1, D) and read them all at once; b_O is one vector per layer, the same
    #   at every position, and b_U adds `b_U[tokens[:, 1:]]`. With LayerNorm, each part x
    #   is read as `(x - x.mean(-1, keepdims=True)) / scale * w` before W_U, and ln_final's
    #   b is read like b_O, without centring or scale (it is added after them).
    # Hint 3: `read = lambda x: np.einsum("...btd,dbt->...bt", x, W_correct)`, x's last
    #   three axes (B, T-1, D); with LayerNorm, centre x, divide by
    #   `cache["ln_final.hook_scale"][:, :-1]` and multiply by w inside read. Then
    #   `heads = read(results)`, `embed = read(resid_pre[:, :-1])`,
    #   `biases = read(sum of b_O, broadcast to (B, T-1, D)) + b_U[correct]`, plus with
    #   LayerNorm `np.einsum("d,dbt->bt", ln_b, W_correct)`.
    correct = tokens[:, 1:]                                                   # (B, T-1)
    W_correct = np.asarray(p["unembed.W_U"], dtype=np.float64)[:, correct]   # (D, B, T-1)
    if cfg.normalization_type == "LN":
        scale = np.asarray(cache["ln_final.hook_scale"], dtype=np.float64)[:, :-1]   # (B, T-1, 1)
        w = np.asarray(p["ln_final.w"], dtype=np.float64)

        def through_ln_final(x):              # x (..., B, T-1, D), the std frozen at scale
            return (x - x.mean(-1, keepdims=True)) / scale * w
        ln_bias = np.einsum("d,dbt->bt", np.asarray(p["ln_final.b"], dtype=np.float64), W_correct)
    else:
        def through_ln_final(x):
            return x
        ln_bias = 0.0

    def read(x):                              # (..., B, T-1, D) -> (..., B, T-1)
        return np.einsum("...btd,dbt->...bt", through_ln_final(x), W_correct)

    results = np.stack([cache[f"blocks.{l}.attn.hook_result"][:, :-1]
                        for l in range(cfg.n_layers)]).astype(np.float64)    # (L, B, T-1, H, D)
    heads = read(results.transpose(0, 3, 1, 2, 4))                            # (L, H, B, T-1)
    embed = read(np.asarray(cache["blocks.0.hook_resid_pre"], dtype=np.float64)[:, :-1])
    b_O = sum(np.asarray(p[f"blocks.{l}.attn.b_O"], dtype=np.float64) for l in range(cfg.n_layers))
    b_U = np.asarray(p["unembed.b_U"], dtype=np.float64)[correct]
    biases = read(np.broadcast_to(b_O, correct.shape + b_O.shape)) + ln_bias + b_U
    return LogitAttribution(heads=heads, embed=embed, biases=biases)
    # END SOLUTION


def logit_lens(model, cache, tokens):
    """-> (n_layers + 1, B, T-1): log-probability of the correct token read from the stream
    before layer 0, then after each layer, through ln_final and the unembedding."""
    cfg, p = model.config, model.params
    tokens = np.asarray(tokens)
    # BEGIN SOLUTION: the stream after each layer, through ln_final and W_U, log-softmax
    # Hint 1: there are n_layers + 1 streams: the one entering layer 0, then the one after
    #   each layer. Read each as the model reads its last one, then take the log-probability
    #   (not the logit) of each prediction's correct token, the next one.
    # Hint 2: stack the streams at positions 0 .. T-2 into (L + 1, B, T-1, D); with
    #   LayerNorm, `layernorm_forward(x, w, b)[0]` is ln_final applied to each stream;
    #   then `x @ W_U + b_U`. A stable log-softmax subtracts the row's max before `exp`.
    # Hint 3: `log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))`
    #   with `m = logits.max(-1, keepdims=True)`; then
    #   `np.take_along_axis(log_probs, tokens[None, :, 1:, None], -1)[..., 0]`.
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post"
                                           for l in range(cfg.n_layers)]
    streams = np.stack([np.asarray(cache[name], dtype=np.float64)[:, :-1] for name in names])
    if cfg.normalization_type == "LN":
        streams, _ = layernorm_forward(streams, np.asarray(p["ln_final.w"], dtype=np.float64),
                                       np.asarray(p["ln_final.b"], dtype=np.float64))
    logits = streams @ np.asarray(p["unembed.W_U"], dtype=np.float64) + p["unembed.b_U"]
    m = logits.max(-1, keepdims=True)                                         # (L+1, B, T-1, 1)
    log_probs = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    return np.take_along_axis(log_probs, tokens[None, :, 1:, None], -1)[..., 0]
    # END SOLUTION


def attribution_by_copy(heads, length):
    """heads (L, H, B, T-1) on BOS + a segment of `length` tokens, written twice or more ->
    (2, L, H): each head's mean part over the predictions inside the first copy, then the
    second."""
    # BEGIN SOLUTION: which predictions lie inside each copy, then a mean over them
    # Hint 1: write down the positions: BOS at 0, the first copy at 1 .. length, the second
    #   at length + 1 .. 2 length. Prediction t is made at position t and predicts t + 1.
    # Hint 2: inside the first copy: t = 1 .. length - 1; inside the second: t = length + 1
    #   .. 2 length - 1. Prediction t = length predicts the second copy's first token from
    #   the first copy's last: nothing earlier shows what comes next, so it is in neither.
    # Hint 3: `heads[..., 1:length].mean(axis=(2, 3))` and the same with
    #   `length + 1:2 * length`, stacked.
    first = heads[..., 1:length].mean(axis=(2, 3))                 # (L, H)
    second = heads[..., length + 1:2 * length].mean(axis=(2, 3))   # (L, H)
    return np.stack([first, second])
    # END SOLUTION


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model(dtype=np.float64)            # float64: the parts sum to the logit exactly
    length = 30
    tokens = repeated_random_tokens(16, length, 2, run.token_counts, model.config.d_vocab, seed=0)
    logits, cache = model.run_with_cache(tokens)
    correct_logit = np.take_along_axis(logits[:, :-1], tokens[:, 1:, None], -1)[..., 0]

    attribution = direct_logit_attribution(model, cache, tokens)
    gap = np.abs(attribution.total() - correct_logit).max()
    print(f"the parts sum to the model's logit of the correct token: largest gap {gap:.1e}  "
          f"{'ok' if gap < 1e-6 else 'WRONG'}")
    first, second = attribution_by_copy(attribution.heads, length)
    classes = HeadScores.of_run(run).classes           # the tools' one classification
    L, H = model.config.n_layers, model.config.n_heads
    names = [f"{l}.{h}" for l in range(L) for h in range(H)]
    for name, a, b, kind in zip(names, first.ravel(), second.ravel(), classes.ravel()):
        print(f"head {name}: writes the correct token {a:+.2f} (first copy)  {b:+.2f} "
              f"(second copy)   {kind}")
    top = np.unravel_index(np.argmax(second - first), second.shape)
    verdict = ("ok" if classes[top] == "induction"
               else f"WRONG: HeadScores classes it {classes[top]}, not induction")
    print(f"the head that writes the second copy most: {top[0]}.{top[1]}  {verdict}")

    lens = logit_lens(model, cache, tokens)                                   # (L+1, B, T-1)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    own = np.take_along_axis(log_probs[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    gap = np.abs(lens[-1] - own).max()
    print(f"the lens after the last layer is the model's own log-probability: largest gap "
          f"{gap:.1e}  {'ok' if gap < 1e-6 else 'WRONG'}")
    lens_first = lens[:, :, 1:length].mean(axis=(1, 2))
    lens_second = lens[:, :, length + 1:2 * length].mean(axis=(1, 2))
    stages = ["embedding"] + [f"after layer {l}" for l in range(L)]
    for stage, a, b in zip(stages, lens_first, lens_second):
        print(f"logit lens, {stage:<13}: log-prob of the correct token {a:+.2f} (first copy)  "
              f"{b:+.2f} (second copy)")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(names))
    left.bar(x - 0.2, first.ravel(), 0.4, label="first copy")
    left.bar(x + 0.2, second.ravel(), 0.4, label="second copy")
    left.set_xticks(x, [f"head {n}\n{k}" for n, k in zip(names, classes.ravel())])
    left.axhline(0, color="k", lw=0.5)
    left.set(ylabel="direct logit attribution (logit)",
             title="what each head writes on the correct token")
    left.legend()
    right.plot(stages, lens_first, "o-", label="first copy")
    right.plot(stages, lens_second, "o-", label="second copy")
    right.axhline(-np.log(model.config.d_vocab), color="k", ls=":", lw=1,
                  label="uniform over the vocabulary")
    right.set(ylabel="log-prob of the correct token", title="logit lens")
    right.legend()
    common.save(fig, "ex16_logit_attribution")

    # The same on natural text: the README's 2-layer model (common.natural_run), on held-out
    # passages of Python's standard library in which an identifier of 8+ bytes comes twice.
    # Its bytes after the first can be predicted at the second occurrence by looking back.
    import re
    print("\nOn natural text (the README's attn-only-2l, held-out Python source):")
    natural = common.natural_run(make=False)
    if natural is None:
        print(common.natural_missing())
    else:
        text_model = natural.model(dtype=np.float64)
        identifier = re.compile(rb"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]{7,}")
        cases = []                              # (row of the eval set, identifier, its 2 starts)
        for row, window in enumerate(natural.eval_tokens):
            starts = {}
            for match in identifier.finditer(bytes(window.astype(np.uint8))):
                starts.setdefault(match.group(), []).append(match.start())
            twice = [(name, at) for name, at in starts.items()
                     if len(at) == 2 and at[1] - at[0] >= 20]
            if twice:
                cases.append((row, *twice[0]))
            if len(cases) == 32:
                break
        text = natural.eval_tokens[[row for row, _, _ in cases]].astype(np.int64)
        text_logits, text_cache = text_model.run_with_cache(text)
        parts = direct_logit_attribution(text_model, text_cache, text)
        correct = np.take_along_axis(text_logits[:, :-1], text[:, 1:, None], -1)[..., 0]
        gap = np.abs(parts.total() - correct).max()
        print(f"{len(cases)} passages; the parts sum to the model's logit: largest gap {gap:.1e}  "
              f"{'ok' if gap < 1e-6 else 'WRONG'}")
        # predictions made at an occurrence's bytes 0 .. n-2: its bytes 1 .. n-1 predicted
        inside = [[np.arange(at[k], at[k] + len(name) - 1) for _, name, at in cases]
                  for k in (0, 1)]                      # [occurrence][passage]: predictions
        by_occurrence = np.stack([np.mean([parts.heads[:, :, b, t].mean(-1) for b, t in
                                           enumerate(inside[k])], axis=0) for k in (0, 1)])
        shifted = text_logits - text_logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        own = np.take_along_axis(log_probs[:, :-1], text[:, 1:, None], -1)[..., 0]
        _, name, at = cases[0]
        passage = bytes(text[0, max(0, at[0] - 30):at[1] + len(name) + 10].astype(np.uint8))
        print(f"one of them: {name.decode()!r} twice in {passage.decode('utf-8', 'replace')!r}")
        once, again = (np.mean([own[b, t].mean() for b, t in enumerate(inside[k])])
                       for k in (0, 1))
        print(f"the model's log-prob of an identifier's bytes after its first: {once:+.2f} at "
              f"its first occurrence, {again:+.2f} at its second")
        text_classes = HeadScores.of_run(natural).classes
        cfg = text_model.config
        text_names = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        for name, a, b, kind in zip(text_names, by_occurrence[0].ravel(), by_occurrence[1].ravel(),
                                    text_classes.ravel()):
            print(f"head {name}: writes the correct byte {a:+.2f} (first occurrence)  {b:+.2f} "
                  f"(second)   {kind}")
        top = np.unravel_index(np.argmax(by_occurrence[1] - by_occurrence[0]),
                               by_occurrence.shape[1:])
        verdict = ("ok" if text_classes[top] == "induction"
                   else f"WRONG: HeadScores classes it {text_classes[top]}, not induction")
        print(f"the head that writes the second occurrence most over the first: "
              f"{top[0]}.{top[1]}  {verdict}")
        fig, ax = plt.subplots(figsize=(9, 4))
        x = np.arange(len(text_names))
        ax.bar(x - 0.2, by_occurrence[0].ravel(), 0.4, label="first occurrence")
        ax.bar(x + 0.2, by_occurrence[1].ravel(), 0.4, label="second occurrence")
        ax.set_xticks(x, [f"head {n}\n{k}" for n, k in zip(text_names, text_classes.ravel())])
        ax.axhline(0, color="k", lw=0.5)
        ax.set(ylabel="direct logit attribution (logit)",
               title="natural text: a repeated identifier's bytes, what each head writes")
        ax.legend()
        common.save(fig, "ex16_logit_attribution_natural")
