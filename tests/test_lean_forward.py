"""The forwards no backward follows (Model.forward, Model.per_token_loss) take cache-less
paths: the blocked attention core without the (B,H,T,T) pattern, the MLP one sequence at a
time, the loss without its probabilities, optionally only the layers from start_at_layer on
and with a layer's head outputs replayed (interventions.replay of hook_z). Each is tested here to give the numbers of
the readable path (forward_train and the training loss's log-softmax) to the bit, in float32
as the measurements run and in float64, so cached measurements stay valid."""
import numpy as np
import pytest
from hypothesis import given, strategies as st
from numpy.testing import assert_array_equal

from minitransformer import Model, ops
from minitransformer.interventions import HeadScale, Replay, ablate_heads, combine, replay, scale_heads
from minitransformer.ops.attention import attend_forward, attend_forward_blocked
from minitransformer.ops.loss import _log_softmax_at_targets

BASE = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, n_ctx=40, d_vocab=50, d_mlp=48)
CONFIGS = {"attn-only, shortformer, no LayerNorm": dict(attn_only=True, normalization_type=None),
           "mlp, LayerNorm, gelu": dict(attn_only=False),
           "mlp, relu, standard positions, smeared": dict(attn_only=False, act_fn="relu",
                                                          positional_embedding_type="standard",
                                                          smeared_key=True),
           "mlp, no positions, no LayerNorm": dict(attn_only=False, normalization_type=None,
                                                  positional_embedding_type="none")}
DTYPES = {"float32": np.float32, "float64": np.float64}


@pytest.fixture(params=[(c, d) for c in CONFIGS for d in DTYPES], ids=lambda p: f"{p[0]}, {p[1]}")
def model(request):
    config, dtype = request.param
    return Model(dict(BASE, **CONFIGS[config]), seed=1, dtype=DTYPES[dtype])


def tokens(seed=0, B=5, T=40):
    return np.random.default_rng(seed).integers(0, 50, (B, T))


def readable_losses(model, x, hooks=None):
    """The training loss's per-token losses of forward_train's logits: the readable path."""
    logits, cache = model.forward_train(x, hooks)
    return _log_softmax_at_targets(logits, cache.tokens)[0]


def interventions_of(model, x):
    _, cache = model.run_with_cache(tokens(seed=9))
    patterns = replay(cache, [k for k in cache if k.endswith("hook_pattern")])
    return {"none": {}, "ablate_heads": ablate_heads([(0, 1), (2, 3)]),
            "scale_heads (B,H)": scale_heads({1: np.random.default_rng(0).random((len(x), 4))}),
            "pattern-preserving": combine(patterns, ablate_heads([(1, 2)]))}


def test_forward_and_per_token_loss_are_the_readable_numbers_to_the_bit(model):
    x = tokens()
    for name, hooks in interventions_of(model, x).items():
        assert_array_equal(model.per_token_loss(x, hooks), readable_losses(model, x, hooks),
                           err_msg=name)
        assert_array_equal(model.forward(x, hooks), model.forward_train(x, hooks)[0],
                           err_msg=name)


def test_starting_at_a_layer_from_its_residual_stream_is_the_whole_forward(model):
    x = tokens()
    for name, hooks in interventions_of(model, x).items():   # the residual stream of the
        _, cache = model.run_with_cache(x, hooks)
        whole = model.per_token_loss(x, hooks)                 # same interventions
        for layer in range(model.config.n_layers + 1):
            resid = cache[f"blocks.{layer}.hook_resid_pre"] if layer < model.config.n_layers else \
                cache[f"blocks.{layer - 1}.hook_resid_post"]
            assert_array_equal(model.per_token_loss(x, hooks, start_at_layer=layer, resid_pre=resid),
                               whole, err_msg=f"{name}, {layer}")
        assert_array_equal(model.forward(x, hooks, start_at_layer=2,
                                         resid_pre=cache["blocks.2.hook_resid_pre"]),
                           model.forward(x, hooks), err_msg=name)


def test_replaying_a_layers_head_outputs_is_recomputing_them(model):
    """A replayed hook_z in the layer of a pattern-preserving ablation, from a forward with
    the patterns replayed and no ablation: what circuits.ablation's reuse does."""
    x = tokens()
    _, cache = model.run_with_cache(tokens(seed=9))
    names = [k for k in cache if k.endswith("hook_pattern")]
    _, replayed = model.run_with_cache(x, replay(cache, names))
    for layer in range(model.config.n_layers):
        ablate = combine(replay(cache, names), ablate_heads([(layer, 1)]))
        others = [n for n in names if n != f"blocks.{layer}.attn.hook_pattern"]   # z replaces it
        z = combine(replay(cache, others), replay(replayed, [f"blocks.{layer}.attn.hook_z"]),
                    ablate_heads([(layer, 1)]))
        assert_array_equal(model.per_token_loss(x, z), model.per_token_loss(x, ablate))
        assert_array_equal(model.per_token_loss(x, z, start_at_layer=layer,
                                                resid_pre=replayed[f"blocks.{layer}.hook_resid_pre"]),
                           model.per_token_loss(x, ablate))


