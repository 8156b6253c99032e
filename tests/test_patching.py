"""Activation patching (circuits.patching) on the hand-built induction circuit, whose answer
is known: patching the induction head's output from the intact repeat restores the copy,
heads nothing reads change nothing, and the residual stream before layer 1 carries the
answer at the position after the earlier occurrence. Against the ablations: patching a
head's z from a run in which it is zeroed is the full ablation, and with the patterns
replayed the pattern-preserving one, to the bit. Then the CLI on a hand-built run."""
import json

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from circuits.ablation import ablation_logits
from circuits.handmade import induction_model
from circuits.patching import (induction_pairs, logit_diff_metric, loss_metric, main, normalise,
                               patch_head_out, patch_hook, patch_resid)
from minitransformer import Model
from minitransformer.interventions import ablate_heads, combine, replay

from handmade_run import write_handmade_run  # noqa: E402

V, LENGTH = 32, 20                    # BOS + 20 tokens + the same 20: T = 41, query 39


def with_bystanders(model, seed=0):
    """The hand-built circuit with a second head in each layer: random QK and OV, writing
    into the positional subspace, which nothing reads (positions reach only queries and
    keys, and no head's W_Q or W_K reads it from the residual stream)."""
    cfg, p = model.config.to_dict(), model.params
    rng = np.random.default_rng(seed)
    D, E = cfg["d_model"], cfg["d_head"]
    params = dict(p)
    for l in range(cfg["n_layers"]):
        a = f"blocks.{l}.attn."
        for name in ("W_Q", "W_K", "W_V"):
            params[a + name] = np.concatenate([p[a + name], rng.normal(size=(1, D, E))])
        W_O = np.zeros((1, E, D))
        W_O[0, :, V:V + cfg["n_ctx"]] = rng.normal(size=(E, cfg["n_ctx"]))
        params[a + "W_O"] = np.concatenate([p[a + "W_O"], W_O])
        for name in ("b_Q", "b_K", "b_V"):
            params[a + name] = np.zeros((2, E))
    return Model(dict(cfg, n_heads=2), params=params, dtype=np.float64)


@pytest.fixture(scope="module")
def circuit():
    """(model, clean BOS + A + A, corrupted BOS + R + A with R's tokens not in A, query)."""
    rng = np.random.default_rng(0)
    clean, corrupted = [], []
    for _ in range(4):
        tokens = rng.permutation(np.arange(1, V))
        a, r = tokens[:LENGTH], tokens[LENGTH:][rng.integers(0, V - 1 - LENGTH, LENGTH)]
        clean.append(np.concatenate([[0], a, a]))
        corrupted.append(np.concatenate([[0], r, a]))
    clean, corrupted = np.array(clean), np.array(corrupted)
    return with_bystanders(induction_model(d_vocab=V, n_ctx=64)), clean, corrupted, 2 * LENGTH - 1


def induction_metric(clean, corrupted, query):
    """Logit difference at `query` of the clean next token over the corrupted first copy's
    token where the clean one sits (what an induction head matching there copies)."""
    return logit_diff_metric(query, clean[:, query + 1], corrupted[:, query + 1 - LENGTH])


def test_patching_the_induction_heads_output_restores_the_copy(circuit):
    model, clean, corrupted, q = circuit
    metric = induction_metric(clean, corrupted, q)
    logits, cache = model.run_with_cache(clean)
    at_clean, at_corrupted = metric(logits), metric(model.forward(corrupted))
    assert at_clean > 9 and abs(at_corrupted) < 1          # the copy, and no copy
    heads = normalise(patch_head_out(model, corrupted, cache, metric), at_clean, at_corrupted)
    assert heads[1, 0] == pytest.approx(1, abs=1e-6)        # the induction head: restored
    # the previous-token head's clean output makes the induction head look at the right
    # place, where the corrupted run holds the distractor: it copies that instead
    assert heads[0, 0] < -0.9
    assert_allclose(heads[:, 1], 0, atol=1e-9)              # the bystanders: no effect
    only_query = patch_head_out(model, corrupted, cache, metric, positions=[q])
    elsewhere = patch_head_out(model, corrupted, cache, metric,
                               positions=[t for t in range(clean.shape[1]) if t != q])
    assert normalise(only_query, at_clean, at_corrupted)[1, 0] == pytest.approx(1, abs=1e-6)
    assert normalise(elsewhere, at_clean, at_corrupted)[1, 0] == pytest.approx(0, abs=1e-9)


