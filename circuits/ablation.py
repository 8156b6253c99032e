"""Attention-head ablations (paper, method "(2) Per-token losses (attention head
ablations)"), read with the in-context-learning score (circuits.icl).

N eval sequences, T positions, V d_vocab, A ablations.

Two ways to remove a head (or a set of heads), one run of the model each:
  "full"                zero the head's result vector; everything downstream is recomputed,
                        so later heads' attention patterns change too.
  "pattern-preserving"  run the model once and record every attention pattern; run it again
                        with the head's result zeroed and every pattern replayed. Only later
                        heads' values (V) see the ablation, not their queries and keys. The
                        paper's Model Analysis Table shows these.
The output is the per-token loss on the fixed eval set with each ablation, (A, N, T-1), beside
the unablated one (N, T-1); from them follow the change in ICL score (icl_change) and the
projection of the change onto any per-token-loss vector (loss_projection).

Speed: the eval set goes through in batches of 16. Each batch runs once clean (its patterns
kept by hooks), once with every pattern replayed and nothing ablated (recording what each
ablation reuses), and once per ablation from its lowest ablated layer up (reuse=True): the
layers below see nothing of the ablation, and the ablated layer only redoes its output
projection; the numbers are those of a whole forward per ablation (reuse=False), to the bit.
A replayed layer skips the queries, keys and softmax, so pattern-preserving ablations are the
cheaper kind. The heads are ablated one after another, not as one batch tiled once per head:
OpenBLAS rounds a (B*T,D) product differently for another B, so a tiled batch would not give
the same bits. benchmarks/bench_measure.py times both paths (docs/backends-and-speed.md).
"""
from collections import namedtuple

import numpy as np

from minitransformer.interventions import ablate_heads, combine, record, replay

from .icl import icl_score

METHODS = ("pattern-preserving", "full")
BATCH = 16

AblationLosses = namedtuple("AblationLosses", "clean ablated ablations method")
AblationLosses.__doc__ = """clean (N,T-1) per-token losses of the unablated model; ablated
(A,N,T-1), one row per ablation; ablations: A tuples of (layer, head); method."""


def every_head(config):
    """[((0, 0),), ((0, 1),), ...]: each head of the model alone, layer by layer."""
    return [((l, h),) for l in range(config.n_layers) for h in range(config.n_heads)]


def _head_sets(model, ablations):
    """None -> every head alone; each item a (layer, head) or an iterable of them -> tuples."""
    if ablations is None:
        return every_head(model.config)
    sets = []
    for item in ablations:
        heads = (item,) if len(item) == 2 and all(np.isscalar(x) for x in item) else item
        heads = tuple((int(l), int(h)) for l, h in heads)
        for l, h in heads:
            if not (0 <= l < model.config.n_layers and 0 <= h < model.config.n_heads):
                raise ValueError(f"ablations: head {l}.{h} does not exist in a model of "
                                 f"{model.config.n_layers} layers x {model.config.n_heads} heads")
        sets.append(heads)
    return sets