def test_a_replayed_layer_passes_no_gradient_to_its_inputs():
    model = Model(dict(BASE, **CONFIGS["mlp, LayerNorm, gelu"]), seed=1, dtype=np.float64)
    x = tokens()
    _, cache = model.run_with_cache(x)
    loss, grads = model.loss_and_grads(x, replay(cache, ["blocks.1.attn.hook_z"]))
    assert loss == pytest.approx(model.loss_and_grads(x)[0], rel=1e-12)
    for name in ("W_Q", "b_Q", "W_K", "b_K", "W_V", "b_V"):
        assert not grads[f"blocks.1.attn.{name}"].any(), name
        assert grads[f"blocks.0.attn.{name}"].any() or name == "b_K", name
    assert grads["blocks.1.attn.W_O"].any() and not grads["blocks.1.ln1.w"].any()


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_the_loss_without_probabilities_is_the_training_losss(dtype):
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((3, 17, 50)) * 4).astype(dtype)
    x = rng.integers(0, 50, (3, 17))
    assert_array_equal(ops.per_token_cross_entropy(logits, x), _log_softmax_at_targets(logits, x)[0])


@pytest.mark.parametrize("act_fn", ["gelu_new", "relu"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_the_mlp_one_sequence_at_a_time_is_the_mlp(act_fn, dtype):
    rng = np.random.default_rng(1)
    x, W_in, b_in, W_out, b_out = (rng.standard_normal(s).astype(dtype) for s in
                                   ((6, 33, 32), (32, 48), (48,), (48, 32), (32,)))
    assert_array_equal(ops.mlp_forward_by_sequence(x, W_in, b_in, W_out, b_out, act_fn),
                       ops.mlp_forward(x, W_in, b_in, W_out, b_out, act_fn)[0])


@given(seed=st.integers(0, 2**31), B=st.integers(1, 6), T=st.integers(1, 70))
def test_the_blocked_core_without_its_pattern_makes_the_same_z(seed, B, T):
    q, k, v = (np.random.default_rng(seed + i).uniform(-3, 3, (B, 2, T, 8)).astype(np.float32)
               for i in range(3))
    pattern, z = attend_forward_blocked(q, k, v, keep_pattern=False)
    assert pattern is None
    assert_array_equal(z, attend_forward_blocked(q, k, v)[1])
    readable = attend_forward(q, k, v, keep_pattern=False)
    assert readable[0] is None and np.array_equal(readable[1], attend_forward(q, k, v)[1])


@pytest.mark.parametrize("kwargs, message", [
    (dict(start_at_layer=4, resid_pre=np.zeros((5, 40, 32))), r"start_at_layer: 4 is not a layer 0\.\.3"),
    (dict(start_at_layer=1), r"resid_pre: start_at_layer=1 needs .* shape \(5, 40, 32\) .*; got none"),
    (dict(start_at_layer=1, resid_pre=np.zeros((5, 39, 32))), r"got shape \(5, 39, 32\)"),
    (dict(resid_pre=np.zeros((5, 40, 32))), r"resid_pre: given without start_at_layer"),
    (dict(hooks={"blocks.3.attn.hook_z": Replay(np.zeros((5, 40, 4, 8)))}),
     r"hooks: 'blocks\.3\.attn\.hook_z' is not a hook point"),
    (dict(hooks={"blocks.0.attn.hook_pattern": Replay(np.zeros((5, 4, 40, 39)))}),
     r"blocks\.0\.attn\.hook_pattern: the replayed activation has shape \(5, 4, 40, 39\), expected \(5, 4, 40, 40\)"),
    (dict(hooks={"blocks.0.attn.hook_z": Replay(np.zeros((5, 4, 40, 8)))}), r"expected \(5, 40, 4, 8\) for these tokens"),
    (dict(hooks={"blocks.1.attn.hook_z": Replay(np.zeros((5, 40, 4, 8))),
                 "blocks.1.attn.hook_v": lambda a, name: None}), r"blocks\.1\.attn\.hook_v is never reached"),
    (dict(hooks={"blocks.1.attn.hook_z": [HeadScale(zero=[1]), Replay(np.zeros((5, 40, 4, 8)))]}),
     r"Replay\(shape \(5, 40, 4, 8\)\) must come first"),
    (dict(hooks={"blocks.1.hook_resid_pre": HeadScale(zero=[1])}), r"a head scale acts on a layer's hook_z"),
    (dict(hooks=scale_heads({0: np.ones(3)})), r"head scale of shape \(3,\), expected \(4,\) or \(5, 4\)"),
    (dict(hooks=ablate_heads([(1, 4)])), r"hooks: blocks\.1\.attn\.hook_z: head 4 does not exist in a layer of 4 heads"),
])
def test_bad_starts_and_replays_are_one_line_errors(kwargs, message):
    model = Model(dict(BASE, **CONFIGS["mlp, LayerNorm, gelu"]), seed=1)
    with pytest.raises(ValueError, match=message) as error:
        model.per_token_loss(tokens(), **kwargs)
    assert "\n" not in str(error.value)


def test_the_measurement_benchmark_compares_paths_with_the_same_bits(tmp_path, capsys):
    """benchmarks/bench_measure.py runs (no timing is asserted) and says the bits agree."""
    import importlib.util
    import json
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "benchmarks" / "bench_measure.py"
    spec = importlib.util.spec_from_file_location("bench_measure", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--preset", "tiny", "--n-eval", "6", "--n-ablate", "3", "--repeats", "1",
                       "--json", str(out)]) == 0
    assert capsys.readouterr().out.count("same bits") == 2
    assert {stage: r["identical"] for stage, r in json.loads(out.read_text())["stages"].items()} == \
        {"losses": True, "ablations": True}