def test_hook_result_patches_the_same_head_output(circuit):
    model, clean, corrupted, q = circuit
    metric = induction_metric(clean, corrupted, q)
    _, cache = model.run_with_cache(clean)
    assert_allclose(patch_head_out(model, corrupted, cache, metric, hook="hook_result"),
                    patch_head_out(model, corrupted, cache, metric), atol=1e-9)


def test_the_residual_stream_carries_the_answer_after_the_earlier_occurrence(circuit):
    model, clean, corrupted, q = circuit
    metric = induction_metric(clean, corrupted, q)
    logits, cache = model.run_with_cache(clean)
    at_clean, at_corrupted = metric(logits), metric(model.forward(corrupted))
    pre = normalise(patch_resid(model, corrupted, cache, metric), at_clean, at_corrupted)
    assert pre.shape == (2, clean.shape[1])
    earlier = q + 1 - LENGTH      # where the answer sits in the first copy, after the query's token
    assert pre[1, earlier] == pytest.approx(1, abs=1e-6)    # token and previous token, moved by 0.0
    assert np.abs(np.delete(pre[1], earlier)).max() < 0.05
    # before layer 0 no single position restores it: the answer's token alone has the wrong
    # previous token, and the previous token alone sends the match to the distractor
    assert pre[0].max() < 0.1 and pre[0, earlier - 1] < -0.9
    assert_array_equal(pre[:, q + 1:], 0)                   # causal: later positions cannot matter
    post = normalise(patch_resid(model, corrupted, cache, metric, hook="hook_resid_post",
                                 positions=[q]), at_clean, at_corrupted)
    assert post[1, 0] == pytest.approx(1, abs=1e-12)        # the last residual at the query is the answer


@pytest.fixture(scope="module")
def random_model():
    return Model(dict(n_layers=2, d_model=16, n_heads=2, d_head=4, n_ctx=12, d_vocab=20,
                      attn_only=True), seed=1, dtype=np.float64)


@pytest.mark.parametrize("method", ["pattern-preserving", "full"])
def test_patching_a_zeroed_heads_output_is_the_ablation(random_model, method):
    """The 'clean' source is the run in which head (l,h) is zeroed (with every pattern
    replayed, for the pattern-preserving kind); patching that head's z from it into the
    plain run, with the same patterns, is circuits.ablation's ablation, bit for bit."""
    model = random_model
    tokens = np.random.default_rng(0).integers(0, 20, (3, 12))
    _, own = model.run_with_cache(tokens)
    patterns = (replay(own, [k for k in own if k.endswith("hook_pattern")])
                if method == "pattern-preserving" else {})
    for layer, head in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        _, zeroed = model.run_with_cache(tokens, combine(patterns, ablate_heads([(layer, head)])))
        hooks = patch_hook(zeroed, f"blocks.{layer}.attn.hook_z", (slice(None), slice(None), head))
        _, ablated = ablation_logits(model, tokens, [(layer, head)], method=method)
        assert_array_equal(model.forward(tokens, hooks=combine(patterns, hooks)), ablated[0])
        metric = logit_diff_metric(-1, tokens[:, 0], tokens[:, 1])
        table = patch_head_out(model, tokens, zeroed, metric, hooks=patterns)
        assert table[layer, head] == metric(ablated[0])
    # and the two kinds differ where a later layer's pattern reads the ablated head
    full = ablation_logits(model, tokens, [(0, 0)], method="full")[1][0]
    kept = ablation_logits(model, tokens, [(0, 0)], method="pattern-preserving")[1][0]
    assert np.abs(full - kept).max() > 1e-3


def test_metrics():
    logits = np.random.default_rng(0).normal(size=(3, 5, 7))
    target, distractor = np.array([1, 2, 3]), np.array([4, 5, 6])
    assert logit_diff_metric(2, target, distractor)(logits) == pytest.approx(
        np.mean([logits[b, 2, target[b]] - logits[b, 2, distractor[b]] for b in range(3)]))
    log_softmax = logits[:, 2] - np.log(np.exp(logits[:, 2]).sum(-1, keepdims=True))
    assert loss_metric(2, target)(logits) == pytest.approx(
        -np.mean([log_softmax[b, target[b]] for b in range(3)]))
    assert_allclose(normalise([1.0, 3.0, 2.0], clean=3.0, corrupted=1.0), [0, 1, 0.5])
    with pytest.raises(ValueError, match="same metric"):
        normalise([1.0], clean=2.0, corrupted=2.0)


