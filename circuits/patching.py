"""python -m circuits.patching RUN [--step S] [--pairs N] [--query Q] [--metric logit-diff|loss]

Activation patching (causal tracing), on top of the model's hooks, as TransformerLens's
patching utilities: run the corrupted tokens, replace one activation with its value from
the clean run, and read a metric of the logits. Two sweeps:
  patch_head_out   per layer x head: the head's output (hook_z, its slice of
                   blocks.{l}.attn.hook_z, or hook_result) at chosen positions (default
                   all): TransformerLens's get_act_patch_attn_head_out_all_pos
  patch_resid      per layer x position: the residual stream (blocks.{l}.hook_resid_pre or
                   hook_resid_post) at one position at a time: get_act_patch_resid_pre
Metrics: the logit difference of a target token over a distractor at a query position
(logit_diff_metric), or the loss of the target there (loss_metric). Read normalised, as
TransformerLens and ARENA do: (patched - corrupted) / (clean - corrupted), 1 = the patch
restores the clean run's metric, 0 = it changes nothing.

The CLI's pairs, for induction (induction_pairs): clean = the first half of an eval sequence
followed by that half again, so every token of the second copy is predicted by the first;
corrupted = the first half of the next eval sequence followed by the same second copy, so
the copy has nothing earlier to match. The metric is read at --query (default the
second-to-last position, whose next token the repeat gives), averaged over the pairs:
target = the clean next token, distractor = the corrupted first half's token at the place
the target sits in the clean first half (what an induction head reading that place copies).
On an induction circuit, patching the induction head's output restores the copy (~1), and
the residual stream before its layer carries the answer at the position just after the
query token's earlier occurrence. Prints two tables, writes a figure (--plot, default
<run dir>/patching.png); --json for the numbers.
"""
import argparse
import json
import math
import pathlib
import sys
from dataclasses import dataclass

import numpy as np

from minitransformer.backend import to_numpy
from minitransformer.interventions import combine
from minitransformer.io import atomic_write, error, os_error, output_file
from minitransformer.runs import Run

from .cli import run_parser
from minitransformer.cpu import command_settings

HEAD_HOOKS = ("hook_z", "hook_result")                 # (B,T,H,E), (B,T,H,D): head axis 2
RESID_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post")
METRICS = ("logit-diff", "loss")


# ---- metrics: logits (B,T,V) -> a float, averaged over the batch ---------------------------

def logit_diff_metric(query, target, distractor):
    """-> metric(logits) = mean over b of logits[b, query, target[b]] - logits[b, query,
    distractor[b]]. target, distractor (B,) token ids."""
    target, distractor = np.asarray(target), np.asarray(distractor)

    def metric(logits):
        rows = np.arange(len(target))
        return float(np.mean(logits[rows, query, target] - logits[rows, query, distractor]))
    return metric


def loss_metric(query, target):
    """-> metric(logits) = mean over b of -log softmax(logits[b, query])[target[b]]."""
    target = np.asarray(target)

    def metric(logits):
        x = np.asarray(logits[:, query], dtype=np.float64)                  # (B,V)
        top = x.max(-1, keepdims=True)
        log_z = np.log(np.exp(x - top).sum(-1)) + top[:, 0]
        return float(np.mean(log_z - x[np.arange(len(target)), target]))
    return metric


def normalise(patched, clean, corrupted):
    """(patched - corrupted) / (clean - corrupted): 1 = clean restored, 0 = unchanged."""
    if clean == corrupted:
        raise ValueError(f"the clean and corrupted runs give the same metric ({clean:.6g}): "
                         f"there is nothing for a patch to restore")
    return (np.asarray(patched, dtype=np.float64) - corrupted) / (clean - corrupted)


# ---- patching ------------------------------------------------------------------------------

def patch_hook(clean_cache, name, index):
    """{name: hook} that writes clean_cache[name][index] into the activation (the rest of it
    stays the corrupted run's)."""
    source = clean_cache[name]

    def hook(activation, name):
        patched = np.array(to_numpy(activation))
        patched[index] = source[index]
        return patched
    return {name: hook}


def _check_source(model, corrupted_tokens, clean_cache, name):
    tokens = np.asarray(corrupted_tokens)
    tokens = tokens[None] if tokens.ndim == 1 else tokens
    if name not in model.hook_names():
        raise ValueError(f"hook: {name!r} is not a hook point of this model")
    if name not in clean_cache:
        raise ValueError(f"clean_cache: no {name}; give the cache of model.run_with_cache(clean)")
    if clean_cache[name].shape[:2] != tokens.shape:
        raise ValueError(f"clean_cache: {name} is of {clean_cache[name].shape[:2]} (batch, "
                         f"positions), the corrupted tokens of {tokens.shape}")
    return tokens


