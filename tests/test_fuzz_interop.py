"""Property-based fuzz of the interop surfaces (issue "Reliability, round 2"): the safetensors
import (random bytes, a valid file with bytes changed or cut, files built from random headers,
tensors and configs), the .pt import, and config JSON read by ModelConfig.from_dict and by
from_transformer_lens_config. Whatever comes in, the answer is a model or a one-line
ValueError: never another exception, never a traceback. Examples per test: the hypothesis
profile's (tests/conftest.py: 'ci' 8, 'thorough' 200)."""
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st
from safetensors.numpy import save

from minitransformer import Model, ModelConfig
from minitransformer.config import MAX_PARAMETERS
from minitransformer.export import (FORWARD_DEFAULTS, from_transformer_lens_config,
                                    load_transformer_lens, to_transformer_lens)
from minitransformer.npz import parse_json

CONFIG = dict(n_layers=2, d_model=8, n_heads=2, n_ctx=4, d_vocab=8, attn_only=False, d_mlp=12,
              normalization_type="LN", positional_embedding_type="standard")
STATE, KWARGS = to_transformer_lens(Model(CONFIG, seed=0))
VALID = save(STATE, metadata={"config": json.dumps(KWARGS)})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-interop")


def loaded_or_refused(path, config=None):
    """load_transformer_lens(path): a Model, or a one-line ValueError naming the file (or the
    config= argument); anything else fails the test."""
    try:
        return load_transformer_lens(path, config=config)
    except ValueError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 1000, message
        assert message.startswith((str(path), "config")), message
        return None


# ---- values a config field may hold in a file ----------------------------------------------

DEEP = st.integers(1, 900).map(lambda depth: json.loads("[" * depth + "]" * depth))
JSON_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 64), st.integers(-2**70, 2**70),
    st.integers(10**300, 10**1000), st.floats(), st.text(max_size=12),
    st.sampled_from(["LN", "standard", "shortformer", "gelu_new", "relu", "causal", -1, -1.0]),
    st.lists(st.integers(0, 9), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(),
                                                              max_size=2))
FIELD = st.sampled_from(sorted(KWARGS) + sorted(FORWARD_DEFAULTS)[:8] + [
    "n_heads", "attn_scale", "d_vocab_out", "original_architecture", "smeared_key", "pos_init",
    "pos_scale", "pos_trainable", ""]) | st.text(max_size=8)
CHANGES = st.dictionaries(FIELD, JSON_VALUE | st.none().map(lambda _: "<drop>"), max_size=4)


def changed(base, changes):
    values = dict(base)
    for key, value in changes.items():
        if value == "<drop>":
            values.pop(key, None)
        else:
            values[key] = value
    return values


def to_json(value):
    """json.dumps, but an integer Python will not print (more than 4,300 digits) as its digits."""
    try:
        return json.dumps(value)
    except ValueError:
        return "9" * 5000


CONFIG_TEXT = st.one_of(
    CHANGES.map(lambda changes: to_json(changed(KWARGS, changes))),
    st.integers(0, 300_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(0, 300_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.text(max_size=40), st.binary(max_size=40).map(lambda b: b.decode("latin-1")))


# ---- config JSON ----------------------------------------------------------------------------

@given(changes=CHANGES, deep=st.one_of(st.none(), DEEP))
def test_model_config_from_dict_makes_a_config_or_names_the_fault(changes, deep):
    values = changed(ModelConfig(**CONFIG).to_dict(), changes)
    if deep is not None:
        values["n_layers"] = deep
    try:
        cfg = ModelConfig.from_dict(values)
    except ValueError as e:
        message = str(e)
        assert "\n" not in message and len(message) < 1000, message
        assert message.split(":")[0] in values or message.startswith("unknown config key"), message
    else:
        assert cfg.n_parameters() <= MAX_PARAMETERS


@given(text=CONFIG_TEXT)
def test_config_json_makes_a_config_or_one_line_error(text):
    try:
        kwargs = parse_json(text, "file: key 'config'")
        from_transformer_lens_config(kwargs)
    except ValueError as e:
        assert "\n" not in str(e) and len(str(e)) < 1000, str(e)


@given(text=CONFIG_TEXT)
def test_safetensors_config_metadata_loads_or_is_refused(folder, text):
    path = folder / "metadata.safetensors"
    path.write_bytes(save(STATE, metadata={"config": text}))
    loaded_or_refused(path)
    loaded_or_refused(path, config=text)      # the same text given as config=


# ---- safetensors bytes ----------------------------------------------------------------------

EDITS = st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6)


@given(edits=EDITS, cut=st.one_of(st.none(), st.integers(0, len(VALID))),
       header_edits=st.lists(st.tuples(st.integers(8, 300), st.integers(0x20, 0x7e)), max_size=4))
def test_a_valid_file_with_bytes_changed_or_cut_loads_or_is_refused(folder, edits, cut,
                                                                     header_edits):
    data = bytearray(VALID)
    for position, byte in edits + header_edits:      # header edits: printable, so JSON-ish
        data[position] = byte
    path = folder / "edited.SafeTensors"
    path.write_bytes(bytes(data[:cut]))
    loaded_or_refused(path)


@given(data=st.binary(max_size=300),
       length=st.one_of(st.none(), st.integers(0, 2**64 - 1), st.integers(0, 400)))
def test_random_bytes_are_refused(folder, data, length):
    path = folder / "random.safetensors"
    path.write_bytes(data if length is None else struct.pack("<Q", length) + data)
    assert loaded_or_refused(path) is None


def filled(dtype, shape, fill):
    with np.errstate(invalid="ignore", over="ignore"):  # NaN or -1e5 cast to an integer
        return np.full(shape, fill).astype(dtype)


TENSOR = st.builds(
    filled,
    st.sampled_from(["float16", "float32", "float64", "int32", "int64", "bool", "uint8", "int8",
                     "complex64"]),
    st.lists(st.integers(0, 17), max_size=3).map(tuple),
    st.sampled_from([0.0, 1.0, -1e5, np.nan, np.inf, -np.inf]))
NAME = st.sampled_from(sorted(STATE) + ["blocks.2.attn.mask", "blocks.9.attn.IGNORE",
                                        "blocks.0.mlp.W_gate", "blocks.00.attn.mask"]) | st.text(
    max_size=8)


@given(tensors=st.dictionaries(NAME, st.one_of(st.none(), TENSOR), max_size=4), changes=CHANGES)
def test_files_of_random_tensors_and_configs_load_or_are_refused(folder, tensors, changes):
    state = dict(STATE)
    for name, value in tensors.items():
        if value is None:
            state.pop(name, None)
        else:
            state[name] = value
    path = folder / "tensors.safetensors"
    try:
        data = save(state, metadata={"config": to_json(changed(KWARGS, changes))})
    except Exception:           # a dtype safetensors itself will not write: nothing to read
        return
    path.write_bytes(data)
    model = loaded_or_refused(path)
    if model is not None:
        assert all(np.isfinite(v).all() for v in model.params.values())


# ---- .pt bytes ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def valid_pt():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed")
    buffer = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in STATE.items()}, buffer)
    return buffer.getvalue()


@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_a_pt_file_with_bytes_changed_or_cut_loads_or_is_refused(folder, valid_pt, edits, cut):
    data = bytearray(valid_pt)
    for where, byte in edits:
        data[int(where * len(data))] = byte
    path = folder / "edited.pt"
    path.write_bytes(bytes(data[:None if cut is None else int(cut * len(data))]))
    loaded_or_refused(path, config=KWARGS)
