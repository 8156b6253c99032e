"""minitransformer.export: a run's weights as a TransformerLens 3.x safetensors file and back.
The round trips, the metadata and the one-line errors need no TransformerLens; the comparisons
with HookedTransformer itself skip where transformer_lens is absent (pip install -e .[tl])."""
import json
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from circuits.evaluators import prefix_matching_score
from circuits.handmade import induction_model
from circuits.weights import ov_copying_score
from minitransformer import Model
from minitransformer.export import (export_run, from_transformer_lens_config,
                                    load_transformer_lens, main, save_transformer_lens,
                                    to_transformer_lens, transformer_lens_config)
from minitransformer.runs import Run

from handmade_run import write_run  # noqa: E402

TINY = dict(n_layers=2, d_model=32, n_heads=4, n_ctx=16, d_vocab=64)
CONFIGS = {   # the attn-only-2l preset's kind, and an LN + MLP model with positions in the stream
    "attn-only-shortformer": dict(TINY, attn_only=True, normalization_type=None,
                                  positional_embedding_type="shortformer"),
    "ln-mlp-standard": dict(TINY, attn_only=False, d_mlp=64, normalization_type="LN",
                            positional_embedding_type="standard", act_fn="gelu_new"),
}


def trained_like(config, seed):
    """A model whose every parameter is non-trivial (biases and LayerNorm gains too)."""
    model = Model(config, seed=seed)
    rng = np.random.default_rng(seed)
    return Model(config, params={k: v + rng.normal(0, 0.1, v.shape).astype(np.float32)
                                 for k, v in model.params.items()})


@pytest.fixture(scope="module", params=list(CONFIGS))
def run(request, tmp_path_factory):
    config = CONFIGS[request.param]
    tokens = np.random.default_rng(0).integers(0, 64, (4, 16))
    out = tmp_path_factory.mktemp("runs") / request.param
    return Run(write_run(out, {0: trained_like(config, 0), 10: trained_like(config, 1)}, tokens))


def metadata(path):
    with safe_open(path, framework="np") as f:
        return f.metadata()


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---- round trips --------------------------------------------------------------------------

def test_round_trip_gives_identical_params_and_logits(run, tmp_path):
    path = export_run(run, tmp_path / "model.safetensors")
    back, original = load_transformer_lens(path), run.model()
    assert back.config == original.config
    assert list(back.params) == list(original.params)
    assert all(np.array_equal(back.params[k], original.params[k]) for k in original.params)
    assert np.array_equal(back.forward(run.eval_tokens), original.forward(run.eval_tokens))


def test_step_exports_that_snapshot_and_says_so(run, tmp_path):
    export_run(run.path, tmp_path / "step0.safetensors", step=0)
    back = load_transformer_lens(tmp_path / "step0.safetensors")
    assert all(np.array_equal(back.params[k], v) for k, v in run.params(0).items())
    assert json.loads(metadata(tmp_path / "step0.safetensors")["minitransformer"]) == {
        "run": str(run.path), "step": 0, "tokens": 0}
    export_run(run, tmp_path / "latest.safetensors")
    assert json.loads(metadata(tmp_path / "latest.safetensors")["minitransformer"])["step"] == 10


def test_metadata_holds_the_transformer_lens_config_and_the_file_their_state_dict(tmp_path):
    model = trained_like(CONFIGS["attn-only-shortformer"], 0)
    path = save_transformer_lens(model, tmp_path / "model.safetensors")
    assert json.loads(metadata(path)["config"]) == {
        "n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "n_ctx": 16, "d_vocab": 64,
        "d_vocab_out": 64, "attn_only": True, "d_mlp": None, "act_fn": "gelu_new",
        "normalization_type": None, "positional_embedding_type": "shortformer",
        "initializer_range": 0.8 / np.sqrt(32), "eps": 1e-5, "use_attn_scale": True,
        "default_prepend_bos": False, "tokenizer_name": None}
    tensors = load_file(path)
    buffers = {f"blocks.{l}.attn.{b}" for l in range(2) for b in ("mask", "IGNORE")}
    assert set(tensors) == set(model.params) | buffers
    assert all(tensors[k].dtype == np.float32 for k in model.params)
    mask = tensors["blocks.1.attn.mask"]
    assert mask.shape == (0, 0) and mask.dtype == bool
    assert tensors["blocks.1.attn.IGNORE"] == -np.inf
    state, kwargs = to_transformer_lens(model)
    assert set(state) == set(tensors) and kwargs == json.loads(metadata(path)["config"])