def patch_head_out(model, corrupted_tokens, clean_cache, metric, hook="hook_z", positions=None,
                   hooks=None):
    """(L,H): metric(logits) of the corrupted run with head h of layer l's output, its slice
    of blocks.{l}.attn.{hook} (hook_z or hook_result), replaced by the clean run's at
    `positions` (a list; None: every position), one head at a time. hooks (e.g. a replay of
    the patterns, minitransformer.interventions) go to every patched forward, before the patch."""
    if hook not in HEAD_HOOKS:
        raise ValueError(f"hook: {hook!r} is not one of {', '.join(HEAD_HOOKS)}")
    cfg = model.config
    where = slice(None) if positions is None else list(positions)
    values = np.empty((cfg.n_layers, cfg.n_heads))
    for layer in range(cfg.n_layers):
        name = f"blocks.{layer}.attn.{hook}"
        tokens = _check_source(model, corrupted_tokens, clean_cache, name)
        for head in range(cfg.n_heads):
            patch = patch_hook(clean_cache, name, (slice(None), where, head))
            values[layer, head] = metric(model.forward(tokens, hooks=combine(hooks or {}, patch)))
    return values


def patch_resid(model, corrupted_tokens, clean_cache, metric, hook="hook_resid_pre",
                positions=None, hooks=None):
    """(L,P): metric(logits) of the corrupted run with blocks.{l}.{hook} (the residual
    stream, (B,T,D)) replaced by the clean run's at position positions[p] alone (None:
    every position). hooks: as patch_head_out's."""
    if hook not in RESID_HOOKS:
        raise ValueError(f"hook: {hook!r} is not one of {', '.join(RESID_HOOKS)}")
    cfg = model.config
    T = np.asarray(corrupted_tokens).shape[-1]
    positions = range(T) if positions is None else positions
    values = np.empty((cfg.n_layers, len(positions)))
    for layer in range(cfg.n_layers):
        name = f"blocks.{layer}.{hook}"
        tokens = _check_source(model, corrupted_tokens, clean_cache, name)
        for i, position in enumerate(positions):
            patch = patch_hook(clean_cache, name, (slice(None), position))
            values[layer, i] = metric(model.forward(tokens, hooks=combine(hooks or {}, patch)))
    return values


# ---- the induction experiment of the CLI ---------------------------------------------------

def induction_pairs(eval_tokens, n_pairs):
    """(clean, corrupted), each (n_pairs, 2h) with h = n_ctx // 2: clean row i is eval
    sequence i's first half twice; corrupted row i is sequence i+1's first half (cyclic),
    then sequence i's."""
    eval_tokens = np.asarray(eval_tokens)
    N, T = eval_tokens.shape
    if N < 2 or not 1 <= n_pairs <= N:
        raise ValueError(f"--pairs {n_pairs}: the run's eval set has {N} sequences; choose "
                         f"1 to {N} (and the eval set needs at least 2)")
    if T < 4:
        raise ValueError(f"n_ctx={T}: a repeated half needs at least 4 positions")
    h = T // 2
    first = eval_tokens[:n_pairs, :h]
    other = eval_tokens[(np.arange(n_pairs) + 1) % N, :h]
    return np.concatenate([first, first], 1), np.concatenate([other, first], 1)


def query_position(query, length):
    """--query (None: length-2; negative counts from the end) -> a position of the second
    copy that has a next token: h <= q <= 2h-2."""
    h = length // 2
    q = length - 2 if query is None else (query + length if query < 0 else query)
    if not h <= q <= length - 2:
        raise ValueError(f"--query {query}: the metric is read at a position of the second "
                         f"copy that has a next token, {h} to {length - 2} (or -{length - h} to -2)")
    return q


@dataclass(frozen=True)
class InductionPatching:
    """Activation patching on induction pairs; `heads` and `resid` are normalised,
    (patched - corrupted) / (clean - corrupted), 1 = the clean metric restored."""
    metric: str               # "logit-diff" | "loss", read at position `query`
    query: int
    clean: float              # the metric of the clean run
    corrupted: float          # ... and of the corrupted run
    head_hook: str            # hook_z | hook_result, patched at every position
    heads: np.ndarray         # (L,H)
    resid_hook: str           # hook_resid_pre | hook_resid_post, patched one position at a time
    resid: np.ndarray         # (L,T)


