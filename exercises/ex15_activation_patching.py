"""Exercise 15: activation patching on repeated sequences: find the two heads of the circuit.

Paper: "Key Concepts: Induction Heads" (the induction head finds an earlier occurrence of
the present token A through what a previous-token head wrote there, "which token came
before me", and copies the token B that followed it) and method "(2) Per-token losses
(attention head ablations)", in the form the field has used since: activation patching
(causal tracing, Meng et al. 2022; Wang et al. 2022's IOI circuit; TransformerLens's
patching functions). Run the model on a clean input and on a corrupted one, put one activation of
the clean run into the corrupted run, and measure how much of the clean answer comes back.

The two runs. clean = BOS + a segment of distinct random tokens + the same segment again.
The query q in the second copy holds token A, and the model predicts the next token B by
induction: A sat at position c = q - length in the first copy, B right after it at c + 1.
corrupted = the same tokens with A at position c replaced by a token found nowhere in its
row: the previous-token head at c + 1 now reports that token, so the query finds no earlier
A to follow.

What to compute:
  1. corrupt(tokens, position, d_vocab, seed): a copy of tokens whose token at `position`
     is replaced, in each row, by a token from 1..d_vocab-1 that the row does not hold.
  2. logit_difference(logits, query, target, distractor): per row b, the logit of token
     target[b] minus that of distractor[b], read where the model predicts the token after
     position `query`; the mean over rows. Here target = B and distractor = the token
     corrupt put in A's place.
  3. normalised_metric(value, clean_value, corrupted_value): rescale so that the corrupted
     run's value is 0 and the clean run's 1; value may be an array (a whole map).
  4. patch_position_hook(clean_activation, position) -> hook(activation, name): a hook for
     the corrupted run that returns its activation with position `position` of every row
     taken from the clean run's. The activation a hook receives is read-only.
  5. patch_residual(model, clean_tokens, corrupted_tokens, metric): for each layer l and
     position p, the metric of the corrupted run with blocks.{l}.hook_resid_pre (the input
     of layer l) patched at p alone.
  6. patch_head_hook(clean_z, head) and patch_head_outputs(model, clean_tokens,
     corrupted_tokens, metric): the same for one head's output, its slice of
     blocks.{l}.attn.hook_z, at every position at once; one head at a time.
  7. name_heads(residual_map, head_map), from the two maps normalised: in each layer's
     input one position matters most. Where that position moves one step forward, from
     layer l's input to layer l + 1's, a head of layer l has moved the information to the
     next position: the previous-token head is layer l's head of largest effect. The
     induction head is the head of largest effect in the layers after l.

Shapes: tokens (B, T) int; logits (B, T, V); metric(logits) -> float.
        hook_resid_pre (B, T, D); hook_z (B, T, H, E): batch, position, head, d_head.
        patch_residual -> (n_layers, T); patch_head_outputs -> (n_layers, n_heads).
        name_heads -> ((layer, head) previous-token, (layer, head) induction).

Hooks (exercises 12 and 14): model.forward(tokens, hooks={name: fn}) calls fn(activation,
name) at hook point `name`; fn returns None to keep the activation or a replacement of the
same shape. model.run_with_cache(tokens) -> (logits, cache), cache[name] every activation.

Run: python -m exercises.ex15_activation_patching    Check: make exercise N=15
Hints, one step at a time: python -m exercises.hint 15 (then --step 2)
"""
import numpy as np

from circuits import HeadScores, repeated_random_tokens
from circuits.patching import logit_diff_metric, normalise, patch_head_out, patch_resid
from exercises import common


def corrupt(tokens, position, d_vocab, seed=0):
    """tokens (B, T) -> (B, T): position `position` of each row holds a token new to it."""
    raise NotImplementedError(
        'exercise 15: a copy; in each row, a token the row does not hold, at `position`')


def logit_difference(logits, query, target, distractor):
    """logits (B, T, V); target, distractor (B,) -> float: mean over b of the logit
    difference target[b] - distractor[b] at position `query`."""
    raise NotImplementedError(
        "exercise 15: each row's two logits at the query position, subtracted, averaged")


def normalised_metric(value, clean_value, corrupted_value):
    """value: a float or an array -> the same shape, 0 at corrupted_value, 1 at clean_value."""
    raise NotImplementedError(
        'exercise 15: a straight line through (corrupted, 0) and (clean, 1)')


def patch_position_hook(clean_activation, position):
    """clean_activation (B, T, ...) -> hook(activation, name) returning the activation with
    [:, position] from the clean run."""
    raise NotImplementedError(
        'exercise 15: a hook that returns a patched copy of what it is given')


def patch_residual(model, clean_tokens, corrupted_tokens, metric):
    """-> (n_layers, T): metric of the corrupted run with blocks.{l}.hook_resid_pre taken
    from the clean run at one position p."""
    raise NotImplementedError(
        'exercise 15: the clean cache, then one patched corrupted run per layer and position')