def test_a_transformer_lens_config_dict_means_their_defaults():
    cfg = from_transformer_lens_config(dict(n_layers=1, d_model=32, d_head=8, n_ctx=16, d_vocab=64))
    assert (cfg.n_heads, cfg.attn_only, cfg.d_mlp, cfg.act_fn) == (4, False, 128, "relu")
    assert (cfg.normalization_type, cfg.positional_embedding_type) == ("LN", "standard")
    ignored = dict(n_layers=1, d_model=32, d_head=8, n_ctx=16, d_vocab=64, device="cpu",
                   model_name="x", use_attn_result=True, attn_scale=np.sqrt(8), d_vocab_out=64)
    assert from_transformer_lens_config(ignored) == cfg


def test_circuits_analyse_an_imported_model(tmp_path):
    handmade = induction_model(d_vocab=32, n_ctx=64)
    original = Model(handmade.config, params=handmade.params)             # float32, as the file
    path = save_transformer_lens(handmade, tmp_path / "induction.safetensors")
    back = load_transformer_lens(path)
    scores = prefix_matching_score(back)
    assert scores[1, 0] > 0.99 and np.array_equal(scores, prefix_matching_score(original))
    assert np.allclose(ov_copying_score(back), ov_copying_score(original), equal_nan=True)


# ---- what TransformerLens cannot express, and bad files -----------------------------------

@pytest.mark.parametrize("change, named", [(dict(smeared_key=True), "smeared_key"),
                                           (dict(positional_embedding_type="none"),
                                            "positional_embedding_type")])
def test_unexportable_models_are_one_line_errors(change, named, tmp_path, capsys):
    config = dict(CONFIGS["attn-only-shortformer"], **change)
    with pytest.raises(ValueError, match=f"^{named}: .*cannot be exported$"):
        transformer_lens_config(config)
    out = write_run(tmp_path / "run", {0: Model(config)}, np.zeros((2, 16), dtype=np.int64))
    code, _, err = run_cli(capsys, out, "--out", tmp_path / "m.safetensors")
    assert code == 2 and err.startswith(f"error: {named}: ") and err.count("\n") == 1
    assert not (tmp_path / "m.safetensors").exists()


def _write(path, tensors, config=CONFIGS["attn-only-shortformer"]):
    save_file(tensors, path, metadata=None if config is None else
              {"config": json.dumps(transformer_lens_config(config))})


def _without(key):
    return lambda state, path: _write(path, {k: v for k, v in state.items() if k != key})


def _reshaped(key):
    return lambda state, path: _write(path, {**state, key: state[key][:, :4]})


def _with_config(**change):
    def write(state, path):
        config = dict(transformer_lens_config(CONFIGS["attn-only-shortformer"]), **change)
        save_file(state, path, metadata={"config": json.dumps(config)})
    return write


