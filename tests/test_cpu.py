"""minitransformer.cpu: the batch split across threads gives the one-call loss and gradients
(float64, to rounding), the same numbers however the threads finish, and training with it
resumes bit for bit; BLAS threads are limited and restored; the allocator is tuned once."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from threadpoolctl import threadpool_info

from minitransformer import Model
from minitransformer.cpu import blas_threads, resolve_threads, shard_slices
from minitransformer.presets import TrainConfig
from minitransformer.interventions import ablate_heads

CONFIG = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, n_ctx=12, d_vocab=29,
              positional_embedding_type="shortformer", attn_only=False, d_mlp=32)


@given(B=st.integers(1, 40), shards=st.integers(1, 45))
def test_shards_are_contiguous_near_equal_and_cover_the_batch(B, shards):
    slices = shard_slices(B, shards)
    assert slices[0].start == 0 and slices[-1].stop == B
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    sizes = [s.stop - s.start for s in slices]
    assert len(slices) == min(B, shards) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), B=st.integers(1, 7), threads=st.integers(0, 8),
       normalization=st.sampled_from([None, "LN"]))
def test_split_batch_gives_the_one_call_loss_and_gradients(seed, B, threads, normalization):
    model = Model(dict(CONFIG, normalization_type=normalization), seed=seed % 1000,
                  dtype=np.float64)
    tokens = np.random.default_rng(seed).integers(0, 29, (B, 12))
    loss, grads = model.loss_and_grads(tokens)
    split_loss, split_grads = model.loss_and_grads(tokens, threads=threads)
    assert split_loss == pytest.approx(loss, rel=1e-13, abs=1e-14)
    assert list(split_grads) == list(grads)
    for name in grads:
        np.testing.assert_allclose(split_grads[name], grads[name], rtol=1e-11, atol=1e-13,
                                   err_msg=name)


def test_split_batch_is_the_same_to_the_bit_every_time_and_not_the_one_call_in_float32():
    model = Model(CONFIG, seed=0)
    tokens = np.random.default_rng(0).integers(0, 29, (9, 12))
    runs = [model.loss_and_grads(tokens, threads=3) for _ in range(5)]
    for loss, grads in runs[1:]:
        assert loss == runs[0][0]
        for name in grads:
            np.testing.assert_array_equal(grads[name], runs[0][1][name], err_msg=name)
    one_call = model.loss_and_grads(tokens)[1]
    # it is a different order of the batch's sums: equal to float32 rounding, not to the bit
    # (else the split would be a no-op this test could not tell from a split)
    assert any(not np.array_equal(one_call[k], runs[0][1][k]) for k in one_call)
    for name in one_call:
        np.testing.assert_allclose(runs[0][1][name], one_call[name], rtol=2e-4, atol=1e-6)


def test_split_batch_refuses_interventions_and_negative_counts():
    model = Model(CONFIG, seed=0)
    tokens = np.zeros((4, 12), dtype=np.int64)
    with pytest.raises(ValueError, match="threads=2: splits the plain loss only; with hooks"):
        model.loss_and_grads(tokens, ablate_heads([(0, 1)]), threads=2)
    with pytest.raises(ValueError, match="threads: expected 0"):
        model.loss_and_grads(tokens, threads=-1)
    with pytest.raises(ValueError, match="threads: invalid value -2"):
        TrainConfig(threads=-2)


def test_threads_resolve_to_the_cores_and_at_most_the_batch():
    assert resolve_threads(3, 8) == 3
    assert resolve_threads(5, 2) == 2
    assert 1 <= resolve_threads(0, 64) == min(64, len(os.sched_getaffinity(0)))


def _blas_threads_now():
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_threads_limits_and_restores():
    before = _blas_threads_now()
    assert before, "no BLAS library found by threadpoolctl: NumPy's OpenBLAS should be"
    with blas_threads(1):
        assert _blas_threads_now() == {1}
    assert _blas_threads_now() == before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("setting, expected", [("", "True"), ("system", "False")])
def test_the_allocator_is_tuned_by_commands_not_by_building_a_model(setting, expected):
    code = ("import numpy as np; from minitransformer import Model; "
            "from minitransformer.cpu import command_settings, keep_freed_memory as k\n"
            "Model(dict(n_layers=1, d_model=8, n_heads=1, d_head=8, n_ctx=4, d_vocab=5))\n"
            "print(k.cache_info().misses)\n"
            "with command_settings(blas=None): pass\n"
            "print(k(), k.cache_info().hits)")
    env = dict(os.environ, MINITRANSFORMER_MALLOC=setting)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split()
    assert out == ["0", expected, "1"]   # not by Model; by the command; then the cached answer


def test_command_settings_limit_blas_threads_for_the_block_only():
    from minitransformer.cpu import command_settings
    before = _blas_threads_now()
    with command_settings():
        assert _blas_threads_now() == {1}
    with command_settings(blas=None):
        assert _blas_threads_now() == before
    assert _blas_threads_now() == before


def test_a_run_stores_the_threads_it_used_and_other_threads_may_resume_it(tmp_path):
    from minitransformer.presets import preset
    from minitransformer.runs import Run
    from minitransformer.train import train
    model, settings_ = preset("tiny")
    settings_.update(total_tokens=4000, snapshots=2)
    run = train(tmp_path / "auto", model, dict(settings_, threads=0), progress=False)
    assert run.train_config["threads"] == resolve_threads(0, settings_["batch_size"])
    run = train(tmp_path / "two", model, dict(settings_, threads=2), progress=False)
    assert Run(run.dir).train_config["threads"] == 2
    assert run.differing_settings(model, dict(settings_, threads=1)) == []   # how, not what


def test_a_run_written_before_threads_existed_loads_as_one_thread(tmp_path):
    import json
    from minitransformer.npz import save_npz
    from minitransformer.presets import preset
    from minitransformer.runs import Run, read_npz, run_file
    from minitransformer.train import train
    model, settings_ = preset("tiny")
    run = train(tmp_path / "old", model, dict(settings_, total_tokens=4000, snapshots=2,
                                               threads=2), progress=False)
    arrays = read_npz(run_file(run.dir))
    old = json.loads(str(arrays["train_config"]))
    del old["threads"]
    save_npz(run_file(run.dir), dict(arrays, train_config=np.array(json.dumps(old))))
    assert Run(run.dir).train_config["threads"] == 1
    # and an unknown field is still refused by name
    save_npz(run_file(run.dir), dict(arrays, train_config=np.array(json.dumps(dict(old, x=1)))))
    with pytest.raises(ValueError, match="has unknown field 'x'"):
        Run(run.dir)


def test_blas_kernels_names_each_blas_library_and_its_kernels():
    from minitransformer.cpu import blas_kernels
    blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
    text = blas_kernels()
    assert len(text.split(", ")) == len(blas)
    for info in blas:
        assert info["internal_api"] in text
        if info.get("architecture"):
            assert info["architecture"] in text