def patch_head_hook(clean_z, head):
    """clean_z (B, T, H, E) -> hook(z, name) returning z with head `head`, at every
    position, from the clean run."""
    raise NotImplementedError('exercise 15: as patch_position_hook, on the head axis of z')


def patch_head_outputs(model, clean_tokens, corrupted_tokens, metric):
    """-> (n_layers, n_heads): metric of the corrupted run with one head's output
    (its slice of blocks.{l}.attn.hook_z) taken from the clean run at every position."""
    raise NotImplementedError(
        'exercise 15: as patch_residual, over heads, at blocks.{l}.attn.hook_z')


def name_heads(residual_map, head_map):
    """residual_map (n_layers, T), head_map (n_layers, n_heads), both normalised ->
    ((layer, head) of the previous-token head, (layer, head) of the induction head)."""
    raise NotImplementedError(
        'exercise 15: the layer where the peak moves on; its strongest head; the strongest '
        'after it')


if __name__ == "__main__":
    plt = common.pyplot()
    run = common.trained_run()
    model = run.model()
    V, length, position = model.config.d_vocab, 20, 13     # A at 13 in the first copy
    query = position + length                               # ... and at 33 in the second
    clean = repeated_random_tokens(8, length, 2, run.token_counts, V, seed=0)   # (8, 41)
    corrupted = corrupt(clean, position, V, seed=0)
    target, distractor = clean[:, position + 1], corrupted[:, position]

    def metric(logits):
        return logit_difference(logits, query, target, distractor)
    clean_value, corrupted_value = metric(model.forward(clean)), metric(model.forward(corrupted))
    print(f"logit difference at the query ({query}): clean {clean_value:+.2f}, corrupted "
          f"{corrupted_value:+.2f} (A at {position} replaced)")
    residual = normalised_metric(patch_residual(model, clean, corrupted, metric),
                                 clean_value, corrupted_value)
    heads = normalised_metric(patch_head_outputs(model, clean, corrupted, metric),
                              clean_value, corrupted_value)

    # the engine's own patching (circuits.patching) of the same runs: yours should agree
    _, clean_cache = model.run_with_cache(clean)
    engine = logit_diff_metric(query, target, distractor)
    for what, yours, theirs in [
            ("residual map", residual, patch_resid(model, corrupted, clean_cache, engine)),
            ("head map", heads, patch_head_out(model, corrupted, clean_cache, engine))]:
        theirs = normalise(theirs, clean_value, corrupted_value)
        if not np.allclose(yours, theirs, atol=1e-3):
            print(f"WRONG: your {what} differs from circuits.patching's by up to "
                  f"{np.abs(yours - theirs).max():.3f}")

    for layer, row in enumerate(residual):
        print(f"input of layer {layer}: patching position {row.argmax()} restores "
              f"{row.max():.2f} of the clean answer")
    previous_token, induction = name_heads(residual, heads)
    classes = HeadScores.of_run(run).classes                # circuits.scores: prefix matching, ...
    for layer in range(model.config.n_layers):
        for head in range(model.config.n_heads):
            named = ("  <- previous-token head, by patching" if (layer, head) == previous_token
                     else "  <- induction head, by patching" if (layer, head) == induction else "")
            print(f"head {layer}.{head}: patching its output restores {heads[layer, head]:+.2f}"
                  f"   HeadScores: {classes[layer, head]}{named}")
    for what, (layer, head), kind in [("previous-token", previous_token, "previous-token"),
                                      ("induction", induction, "induction")]:
        if classes[layer, head] != kind:
            print(f"WRONG: the {what} head you named, {layer}.{head}, is "
                  f"{classes[layer, head]!r} by circuits.HeadScores")

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.2),
                                      gridspec_kw=dict(width_ratios=(1, 4)))
    scale = dict(cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    image = left.imshow(heads, **scale)
    left.set(xlabel="head", ylabel="layer", xticks=range(model.config.n_heads),
             yticks=range(model.config.n_layers), title="each head's output (hook_z)")
    right.imshow(residual, **scale)
    for x in (position, query):
        right.axvline(x, color="k", lw=0.6, ls=":")
    right.set(xlabel=f"position patched (dotted: A replaced at {position}, the query at {query})",
              ylabel="layer", yticks=range(model.config.n_layers),
              title="the residual stream entering each layer (hook_resid_pre), one position")
    fig.colorbar(image, ax=right, label="share of the clean answer restored")
    fig.suptitle(f"patching clean into corrupted: previous-token head {previous_token[0]}."
                 f"{previous_token[1]}, induction head {induction[0]}.{induction[1]}")
    common.save(fig, "ex15_activation_patching")