BAD_FILES = {
    "not safetensors": (lambda state, path: path.write_bytes(b"PK\x03\x04 not a header"),
                        "not a readable safetensors file"),
    "missing key": (_without("blocks.1.attn.W_Q"), "missing key 'blocks.1.attn.W_Q'"),
    "wrong shape": (_reshaped("blocks.0.attn.W_K"), "key 'blocks.0.attn.W_K' has shape (4, 4, 8)"),
    "unexpected key": (lambda state, path: _write(path, {**state, "blocks.0.mlp.W_gate":
                                                         np.zeros((32, 64), np.float32)}),
                       "unexpected key 'blocks.0.mlp.W_gate'"),
    "no config": (lambda state, path: _write(path, state, config=None),
                  "no 'config' in its metadata; pass config="),
    "LayerNormPre": (_with_config(normalization_type="LNPre"), "normalization_type: 'LNPre'"),
    "rotary": (_with_config(positional_embedding_type="rotary"),
               "positional_embedding_type: 'rotary'"),
    "gated MLP": (_with_config(gated_mlp=True), "gated_mlp: True is not supported"),
    "unknown field": (_with_config(use_flux_capacitor=True), "use_flux_capacitor: not a "),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_files_are_one_line_errors_naming_file_and_key(case, tmp_path):
    write, message = BAD_FILES[case]
    state, _ = to_transformer_lens(trained_like(CONFIGS["attn-only-shortformer"], 0))
    path = tmp_path / "bad.safetensors"
    write(state, path)
    with pytest.raises(ValueError) as error:
        load_transformer_lens(path)
    text = str(error.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_other_names_are_refused(tmp_path):
    (tmp_path / "run.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="expected a .safetensors file or a PyTorch state dict"):
        load_transformer_lens(tmp_path / "run.npz")
    with pytest.raises(ValueError, match="no such file"):
        load_transformer_lens(tmp_path / "absent.safetensors")


def test_a_pt_state_dict_loads_and_a_pickled_object_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    model = trained_like(CONFIGS["ln-mlp-standard"], 0)
    state, kwargs = to_transformer_lens(model)
    state = {k: torch.from_numpy(v) for k, v in state.items()}
    for l in range(2):   # TransformerLens 3.0 kept an [n_ctx, n_ctx] mask: dropped all the same
        state[f"blocks.{l}.attn.mask"] = torch.ones(16, 16, dtype=torch.bool).tril()
    torch.save(state, tmp_path / "model.pt")
    back = load_transformer_lens(tmp_path / "model.pt", config=kwargs)
    tokens = np.arange(16)
    assert np.array_equal(back.forward(tokens), model.forward(tokens))
    torch.save({"embed.W_E": torch.zeros(64, 32), "note": Unpicklable()}, tmp_path / "pickle.pt")
    with pytest.raises(ValueError, match=r"pickle\.pt: refused by torch\.load\(weights_only=True\)"
                                         r".*Unsupported global"):
        load_transformer_lens(tmp_path / "pickle.pt", config=kwargs)


class Unpicklable:
    """Any class: torch.load(weights_only=True) must refuse to build it."""


def test_a_pt_file_without_torch_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "model.pt").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)            # import torch -> ImportError
    with pytest.raises(ValueError, match=r"model\.pt: reading a PyTorch file needs torch"):
        load_transformer_lens(tmp_path / "model.pt", config=CONFIGS["attn-only-shortformer"])


# ---- the command line ---------------------------------------------------------------------

def test_cli_writes_the_file(run, tmp_path, capsys):
    code, out, err = run_cli(capsys, run.dir, "--step", 10, "--out", tmp_path / "m.safetensors")
    assert code == 0 and err == "" and out.startswith(str(tmp_path / "m.safetensors"))
    assert "config" in metadata(tmp_path / "m.safetensors")


def test_cli_bad_input_exits_2_with_one_line(run, tmp_path, capsys):
    before = run.path.read_bytes()
    target = tmp_path / "m.safetensors"
    for argv, message in [((tmp_path / "absent", "--out", target), "no such file"),
                          ((run.dir, "--out", run.path), "--out " + str(run.path) + ": expected"),
                          ((run.dir, "--out", run.dir), "expected a file name ending in"),
                          ((run.dir, "--step", 5, "--out", target), "no snapshot at step 5")]:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1
        assert message in err
    assert run.path.read_bytes() == before and not target.exists()


# ---- TransformerLens itself (skipped where it is not installed) ------------------------------

@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip("transformer_lens", reason="transformer_lens is not installed "
                               "(pip install -e .[tl]): the HookedTransformer comparisons skip")


def relative_difference(ours, theirs):
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # 3.9 warns of HookedTransformer's end
def test_transformer_lens_builds_the_exported_model_from_the_file_alone(run, tl, tmp_path):
    import torch
    from safetensors.torch import load_file as load_torch
    path = export_run(run, tmp_path / "model.safetensors")
    # the README's three lines
    cfg = tl.HookedTransformerConfig(**json.loads(safe_open(path, "pt").metadata()["config"]))
    theirs = tl.HookedTransformer(cfg)
    theirs.load_state_dict(load_torch(path))                   # strict
    ours = run.model()
    tokens = run.eval_tokens
    with torch.no_grad():
        their_logits, their_cache = theirs.run_with_cache(torch.from_numpy(tokens))
    our_logits, our_cache = ours.run_with_cache(tokens)
    difference = relative_difference(our_logits, their_logits.numpy())
    print(f"max relative logit difference: {difference:.2e}")
    assert difference < 1e-5
    # the same hook names hold the same activations, LayerNorm's too where there is one
    shared = sorted(set(our_cache) & set(their_cache))
    assert {"blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post",
            "hook_embed"} <= set(shared)
    if ours.config.normalization_type == "LN":
        assert {"blocks.0.ln1.hook_scale", "blocks.1.ln2.hook_normalized",
                "ln_final.hook_normalized"} <= set(shared)
    for name in shared:
        ours = our_cache[name]
        scale = np.abs(ours[np.isfinite(ours)]).max()      # attention scores hold -inf, as theirs
        np.testing.assert_allclose(ours, their_cache[name].numpy(), rtol=1e-5, atol=1e-5 * scale,
                                   err_msg=name)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_transformer_lens_weights_load_into_our_model(name, suffix, tl, tmp_path):
    import torch
    from safetensors.torch import save_file as save_torch
    config = CONFIGS[name]
    torch.manual_seed(0)
    theirs = tl.HookedTransformer(tl.HookedTransformerConfig(**{"d_head": 8, "act_fn": "gelu_new",
                                                                **config}))
    with torch.no_grad():                          # their init zeroes biases: make them count
        for parameter in theirs.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    path = tmp_path / ("model" + suffix)
    (save_torch if suffix == ".safetensors" else torch.save)(theirs.state_dict(), path)
    ours = load_transformer_lens(path, config=theirs.cfg if suffix == ".safetensors" else
                                 theirs.cfg.to_dict())
    tokens = np.random.default_rng(0).integers(0, 64, (3, 16))
    difference = relative_difference(ours.forward(tokens),
                                     theirs(torch.from_numpy(tokens)).detach().numpy())
    print(f"max relative logit difference: {difference:.2e}")
    assert difference < 1e-5


# ---- issue "Reliability, round 2": items 3, 4, 10, 12, 17, 20 --------------------------------

def _tiny_state():
    state, _ = to_transformer_lens(trained_like(CONFIGS["attn-only-shortformer"], 0))
    return state


def _one_line_error(path, **kwargs):
    with pytest.raises(ValueError) as error:
        load_transformer_lens(path, **kwargs)
    text = str(error.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_a_huge_config_in_the_metadata_is_refused_before_anything_is_built(tmp_path):
    path = tmp_path / "huge.safetensors"
    for n_layers in (10**5, 4097):       # 10**12 unfixed: a dict of 10**12 layers fills the memory
        _with_config(n_layers=n_layers)(_tiny_state(), path)
        text = _one_line_error(path)
        assert text.startswith(f"{path}: metadata 'config': n_layers: {n_layers:,} is more than")


@pytest.mark.parametrize("where", ["metadata", "argument"])
def test_deeply_nested_config_json_is_a_one_line_error(where, tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    path = tmp_path / "deep.safetensors"
    if where == "metadata":
        save_file(_tiny_state(), path, metadata={"config": deep})
        text = _one_line_error(path)
        assert text.startswith(f"{path}: metadata 'config' is JSON nested too deeply")
    else:
        _write(path, _tiny_state())
        assert _one_line_error(path, config=deep).startswith("config is JSON nested too deeply")
    shallow = "[" * 50 + "]" * 50                   # parsed, yet deeper than any config
    assert "nested too deeply" in _one_line_error(path, config=shallow)


def test_nan_or_infinite_weights_are_refused(tmp_path):
    path = tmp_path / "nan.safetensors"
    for bad in (np.nan, np.inf):
        state = _tiny_state()
        state["blocks.1.attn.W_V"][0, 0, 0] = bad
        _write(path, state)
        assert _one_line_error(path) == (f"{path}: key 'blocks.1.attn.W_V' holds NaN or infinite "
                                         f"values (did the training diverge?)")


@pytest.mark.parametrize("key, value, message", [
    ("blocks.2.attn.mask", np.zeros((0, 0), bool), "is a buffer of layer 2, but the model has 2"),
    ("blocks.7.attn.IGNORE", np.array(-np.inf, np.float32), "is a buffer of layer 7"),
    ("blocks.0.attn.mask", np.ones((3, 5), bool), "has shape (3, 5), expected (0, 0) or (n_ctx"),
    ("blocks.0.attn.mask", np.ones((16, 16), bool), "is not the causal (lower triangular) mask"),
    ("blocks.1.attn.mask", np.ones((16, 16), np.float32), "is not the causal"),
    ("blocks.1.attn.IGNORE", np.full(3, -np.inf, np.float32), "is not TransformerLens's IGNORE"),
    ("blocks.1.attn.IGNORE", np.array(0.0, np.float32), "is not TransformerLens's IGNORE"),
])
def test_buffers_that_change_the_model_are_refused(key, value, message, tmp_path):
    path = tmp_path / "buffers.safetensors"
    _write(path, {**_tiny_state(), key: value})
    text = _one_line_error(path)
    assert text.startswith(f"{path}: key {key!r}") and message in text


def test_earlier_transformer_lens_buffers_still_load(tmp_path):
    """TransformerLens 2.x: an [n_ctx, n_ctx] causal mask, IGNORE = -1e5 (1.x) or -inf."""
    path = tmp_path / "old.safetensors"
    state = _tiny_state()
    state["blocks.0.attn.mask"] = np.tril(np.ones((16, 16), bool))
    state["blocks.1.attn.IGNORE"] = np.array(-1e5, np.float32)
    _write(path, state)
    assert load_transformer_lens(path).config.n_layers == 2


def test_the_suffix_is_read_as_export_writes_it_whatever_its_case(tmp_path, capsys):
    model = trained_like(CONFIGS["attn-only-shortformer"], 0)
    path = save_transformer_lens(model, tmp_path / "E.SAFETENSORS")
    back = load_transformer_lens(path)
    assert all(np.array_equal(back.params[k], v) for k, v in model.params.items())
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    state, kwargs = to_transformer_lens(model)
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "M.PT")
    assert load_transformer_lens(tmp_path / "M.PT", config=kwargs).config == model.config


def test_attn_scale_of_another_type_names_the_field():
    config = dict(transformer_lens_config(CONFIGS["attn-only-shortformer"]))
    for scale in ("2.8", None, [1], 10**400):
        with pytest.raises(ValueError, match=r"^attn_scale: must be a positive number"):
            from_transformer_lens_config(dict(config, attn_scale=scale))
    config.pop("n_heads")                                 # inferred as d_model // d_head
    with pytest.raises(ValueError, match=r"^d_head: must be a positive integer, got 0"):
        from_transformer_lens_config(dict(config, d_head=0))


def test_a_sparse_tensor_in_a_pt_file_is_a_value_error_naming_the_key(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    state, kwargs = to_transformer_lens(trained_like(CONFIGS["attn-only-shortformer"], 0))
    state = {k: torch.from_numpy(v) for k, v in state.items()}
    state["embed.W_E"] = state["embed.W_E"].to_sparse()
    torch.save(state, tmp_path / "sparse.pt")
    text = _one_line_error(tmp_path / "sparse.pt", config=kwargs)
    assert text.startswith(f"{tmp_path / 'sparse.pt'}: key 'embed.W_E' is a torch.sparse_coo "
                           f"tensor; save it dense")


def test_an_empty_or_cut_pt_file_gives_a_readable_reason(tmp_path):
    pytest.importorskip("torch", reason="PyTorch is not installed")
    config = CONFIGS["attn-only-shortformer"]
    (tmp_path / "empty.pt").write_bytes(b"")
    assert _one_line_error(tmp_path / "empty.pt", config=config).endswith(
        "which loads tensors only (the file is empty)")
    (tmp_path / "cut.pt").write_bytes(b"\x80\x02")            # a pickle's first bytes only
    text = _one_line_error(tmp_path / "cut.pt", config=config)
    assert "()" not in text and text.endswith(")"), text
