"""What a training step asks of a GPU, counted on the fake CuPy (tests/fake_cupy.py): host
syncs (each one stalls the host until the device has finished) and kernel launches (each
costs ~5 us of launch overhead, more than this small model's arithmetic), and that the fake
is strict enough to catch what CuPy would refuse. Also device="auto"'s fallback and the
causal-mask cache's key."""
import sys

import numpy as np
import pytest

from minitransformer import AdamW, Model, clip_grad_norm, learning_rate
from minitransformer.backend import device_of, resolve_device, to_floats
from minitransformer.ops.attention import causal_mask
from minitransformer.presets import preset
from minitransformer.train import train, train_step

import fake_cupy

# benchmarks/bench_engine.py's reference model (issue 15), and make train-2l's model
MODELS = {"reference": dict(n_layers=2, d_model=128, n_heads=4, d_head=32, n_ctx=256,
                            d_vocab=256, attn_only=True),
          "attn-only-2l": preset("attn-only-2l")[0]}
MAX_SYNCS, MAX_LAUNCHES = 2, 800


def counted_step(name, batch, grad_clip=1.0, steps=2, tokens_on_device=False):
    """The counts of one train_step (the training loop's), read back as the loop reads it,
    after `steps` steps of warm-up (the first allocates the optimizer's state)."""
    model = Model(MODELS[name], seed=0, device="gpu")
    optimizer = AdamW()
    frozen = () if model.config.pos_trainable else ("pos_embed.W_pos",)
    tokens = np.random.default_rng(0).integers(0, 256, (batch, model.config.n_ctx))
    if tokens_on_device:
        tokens = model.xp.asarray(tokens)

    def step(i):
        return to_floats(*train_step(model, optimizer, tokens, learning_rate(i, 1e-3, 10),
                                     grad_clip, frozen))
    for i in range(steps):
        step(i)
    with fake_cupy.counting() as counts:
        step(steps)
    return counts


@pytest.mark.parametrize("name", MODELS)
def test_a_training_step_fits_the_budget(fake_gpu, name):
    """Forward, backward, clip_grad_norm, AdamW and the read of loss and gradient norm: one
    host sync (budget 2) and under 800 kernel launches; the same at any batch size."""
    counts = counted_step(name, batch=4)
    report = f"{name}, one step at batch 4: " + counts.report()
    assert len(counts.syncs) <= MAX_SYNCS, report
    assert counts.n_launches <= MAX_LAUNCHES, report
    assert counts.uploads == 1, report                       # the batch of tokens
    assert len(counts.syncs) == 1 and "to_floats" in counts.syncs[0], report   # the one read
    print(report)
    assert counted_step(name, batch=2).n_launches == counts.n_launches, \
        "launches depend on the batch size: a loop over the batch on the GPU path?"


def test_tokens_already_on_the_device_cost_one_sync_more(fake_gpu):
    """Their range check (CuPy would wrap a bad id silently) reads their min and max back."""
    counts = counted_step("reference", batch=2, tokens_on_device=True)
    assert len(counts.syncs) == MAX_SYNCS and counts.uploads == 0, counts.report()
    assert "tokens" in counts.syncs[0] and "to_floats" in counts.syncs[1], counts.report()


def test_clipping_is_decided_on_the_device(fake_gpu):
    """Whether the gradients are clipped or not, the step is the same kernels, no sync."""
    clipped, unclipped = (counted_step("reference", 2, grad_clip) for grad_clip in (1e-3, 1e3))
    assert clipped.n_launches == unclipped.n_launches
    assert len(clipped.syncs) == len(unclipped.syncs) == 1


def test_clip_and_adamw_sync_nothing_and_adamw_allocates_nothing(fake_gpu):
    model = Model(dict(MODELS["reference"], n_ctx=16), seed=0, device="gpu")
    optimizer = AdamW(weight_decay=0.1)
    tokens = np.random.default_rng(0).integers(0, 256, (2, 16))
    for _ in range(2):
        grads = model.loss_and_grads(tokens, device_loss=True)[1]
        with fake_cupy.counting() as clip_counts:
            norm = clip_grad_norm(grads, 1.0)
        with fake_cupy.counting() as counts:
            optimizer.step(model.params, grads, 1e-3)
    assert clip_counts.syncs == [] and counts.syncs == [], clip_counts.report() + counts.report()
    assert counts.allocations == 0, counts.report()          # in place, into its own buffers
    matrices = sum(p.ndim >= 2 for p in model.params.values())
    assert counts.n_launches == 13 * len(grads) + matrices, counts.report()
    assert float(norm) > 0


def test_the_training_loop_reads_the_device_once_a_step(fake_gpu, tmp_path):
    """Every host sync of a training run is the step's one read of loss and gradient norm,
    a snapshot being saved, or the device's trial when the model is built."""
    model, settings = preset("tiny")
    with fake_cupy.counting() as counts:
        run = train(tmp_path / "run", model, dict(settings, total_tokens=5120, device="gpu"),
                    progress=False)
    steps = run.step
    reads = [s for s in counts.syncs if "to_floats" in s and "_train" in s]
    others = [s for s in counts.syncs if s not in reads]
    assert len(reads) == steps == 20, counts.report()
    assert all("save_state" in s or "_cupy" in s for s in others), "\n".join(others)


