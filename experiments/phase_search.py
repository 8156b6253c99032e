"""Search for training settings that show the induction-head phase change quickly.

    python -m experiments.phase_search --tokens 12e6 --seed 0 key=value ...

Trains with the engine directly (no run directory) and prints, every --every tokens: the
train loss, the best layer>=1 prefix-matching score, and the loss on the first vs the later
copies of repeated random sequences. The results go in docs/phase-change-search.md.
"""
import argparse
import time

import numpy as np

from circuits import HeadScores, prefix_matching_score
from minitransformer import AdamW, Model, learning_rate
from minitransformer.backend import to_floats
from minitransformer.data import corpus_from_spec, random_crops, random_repeat_windows, repeat_spans
from minitransformer.presets import apply_overrides
from minitransformer.train import train_step

from .phase_change import repeated_copy_losses


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=float, default=12e6)
    parser.add_argument("--every", type=float, default=5e5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--corpus", default="stdlib")
    parser.add_argument("--repeat-fraction", type=float, default=0.0)
    parser.add_argument("--random-fraction", type=float, default=0.0)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    cfg = dict(n_layers=2, d_model=128, n_heads=2, d_head=64, n_ctx=256, normalization_type=None,
               pos_init="sinusoidal", pos_scale=0.3, pos_trainable=False)
    apply_overrides(cfg, {}, args.overrides)
    corpus = corpus_from_spec(args.corpus)
    counts = corpus.token_counts()
    # the same evaluator on tokens seen at least once per 100k: bytes that carry text, not
    # the rare UTF-8 bytes whose embeddings barely train (a diagnostic, not the table's score)
    common = np.where(counts >= counts.sum() * 1e-5, counts, 0)
    model = Model(cfg, seed=args.seed)
    opt = AdamW(betas=(0.9, 0.99))
    rng = np.random.default_rng(args.seed + 1000)
    text = random_crops(corpus.eval, 8, model.config.n_ctx, np.random.default_rng(5))
    frozen = set() if model.config.pos_trainable else {"pos_embed.W_pos"}
    print("config", cfg, "batch", args.batch, "lr", args.lr, "seed", args.seed,
          "repeat_fraction", args.repeat_fraction, "random_fraction", args.random_fraction, flush=True)
    seen, step, next_report, start, losses = 0, 0, 0, time.time(), []
    while True:
        if seen >= next_report or seen >= args.tokens:
            scores = HeadScores(model, text, counts)          # the tools' sample (circuits.scores)
            pm, prev = scores.prefix_matching, scores.previous_token
            pm_common = prefix_matching_score(model, token_counts=common)
            first, second = repeated_copy_losses(model, counts, n=16, length=50, seed=123)
            print(f"tokens {seen / 1e6:6.2f}M  t {time.time() - start:5.0f}s  "
                  f"loss {np.mean(losses[-50:]) if losses else float('nan'):.3f}  "
                  f"pm_max_L1+ {pm[1:].max() if len(pm) > 1 else float('nan'):.3f}  "
                  f"pm_common_L1+ {pm_common[1:].max() if len(pm) > 1 else float('nan'):.3f}  "
                  f"pm_max_L0 {pm[0].max():.3f}  prev_max_L0 {prev[0].max():.2f}  "
                  f"rep1 {first:.2f} rep2 {second:.2f}", flush=True)
            next_report += args.every
            if seen >= args.tokens:
                break
        tokens = random_crops(corpus.train, args.batch, model.config.n_ctx, rng)
        if args.repeat_fraction:
            repeat_spans(tokens, args.repeat_fraction, rng)
        if args.random_fraction:
            random_repeat_windows(tokens, args.random_fraction, rng)
        loss, _ = to_floats(*train_step(model, opt, tokens, learning_rate(step, args.lr, args.warmup),
                                        1.0, frozen))
        losses.append(loss)
        seen += tokens.size
        step += 1


if __name__ == "__main__":
    main()