def test_bad_arguments_are_one_line_errors(random_model):
    tokens = np.zeros((2, 12), dtype=int)
    _, cache = random_model.run_with_cache(tokens)
    metric = loss_metric(0, tokens[:, 1])
    for call, message in [
            (lambda: patch_head_out(random_model, tokens, cache, metric, hook="hook_v"), "hook_v"),
            (lambda: patch_resid(random_model, tokens, cache, metric, hook="hook_mlp_out"),
             "hook_mlp_out"),
            (lambda: patch_resid(random_model, tokens, cache, metric, hook="hook_resid_mid"),
             "not a hook point"),        # attention-only: no resid_mid
            (lambda: patch_head_out(random_model, tokens[:1], cache, metric), r"\(2, 12\)")]:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_induction_pairs():
    eval_tokens = np.arange(3 * 9).reshape(3, 9)
    clean, corrupted = induction_pairs(eval_tokens, 3)
    assert clean.shape == corrupted.shape == (3, 8)
    assert_array_equal(clean[:, :4], eval_tokens[:, :4])
    assert_array_equal(clean[:, 4:], eval_tokens[:, :4])          # the second half repeats
    assert_array_equal(corrupted[:, 4:], clean[:, 4:])            # the same copy...
    assert_array_equal(corrupted[:, :4], eval_tokens[[1, 2, 0], :4])   # ...after other text
    with pytest.raises(ValueError, match="--pairs 4"):
        induction_pairs(eval_tokens, 4)


# ---- the CLI --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The hand-built run with d_vocab 64: each eval sequence's first half is 32 distinct
    tokens, from 0-31 and 32-63 in turn, so a corrupted first half never holds the copy's tokens."""
    rng = np.random.default_rng(0)
    halves = [rng.permutation(32) + 32 * (i % 2) for i in range(6)]
    eval_tokens = np.array([np.concatenate([half, rng.integers(0, 64, 32)]) for half in halves])
    return write_handmade_run(tmp_path_factory.mktemp("runs") / "handmade", eval_tokens,
                              d_vocab=64)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_and_figure(run_dir, tmp_path, capsys):
    plot = tmp_path / "patching.png"
    code, out, err = run_cli(capsys, run_dir, "--pairs", 5, "--plot", plot)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "5 pairs" in lines[0] and "position 62" in lines[1] and "clean 10.0000" in lines[1]
    assert lines[3].split() == ["layer", "head", "0"]
    assert float(lines[4].split()[1]) < -0.9 and lines[5].split() == ["1", "+1.000"]
    assert lines[6].startswith("# hook_resid_pre") and lines[8].startswith("layer 1: pos 31 +1.000")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and lines[-1] == f"plot: {plot}"


def test_cli_json(run_dir, capsys):
    code, out, _ = run_cli(capsys, run_dir / "run.npz", "--step", 10, "--json", "--metric", "loss",
                           "--query", -10, "--resid-hook", "hook_resid_post")
    result = json.loads(out)
    assert code == 0 and result["step"] == 10 and result["metric"] == "loss"
    assert result["query"] == 54 and result["resid_hook"] == "hook_resid_post"
    assert result["heads"][1][0] == pytest.approx(1, abs=1e-4)
    assert result["resid"][1][54] == pytest.approx(1, abs=1e-4)   # the last residual at the query
    assert len(result["resid"][0]) == 64 and (run_dir / "patching.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--pairs", 0], "--pairs 0"),
    (["--pairs", 7], "has 6 sequences"),
    (["--query", 10], "--query 10"),
    (["--all-steps"], "--all-steps"),
    (["--step", 5], "no snapshot at step 5"),
    (["--plot", "out.txt"], "--plot out.txt"),
])
def test_cli_errors(run_dir, capsys, argv, message):
    code, out, err = run_cli(capsys, run_dir, *argv)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


def test_cli_missing_run(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nothing")
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
