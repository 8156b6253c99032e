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
    # BEGIN SOLUTION: a copy; in each row, a token the row does not hold, at `position`
    # Hint 1: the clean tokens are still needed after this, so do not write into them. Which
    #   tokens may the new one be? Not BOS (0), nothing from d_vocab on, nothing in the row.
    # Hint 2: copy the array; for each row, the candidates are 1..d_vocab-1 less the row's
    #   own tokens (a set difference); draw one with a generator made from the seed and
    #   write it at the position asked for.
    # Hint 3: `corrupted = np.array(tokens, copy=True)`; `rng = np.random.default_rng(seed)`;
    #   then `for row in corrupted: row[position] = rng.choice(np.setdiff1d(np.arange(1,
    #   d_vocab), row))` (each row is a view: it writes into corrupted).
    rng = np.random.default_rng(seed)
    corrupted = np.array(tokens, copy=True)
    for row in corrupted:                                   # a view: writes go into corrupted
        unused = np.setdiff1d(np.arange(1, d_vocab), row)
        row[position] = rng.choice(unused)
    return corrupted
    # END SOLUTION


def logit_difference(logits, query, target, distractor):
    """logits (B, T, V); target, distractor (B,) -> float: mean over b of the logit
    difference target[b] - distractor[b] at position `query`."""
    # BEGIN SOLUTION: each row's two logits at the query position, subtracted, averaged
    # Hint 1: the logits at position i are the model's prediction of token i + 1. Each row
    #   has its own target and distractor.
    # Hint 2: index the logits with three arrays at once: the rows 0..B-1, the query, and
    #   the target (then the distractor), so that row b is read at its own tokens only;
    #   subtract, take the mean, return a float.
    # Hint 3: `rows = np.arange(len(target))`, then `float(np.mean(logits[rows, query,
    #   target] - logits[rows, query, distractor]))`.
    rows = np.arange(len(target))
    return float(np.mean(logits[rows, query, target] - logits[rows, query, distractor]))
    # END SOLUTION


def normalised_metric(value, clean_value, corrupted_value):
    """value: a float or an array -> the same shape, 0 at corrupted_value, 1 at clean_value."""
    # BEGIN SOLUTION: a straight line through (corrupted, 0) and (clean, 1)
    # Hint 1: what must the result be when value == corrupted_value, and when value ==
    #   clean_value? A linear function is fixed by those two points.
    # Hint 2: subtract the value that must become 0, then divide by the distance between
    #   the two runs' values, measured in the direction that makes the clean run 1.
    # Hint 3: `(np.asarray(value, dtype=np.float64) - corrupted_value) / (clean_value -
    #   corrupted_value)`.
    value = np.asarray(value, dtype=np.float64)
    return (value - corrupted_value) / (clean_value - corrupted_value)
    # END SOLUTION


def patch_position_hook(clean_activation, position):
    """clean_activation (B, T, ...) -> hook(activation, name) returning the activation with
    [:, position] from the clean run."""
    # BEGIN SOLUTION: a hook that returns a patched copy of what it is given
    # Hint 1: define a function inside this one, with the two arguments every hook takes,
    #   and return it. The activation it is given is read-only, and the axes are (batch,
    #   position, ...).
    # Hint 2: in the hook, copy the activation, overwrite that one position of every row
    #   with the clean activation's, and return the copy (the rest stays the corrupted
    #   run's).
    # Hint 3: `def hook(activation, name): patched = activation.copy(); patched[:, position]
    #   = clean_activation[:, position]; return patched`, then `return hook`.
    def hook(activation, name):
        patched = activation.copy()                         # read-only: change a copy
        patched[:, position] = clean_activation[:, position]
        return patched
    return hook
    # END SOLUTION


