"""Benchmark: what experiments.measure computes for one snapshot, each fast path beside the
readable version it is tested equal to (to the bit), interleaved A, B, A, B, ... in one
process so that a busy machine slows both alike; medians and ratios.

    python benchmarks/bench_measure.py [--preset mlp-5l | --run RUN] [--repeats 3]
                                       [--n-eval 128] [--n-ablate 32] [--json out.json]

Stages, on one BLAS thread as experiments.measure runs them:
  losses     per-token losses of --n-eval eval sequences: forward_train and the training
             loss's log-softmax (readable) against Model.per_token_loss, which keeps no
             cache (experiments.losses.per_token_losses, batches of 32)
  ablations  every head's pattern-preserving ablation on --n-ablate sequences: a whole
             forward per head (reuse=False) against each head's forward from its own layer
             up (reuse=True, circuits.ablation); both on the cache-less per_token_loss
A measurement of the run multiplies them: 50 snapshots x 512 sequences of losses, 10
snapshots x 128 sequences of ablations. Random weights of --preset and random tokens, or
the last snapshot and eval set of a trained --run.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))   # the code beside it
from circuits.ablation import ablation_losses  # noqa: E402
from minitransformer.cpu import command_settings  # noqa: E402
from experiments.losses import BATCH, per_token_losses  # noqa: E402
from minitransformer import Model  # noqa: E402
from minitransformer.ops.loss import _log_softmax_at_targets  # noqa: E402
from minitransformer.presets import preset  # noqa: E402
from minitransformer.runs import Run  # noqa: E402


def readable_losses(model, tokens, batch=BATCH):
    """The per-token losses as the training forward makes them (cache kept, probabilities)."""
    parts = []
    for i in range(0, len(tokens), batch):
        logits, cache = model.forward_train(tokens[i:i + batch])
        parts.append(_log_softmax_at_targets(logits, cache.tokens)[0])
    return np.concatenate(parts).astype(np.float32)


def interleaved(pairs, repeats):
    """{stage: (readable, fast)} of callables -> {stage: {readable, fast: median s, ratio,
    identical}}, the two run alternately `repeats` times after one warm-up each."""
    results = {}
    for stage, (slow, fast) in pairs.items():
        same = _equal(slow(), fast())
        times = {"readable": [], "fast": []}
        for _ in range(repeats):
            for name, fn in (("readable", slow), ("fast", fast)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(t) for name, t in times.items()}
        results[stage] = dict(medians, ratio=medians["readable"] / medians["fast"], identical=same)
    return results


def _equal(a, b):
    if hasattr(a, "ablated"):
        return bool(np.array_equal(a.clean, b.clean) and np.array_equal(a.ablated, b.ablated))
    return bool(np.array_equal(a, b))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mlp-5l", help="random weights of this preset")
    parser.add_argument("--run", help="a trained run: its last snapshot and eval set instead")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-eval", type=int, default=128)
    parser.add_argument("--n-ablate", type=int, default=32)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.run:
        run = Run(args.run)
        model, tokens, name = run.model(), run.eval_tokens, args.run
    else:
        model = Model(preset(args.preset)[0], seed=0)
        cfg = model.config
        tokens = np.random.default_rng(0).integers(0, cfg.d_vocab, (max(args.n_eval, args.n_ablate),
                                                                    cfg.n_ctx))
        name = f"{args.preset} (random weights)"
    losses, ablate = tokens[:args.n_eval], tokens[:args.n_ablate]
    with command_settings():
        results = interleaved({
            "losses": (lambda: readable_losses(model, losses), lambda: per_token_losses(model, losses)),
            "ablations": (lambda: ablation_losses(model, ablate, reuse=False),
                          lambda: ablation_losses(model, ablate))}, args.repeats)
    print(f"{name}: medians of {args.repeats}, interleaved, one BLAS thread")
    for stage, r in results.items():
        n = len(losses) if stage == "losses" else len(ablate)
        print(f"  {stage:9s} ({n} sequences)  readable {r['readable']:7.3f} s   fast {r['fast']:7.3f} s"
              f"   x{r['ratio']:.2f}   {'same bits' if r['identical'] else 'NUMBERS DIFFER'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(model=name, repeats=args.repeats, stages=results), f, indent=1)
    return 0 if all(r["identical"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