def induction_patching(model, clean, corrupted, metric="logit-diff", query=None,
                       head_hook="hook_z", resid_hook="hook_resid_pre"):
    """Both sweeps on pairs from induction_pairs -> InductionPatching."""
    if metric not in METRICS:
        raise ValueError(f"--metric {metric!r}: not one of {', '.join(METRICS)}")
    q = query_position(query, clean.shape[1])
    target = clean[:, q + 1]
    read = (logit_diff_metric(q, target, corrupted[:, q + 1 - clean.shape[1] // 2])
            if metric == "logit-diff" else loss_metric(q, target))
    clean_logits, clean_cache = model.run_with_cache(clean)
    at_clean, at_corrupted = read(clean_logits), read(model.forward(corrupted))
    heads = patch_head_out(model, corrupted, clean_cache, read, head_hook)
    resid = patch_resid(model, corrupted, clean_cache, read, resid_hook)
    return InductionPatching(metric, q, at_clean, at_corrupted, head_hook,
                             normalise(heads, at_clean, at_corrupted), resid_hook,
                             normalise(resid, at_clean, at_corrupted))


# ---- output --------------------------------------------------------------------------------

def _value(x):
    x = float(x)
    return None if math.isnan(x) else x


def describe(result):
    """The metric's line."""
    what = ("logit difference of the clean next token over the corrupted copy's"
            if result.metric == "logit-diff" else "loss of the clean next token")
    return (f"metric: {what} at position {result.query}; clean {result.clean:.4f}, corrupted "
            f"{result.corrupted:.4f}; shown (patched - corrupted) / (clean - corrupted)")


def format_table(result, top=5):
    """The (L,H) table, then per layer the `top` positions whose patch moves the metric most."""
    L, H = result.heads.shape
    lines = [f"# {result.head_hook} of one head patched at every position",
             "layer " + "".join(f"{f'head {h}':>9}" for h in range(H))]
    lines += [f"{l:>5} " + "".join(f"{v:>+9.3f}" for v in result.heads[l]) for l in range(L)]
    lines.append(f"# {result.resid_hook} patched at one position: the {top} largest |effects|")
    for l in range(L):
        order = np.argsort(-np.abs(result.resid[l]), kind="stable")[:top]
        lines.append(f"layer {l}: " + "  ".join(f"pos {p} {result.resid[l, p]:+.3f}" for p in order))
    return "\n".join(lines)


def to_json(result, **extra):
    return dict(extra, metric=result.metric, query=result.query, clean=result.clean,
                corrupted=result.corrupted, head_hook=result.head_hook,
                heads=[[_value(v) for v in row] for row in result.heads],
                resid_hook=result.resid_hook,
                resid=[[_value(v) for v in row] for row in result.resid])


def plot(result, path, title):
    """Two heatmaps, layer x head and layer x position, on one diverging scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    L, H = result.heads.shape
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 2.2 + 0.6 * L), layout="constrained",
                                      gridspec_kw=dict(width_ratios=(1 + 0.3 * H, 6)))
    scale = dict(cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    image = left.imshow(result.heads, **scale)
    left.set(xlabel="head", ylabel="layer", xticks=range(H), yticks=range(L),
             title=f"{result.head_hook}, every position")
    right.imshow(result.resid, **scale)
    right.axvline(result.query, color="k", lw=0.6, ls=":")
    right.set(xlabel=f"position patched (dotted: the query, {result.query})", yticks=range(L),
              title=f"{result.resid_hook}, one position at a time")
    fig.colorbar(image, ax=[left, right], shrink=0.9, label="normalised effect")
    fig.suptitle(title, fontsize=9)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main(argv=None):
    parser = run_parser("python -m circuits.patching", __doc__, all_steps_help=argparse.SUPPRESS,
                        plot_help="the figure (default <run dir>/patching.png)")
    parser.add_argument("--pairs", type=int, help="clean/corrupted pairs from the eval set "
                        "(default 8, or every sequence of a smaller eval set)")
    parser.add_argument("--query", type=int, help="the position whose prediction the metric "
                        "reads (default: the second-to-last)")
    parser.add_argument("--metric", default="logit-diff", choices=METRICS)
    parser.add_argument("--head-hook", default="hook_z", choices=HEAD_HOOKS)
    parser.add_argument("--resid-hook", default="hook_resid_pre", choices=("hook_resid_pre", "hook_resid_post"))
    args = parser.parse_args(argv)
    try:
        if args.all_steps:
            raise ValueError("--all-steps: patching reads one snapshot; give --step S or none")
        if args.plot:
            output_file(args.plot, "--plot")
        run = Run(args.run, args.device)
        plot_path = pathlib.Path(args.plot) if args.plot else output_file(run.dir / "patching.png", "--plot")
        model = run.model(args.step)
        pairs = min(8, len(run.eval_tokens)) if args.pairs is None else args.pairs
        clean, corrupted = induction_pairs(run.eval_tokens, pairs)
        with command_settings():
            result = induction_patching(model, clean, corrupted, args.metric, args.query,
                                        args.head_hook, args.resid_hook)
        step = "latest weights" if args.step is None else f"step {args.step}"
        plot(result, plot_path, f"{run.path} ({step}), {pairs} induction pairs\n"
                                f"{describe(result)}")
    except ValueError as e:
        return error(e)
    except OSError as e:
        return os_error(e, args.run)
    if args.json:
        print(json.dumps(to_json(result, run=str(run.path), step=args.step, pairs=pairs,
                                 plot=str(plot_path)), indent=1))
        return 0
    print(f"# {run.path} ({step}): {pairs} pairs; clean = an eval sequence's first half "
          f"twice, corrupted = another's first half, then the same copy")
    print("# " + describe(result))
    print(format_table(result))
    print(f"plot: {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