def patch_residual(model, clean_tokens, corrupted_tokens, metric):
    """-> (n_layers, T): metric of the corrupted run with blocks.{l}.hook_resid_pre taken
    from the clean run at one position p."""
    # BEGIN SOLUTION: the clean cache, then one patched corrupted run per layer and position
    # Hint 1: which run do you record, and which run do you change? The forward you call
    #   with the hook is the one whose answer you hope to restore.
    # Hint 2: record the clean run with run_with_cache once. Then for each layer l and
    #   position p, run the corrupted tokens with patch_position_hook of the clean
    #   blocks.{l}.hook_resid_pre at p, at that hook point, and keep metric(logits).
    # Hint 3: `name = f"blocks.{layer}.hook_resid_pre"`; `values[layer, position] =
    #   metric(model.forward(corrupted_tokens, hooks={name:
    #   patch_position_hook(clean_cache[name], position)}))`.
    _, clean_cache = model.run_with_cache(clean_tokens)
    T = np.shape(corrupted_tokens)[1]
    values = np.zeros((model.config.n_layers, T))
    for layer in range(model.config.n_layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for position in range(T):
            hook = patch_position_hook(clean_cache[name], position)
            values[layer, position] = metric(model.forward(corrupted_tokens, hooks={name: hook}))
    return values
    # END SOLUTION


def patch_head_hook(clean_z, head):
    """clean_z (B, T, H, E) -> hook(z, name) returning z with head `head`, at every
    position, from the clean run."""
    # BEGIN SOLUTION: as patch_position_hook, on the head axis of z
    # Hint 1: patch_position_hook again, but the slice is one head at every position. Which
    #   axis of z (B, T, H, E) is the head's?
    # Hint 2: copy z, overwrite everything at that head's index (axis 2, every row and
    #   position) with the clean z's, return the copy.
    # Hint 3: `patched = z.copy(); patched[:, :, head] = clean_z[:, :, head]; return
    #   patched`, inside `def hook(z, name):`.
    def hook(z, name):
        patched = z.copy()                                  # read-only: change a copy
        patched[:, :, head] = clean_z[:, :, head]           # z (B,T,H,E): heads on axis 2
        return patched
    return hook
    # END SOLUTION


def patch_head_outputs(model, clean_tokens, corrupted_tokens, metric):
    """-> (n_layers, n_heads): metric of the corrupted run with one head's output
    (its slice of blocks.{l}.attn.hook_z) taken from the clean run at every position."""
    # BEGIN SOLUTION: as patch_residual, over heads, at blocks.{l}.attn.hook_z
    # Hint 1: the same two runs as in patch_residual; only the hook point and the hook differ.
    # Hint 2: record the clean run once; for each layer and head, run the corrupted tokens
    #   with patch_head_hook of the clean blocks.{l}.attn.hook_z and that head, and keep
    #   metric(logits).
    # Hint 3: `name = f"blocks.{layer}.attn.hook_z"`; `values[layer, head] =
    #   metric(model.forward(corrupted_tokens, hooks={name: patch_head_hook(clean_cache[name],
    #   head)}))`.
    _, clean_cache = model.run_with_cache(clean_tokens)
    values = np.zeros((model.config.n_layers, model.config.n_heads))
    for layer in range(model.config.n_layers):
        name = f"blocks.{layer}.attn.hook_z"
        for head in range(model.config.n_heads):
            hook = patch_head_hook(clean_cache[name], head)
            values[layer, head] = metric(model.forward(corrupted_tokens, hooks={name: hook}))
    return values
    # END SOLUTION


def name_heads(residual_map, head_map):
    """residual_map (n_layers, T), head_map (n_layers, n_heads), both normalised ->
    ((layer, head) of the previous-token head, (layer, head) of the induction head)."""
    # BEGIN SOLUTION: the layer where the peak moves on; its strongest head; the strongest after it
    # Hint 1: first find, for each layer's input, the position whose patch matters most.
    #   Where does that position change from one layer to the next?
    # Hint 2: the peak position of each row of residual_map; the first layer l whose peak
    #   is one less than layer l + 1's. The previous-token head: the largest entry of
    #   head_map[l]. The induction head: the largest entry of the rows after l (turn its
    #   flat index back into (layer, head)). Return plain ints.
    # Hint 3: `peaks = residual_map.argmax(1)`; `layer = next(l for l in range(len(peaks) -
    #   1) if peaks[l + 1] == peaks[l] + 1)`; `later = head_map[layer + 1:]`; `l, h =
    #   np.unravel_index(later.argmax(), later.shape)`; the induction head is
    #   `(layer + 1 + l, h)`.
    residual_map, head_map = np.asarray(residual_map), np.asarray(head_map)
    peaks = residual_map.argmax(axis=1)                     # (n_layers,): a position per layer
    layer = next(l for l in range(len(peaks) - 1) if peaks[l + 1] == peaks[l] + 1)
    previous_token = (layer, int(head_map[layer].argmax()))
    later = head_map[layer + 1:]
    l, h = np.unravel_index(later.argmax(), later.shape)
    return previous_token, (layer + 1 + int(l), int(h))
    # END SOLUTION


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
