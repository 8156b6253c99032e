"""Benchmark: full training steps (forward, backward, AdamW) of the reference model, our
engine beside PyTorch on the same device and thread count, reported as a ratio.

    python benchmarks/bench_engine.py [--device cpu|gpu] [--steps 10] [--json out.json]

Reference model: 2 layers, attention-only, d_model 128, 4 heads of 32, n_ctx 256,
batch 32, vocabulary 256, float32. Model FLOP utilisation (MFU) counts the matmul FLOPs of
a step (backward = 2x forward; the attention scores counted over the full T x T, as is
usual) against a matmul peak measured on the spot.
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))   # the code beside it
from minitransformer import AdamW, Model, ModelConfig  # noqa: E402
from minitransformer.backend import resolve_device, to_floats  # noqa: E402
from minitransformer.cpu import blas_kernels, cpu_count, keep_freed_memory  # noqa: E402
from minitransformer.train import train_step  # noqa: E402

REFERENCE = dict(n_layers=2, d_model=128, n_heads=4, d_head=32, n_ctx=256, d_vocab=256,
                 attn_only=True)
BATCH = 32


def step_flops(cfg, B):
    """Matmul FLOPs of one training step (2 per multiply-add; backward = 2x forward)."""
    T, D, H, E, V = cfg.n_ctx, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab
    per_layer = 2 * B * T * D * H * E * 4 + 2 * 2 * B * H * T * T * E
    if not cfg.attn_only:
        per_layer += 2 * 2 * B * T * D * cfg.d_mlp
    return 3 * (cfg.n_layers * per_layer + 2 * B * T * D * V)


def timed(step, n, sync=lambda: None):
    """Median seconds of n calls, after 2 warm-up calls."""
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(xp, sync, n=2048):
    """FLOP/s of a float32 n x n x n matmul, the best of 5: the machine's practical peak."""
    a = xp.asarray(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
    b = a.copy()
    return 2 * n ** 3 / min(timed(lambda: a @ b, 1, sync) for _ in range(5))


def engine_step_time(device, steps, threads=1):
    """The trainer's own step (minitransformer.train.train_step: loss and gradients, global
    norm clipping, AdamW). threads=1: one call, BLAS on every core; 0: the batch split
    across every core, one BLAS thread each (the trainer's default)."""
    xp = resolve_device(device)
    model = Model(REFERENCE, seed=0, device=device)
    opt = AdamW()
    tokens = xp.asarray(np.random.default_rng(0).integers(0, 256, (BATCH, REFERENCE["n_ctx"])))
    sync = (lambda: xp.cuda.Device().synchronize()) if xp is not np else (lambda: None)

    def step():
        to_floats(*train_step(model, opt, tokens, 1e-3, 1.0, threads=threads))  # as train reads it
    return timed(step, steps, sync), xp, sync


def torch_step_time(device, steps, threads, fused_attention):
    import torch
    from torch_reference import torch_loss
    torch.set_num_threads(threads)
    dev = "cuda" if device == "gpu" else "cpu"
    cfg = ModelConfig(**REFERENCE)
    params = {k: torch.tensor(v, device=dev, requires_grad=True)
              for k, v in Model(cfg, seed=0).params.items()}
    # its fastest eager optimizer: the fused AdamW kernel (CPU and CUDA since PyTorch 2.4)
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0,
                            fused=True)
    tokens = torch.tensor(np.random.default_rng(0).integers(0, 256, (BATCH, cfg.n_ctx)), device=dev)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def step():   # the same step as ours: loss, backward, global-norm clipping, AdamW
        opt.zero_grad(set_to_none=True)
        loss = torch_loss(cfg, params, tokens, fused_attention)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        loss.item()
    return timed(step, steps, sync), torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per engine (median)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    keep_freed_memory()   # as make train-2l runs (minitransformer.cpu)
    threads = int(os.environ.get("OMP_NUM_THREADS", cpu_count()))
    cfg = ModelConfig(**REFERENCE)
    tokens_per_step = BATCH * cfg.n_ctx
    flops = step_flops(cfg, BATCH)
    # the engine two ways on a CPU: one call with BLAS threads, and the batch split across
    # the threads (what training does by default); a GPU never splits the batch
    variants = [("engine", 1)] + ([("engine_split", 0)] if args.device == "cpu" else [])
    seconds = {}
    for label, split in variants:
        seconds[label], xp, sync = engine_step_time(args.device, args.steps, split)
    peak = matmul_peak(xp, sync)
    best = min(seconds.values())
    result = {"device": args.device, "threads": threads, "tokens_per_step": tokens_per_step,
              "engine_tokens_per_s": tokens_per_step / best, "engine_mfu": flops / best / peak,
              "matmul_peak_gflops": peak / 1e9, "step_gflop": flops / 1e9}
    print(f"reference model: 2L attn-only d_model 128, 4x32 heads, n_ctx 256, batch {BATCH}, "
          f"float32, {args.device}, {threads} threads; one training step (train_step)")
    print(f"matmul peak (float32 2048^3, measured now): {peak / 1e9:.1f} GFLOP/s; "
          f"one step = {result['step_gflop']:.2f} GFLOP")
    if args.device == "cpu":   # the kernels set the peak: OPENBLAS_CORETYPE can pin older ones
        result["blas"] = blas_kernels()
        print(f"NumPy's BLAS: {result['blas']} (OPENBLAS_CORETYPE="
              f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')})")
    names = {"engine": f"engine ({xp.__name__}), one call",
             "engine_split": f"engine, batch on {threads} threads"}
    for label, _ in variants:
        result[label + "_tokens_per_s"] = tokens_per_step / seconds[label]
        print(f"{names[label]:<36} {tokens_per_step / seconds[label]:>9,.0f} tokens/s  "
              f"MFU {100 * flops / seconds[label] / peak:.1f}%")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch peer: not installed (pip install -e .[torch]); no ratio")
    else:
        # two peers: the same math written out (pattern materialised, as ours), and torch's
        # fused causal scaled_dot_product_attention kernel; the ratio is the engine's best
        for label, fused in (("torch", False), ("torch_sdpa", True)):
            t_seconds, version = torch_step_time(args.device, args.steps, threads, fused)
            result[label + "_tokens_per_s"] = tokens_per_step / t_seconds
            result["ratio_engine_over_" + label] = t_seconds / best
            name = f"PyTorch {version}" + (" + fused SDPA" if fused else " (same math)")
            print(f"{name:<36} {tokens_per_step / t_seconds:>9,.0f} tokens/s  MFU "
                  f"{100 * flops / t_seconds / peak:.1f}%  ratio engine (best) / peer "
                  f"{t_seconds / best:.2f}")
    if args.json:
        from minitransformer.io import atomic_write_text
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