def _ablated_batches(model, tokens, ablations, method, batch, output, reuse=True):
    """For each batch of `tokens`: (clean, [ablated for each head set]), as computed by
    output(model, tokens, hooks, ...) ("logits" or "losses").
    reuse=False: every ablation is a whole forward (the readable version). reuse=True: an
    ablation whose lowest head is in layer l starts at layer l (start_at_layer) from what a
    forward without ablation made there, recorded once per batch: the residual stream
    entering layer l and the layer's head outputs z (replayed, so only the ablated heads
    change and layer l makes no values or pattern). That forward is the clean one for
    "full"; for "pattern-preserving" it is one with every pattern replayed, since a replayed
    layer multiplies the recorded pattern and so differs from the clean forward's blocked
    core in the last bits. The same numbers either way, to the bit (tests/test_ablation.py)."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    run = model.forward if output == "logits" else model.per_token_loss
    lowest = {heads: min(l for l, _ in heads) for heads in ablations if heads and reuse}
    reused = [name for l in sorted(set(lowest.values()))
              for name in (f"blocks.{l}.hook_resid_pre", f"blocks.{l}.attn.hook_z")]
    pattern_names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.config.n_layers)]
    for start in range(0, len(tokens), batch):
        chunk = tokens[start:start + batch]
        recorded, patterns = {}, {}
        if method == "full":
            clean = run(chunk, hooks=record(reused, recorded))
        else:   # the clean forward's own patterns, as its hooks see them: no host copies
            clean = run(chunk, hooks=record(pattern_names, patterns))
            if reused:
                model.forward(chunk, hooks=combine(replay(patterns, pattern_names),
                                                   record(reused, recorded)))
        ablated = []
        for heads in ablations:
            if heads in lowest:   # from the lowest ablated layer up, its z replayed
                l = lowest[heads]
                hooks = combine(replay(patterns, pattern_names[l + 1:] if patterns else []),
                                replay(recorded, [f"blocks.{l}.attn.hook_z"]), ablate_heads(heads))
                ablated.append(run(chunk, hooks, start_at_layer=l,
                                   resid_pre=recorded[f"blocks.{l}.hook_resid_pre"]))
            else:
                hooks = combine(replay(patterns, list(patterns)), ablate_heads(heads))
                ablated.append(run(chunk, hooks))
        yield clean, ablated


def _tokens(model, tokens):
    tokens = np.asarray(tokens)
    return tokens[None] if tokens.ndim == 1 else tokens


def ablation_losses(model, tokens, ablations=None, method="pattern-preserving", batch=BATCH,
                    reuse=True):
    """Per-token losses of `model` on eval tokens (N,T) with each ablation.
    ablations: head sets, each a (layer, head) or a list of them (ablated together); None:
    every head alone, in every_head order. method: "pattern-preserving" or "full".
    reuse: run each ablation from its lowest ablated layer up, on the residual stream
    recorded below it (the same numbers; False: a whole forward per ablation).
    -> AblationLosses(clean (N,T-1), ablated (A,N,T-1), ablations, method), float32."""
    tokens = _tokens(model, tokens)
    ablations = _head_sets(model, ablations)
    clean, ablated = [], [[] for _ in ablations]
    for c, a in _ablated_batches(model, tokens, ablations, method, batch, "losses", reuse):
        clean.append(c)
        for rows, losses in zip(ablated, a):
            rows.append(losses)
    stacked = np.stack([np.concatenate(rows) for rows in ablated]) if ablations else \
        np.zeros((0, len(tokens), tokens.shape[1] - 1))
    return AblationLosses(np.concatenate(clean).astype(np.float32), stacked.astype(np.float32),
                          ablations, method)


def ablation_logits(model, tokens, ablations=None, method="pattern-preserving", batch=BATCH,
                    reuse=True):
    """As ablation_losses, the logits instead (for small inputs: A copies of (N,T,V)).
    -> (clean (N,T,V), ablated (A,N,T,V))."""
    tokens = _tokens(model, tokens)
    ablations = _head_sets(model, ablations)
    parts = list(_ablated_batches(model, tokens, ablations, method, batch, "logits", reuse))
    clean = np.concatenate([c for c, _ in parts])
    ablated = np.stack([np.concatenate([a[i] for _, a in parts]) for i in range(len(ablations))])
    return clean, ablated


def icl_change(result, **icl_options):
    """The change in ICL score each ablation makes: icl_score(ablated) - icl_score(clean),
    (A,). Positive: the model learns less in context without the head(s).
    icl_options: early, late, half_window of icl_score."""
    base = icl_score(result.clean, **icl_options)
    return np.array([icl_score(losses, **icl_options) - base for losses in result.ablated])


def loss_projection(result, direction):
    """Each ablation's change in per-token loss (ablated - clean) projected onto a per-token-
    loss vector `direction` (e.g. a snapshot's losses minus an earlier one's: the paper's
    before-and-after vector): <change, direction> / ||direction||. direction (N,T-1) uses
    every token; (T-1,) is read as a context-index average and meets the change averaged over
    sequences. -> (A,)."""
    direction = np.asarray(direction, dtype=np.float64)
    change = result.ablated.astype(np.float64) - result.clean                 # (A,N,T-1)
    if direction.shape == result.clean.shape[1:]:
        change = change.mean(1)                                               # (A,T-1)
    elif direction.shape != result.clean.shape:
        raise ValueError(f"direction: shape {direction.shape}, expected {result.clean.shape} "
                         f"(per token) or {result.clean.shape[1:]} (per context index)")
    norm = np.linalg.norm(direction)
    if norm == 0:
        raise ValueError("direction: a zero vector has no direction")
    return change.reshape(len(change), -1) @ direction.ravel() / norm