# ---- the fake is as strict as CuPy ----------------------------------------------------------

def test_the_fake_refuses_what_cupy_refuses(fake_gpu):
    cp = fake_gpu.cupy
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    assert type(a).__module__ == "cupy" and not isinstance(a, np.ndarray)
    for implicit in (lambda: np.asarray(a), lambda: a.__array__(),         # as CuPy refuses them
                     lambda: a + np.ones(3), lambda: np.ones(3) + a,
                     lambda: cp.stack([a, np.ones((2, 3))]), lambda: a.set(np.ones((2, 3), "f4")),
                     lambda: cp.add.at(cp.zeros(3, dtype=cp.int64), a[0].astype(cp.int64), 1),
                     # stricter than CuPy, which dispatches NumPy's functions to itself and
                     # uploads a host index or a host value assigned through an index array
                     lambda: np.exp(a), lambda: np.sum(a), lambda: np.concatenate([a, a]),
                     lambda: a[np.array([0, 1])], lambda: a[[0, 1]],
                     lambda: a.__setitem__(cp.asarray(np.array([0])), np.ones(3))):
        with pytest.raises(TypeError):
            implicit()
    for refused in (lambda: a.__setitem__(0, np.ones(3)), lambda: a.set(np.ones(3)),
                    lambda: cp.where(a > 1.0, a)):                          # CuPy's ValueErrors
        with pytest.raises(ValueError):
            refused()
    for absent in (lambda: cp.linalg, lambda: cp.add.reduceat, lambda: a.put, lambda: cp.fuse,
                   lambda: cp.random):       # CuPy has these; the fake leaves them out
        with pytest.raises(AttributeError):
            absent()


def test_the_fake_counts_syncs_launches_and_allocations(fake_gpu):
    cp = fake_gpu.cupy
    a = cp.asarray(np.arange(6.0, dtype=np.float32).reshape(2, 3))
    with fake_cupy.counting() as counts:
        total = (a * 2).sum()                      # 2 kernels, 2 allocations
        views = a.T, a[0], a[:, 1:], a.reshape(3, 2), cp.broadcast_to(a, (4, 2, 3))
        copied = a.T.reshape(-1)                   # a transposed reshape must copy: 1 kernel
        cp.empty((5,), dtype=cp.float32)           # an allocation, no kernel
        a += 1.0                                   # 1 kernel, in place
    assert counts.n_launches == 4 and counts.syncs == [] and counts.allocations == 4
    assert counts.allocated_bytes == 24 + 4 + 24 + 20
    assert all(type(v).__module__ == "cupy" for v in views) and copied.shape == (6,)
    with fake_cupy.counting() as counts:
        assert float(total) == 30.0 and int(a[0, 0]) == 1 and total.item() == 30.0
        if total > 0:                              # bool(): a sync too
            pass
        host = cp.asnumpy(a) + a.get()
        a[a > 2.0]                                 # the result's size must come back first
    assert len(counts.syncs) == 7 and isinstance(host, np.ndarray), counts.report()


# ---- device="auto" and the causal-mask cache ------------------------------------------------

def test_auto_falls_back_to_numpy_when_a_trial_operation_fails(fake_gpu, monkeypatch):
    assert resolve_device("gpu") is resolve_device("auto") is fake_gpu.cupy

    def broken(self, other):
        raise RuntimeError("CUBLAS_STATUS_NOT_INITIALIZED")
    monkeypatch.setattr(fake_cupy.ndarray, "__matmul__", broken)
    assert resolve_device("auto") is np
    with pytest.raises(ValueError, match=r"CuPy cannot run on the GPU \(RuntimeError: "
                                         r"CUBLAS_STATUS_NOT_INITIALIZED\)"):
        resolve_device("gpu")
    assert Model(dict(n_layers=1, d_model=8, n_heads=2, n_ctx=4), device="auto").xp is np


def test_auto_without_cupy_or_without_a_device_is_numpy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)           # `import cupy` fails
    assert resolve_device("auto") is np
    with pytest.raises(ValueError, match=r"'gpu' asked for, but CuPy is not installed"):
        resolve_device("gpu")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy.cupy)
    monkeypatch.setattr(fake_cupy.cuda.runtime, "getDeviceCount", lambda: 0)
    assert resolve_device("auto") is np
    with pytest.raises(ValueError, match="CuPy sees no CUDA device"):
        resolve_device("gpu")


def test_the_causal_mask_is_cached_per_device(fake_gpu):
    host = np.zeros((2, 3), dtype=np.float32)
    device = fake_gpu.cupy.zeros((2, 3), dtype=np.float32)
    assert device_of(host) == "cpu" and device_of(device) == "gpu:0"
    on_host, on_device = causal_mask(host, 3), causal_mask(device, 3)
    assert isinstance(on_host, np.ndarray) and type(on_device) is fake_cupy.ndarray
    assert causal_mask(device, 3) is on_device and causal_mask(host, 3) is on_host
    expected = np.triu(np.full((3, 3), -np.inf, dtype=np.float32), k=1)
    assert np.array_equal(fake_gpu.cupy.asnumpy(on_device), expected)
    assert np.array_equal(on_host, expected)
