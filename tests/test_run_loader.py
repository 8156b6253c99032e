"""The run loader (runs.Run): only the members the format defines are read, each header
checked against the config before its data is read, and every malformed run is a one-line
ValueError naming the file and the key. Ends with a hypothesis fuzz of member sets, shapes,
dtypes and raw .npy headers."""
import io
import json
import zipfile

import numpy as np
import pytest
from hypothesis import given, strategies as st

from minitransformer.presets import preset
from minitransformer.runs import Run, read_npz, save_npz
from minitransformer.train import main, train

TINY = preset("tiny")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader") / "tiny"
    train(out, *TINY, progress=False)
    return out, read_npz(out / "run.npz")


def write_zip(path, members):
    """{name: bytes} -> a zip of those members, stored uncompressed unless bytes are huge."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def copy_run(tiny, tmp_path, change):
    """A copy of the tiny run (snapshots shared) with change(data) applied to its run.npz."""
    out, data = tiny
    data = dict(data)
    change(data)
    copy = tmp_path / "copy"
    copy.mkdir(exist_ok=True)
    (copy / "snapshots").mkdir(exist_ok=True)
    for snapshot in (out / "snapshots").iterdir():
        (copy / "snapshots" / snapshot.name).write_bytes(snapshot.read_bytes())
    save_npz(copy / "run.npz", data)
    return copy


def text(value):
    return np.array(value if isinstance(value, str) else json.dumps(value))


def model_config(tiny, **change):
    values = {**json.loads(str(tiny[1]["model_config"])), **change}
    return text({k: v for k, v in values.items() if v is not None})


@pytest.mark.parametrize("key,value,message", [
    ("format_version", np.array([1]), "key 'format_version' has shape (1,), expected ()"),
    ("format_version", np.array(1.5), "key 'format_version' has dtype float64"),
    ("train_config", text({"lr": 1}), "key 'train_config' lacks field 'corpus'"),
    ("train_config", text("{'lr': 1"), "key 'train_config' is not valid JSON"),
    ("corpus", text({"name": "x"}), "key 'corpus' must hold a name and a sha256"),
    ("corpus", text([1, 2]), "key 'corpus' is a JSON list, expected a dict"),
    ("optim.step", np.array([3, 4]), "key 'optim.step' has shape (2,)"),
    ("log.seconds", np.zeros(3), "key 'log.seconds' has shape (3,), expected (157,)"),
    ("snapshot.steps", np.zeros(0, dtype=np.int64), "key 'snapshot.tokens' has shape (6,), expected (0,)"),
    ("state.rng", text({"state": 1}), "key 'state.rng' is not a generator state"),
    ("param.embed.W_E", np.full((256, 32), np.nan, np.float32), "'param.embed.W_E' holds NaN"),
    ("param.embed.W_E", np.zeros((256, 32), np.complex64), "'param.embed.W_E' has dtype complex64"),
    ("eval_tokens", np.full((16, 32), 300), "key 'eval_tokens' holds token 300"),
])
def test_malformed_members_are_named(tiny, tmp_path, key, value, message):
    copy = copy_run(tiny, tmp_path, lambda data: data.update({key: value}))
    with pytest.raises(ValueError) as error:
        Run(copy)
    assert message in str(error.value) and str(copy / "run.npz") in str(error.value)


def test_model_config_missing_a_field_is_named(tiny, tmp_path):
    copy = copy_run(tiny, tmp_path, lambda data: data.update(model_config=model_config(tiny, d_model=None)))
    with pytest.raises(ValueError, match="key 'model_config' lacks field 'd_model'"):
        Run(copy)


@pytest.mark.parametrize("cli", ["train", "eigen", "heads", "phase_change"])
def test_every_cli_answers_a_malformed_run_with_one_line(tiny, tmp_path, capsys, cli):
    from circuits import eigen, heads
    from experiments import phase_change
    copy = copy_run(tiny, tmp_path, lambda data: data.update(format_version=np.array([1, 2])))
    argv = {"train": ["--preset", "tiny", "--out", str(copy), "--resume", "--quiet"]}.get(cli, [str(copy)])
    assert {"train": main, "eigen": eigen.main, "heads": heads.main,
            "phase_change": phase_change.main}[cli](argv) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'format_version' has shape (2,)" in err and "\n" not in err


@pytest.mark.parametrize("change, message", [
    # 10**12 (as test_config.py) would, unfixed, fill the memory where this fails in a second
    (dict(n_layers=10**5), "n_layers: 100,000 is more than this engine builds"),
    (dict(d_vocab=2**21, d_model=2048), "d_vocab: 2,097,152 makes a model of"),
])
def test_a_model_config_beyond_any_real_model_is_refused_before_anything_is_read(
        tiny, tmp_path, change, message):
    values = {**json.loads(str(tiny[1]["model_config"])), **change}
    copy = copy_run(tiny, tmp_path, lambda data: data.update(model_config=text(values)))
    with pytest.raises(ValueError) as error:
        Run(copy)
    assert str(error.value).startswith(f"{copy / 'run.npz'}: key 'model_config' is invalid: "
                                       f"{message}")


@pytest.mark.parametrize("key", ["model_config", "train_config", "corpus", "state.rng"])
def test_deeply_nested_json_in_a_run_is_a_one_line_error(tiny, tmp_path, key):
    deep = text("[" * 200_000 + "]" * 200_000)
    copy = copy_run(tiny, tmp_path, lambda data: data.update({key: deep}))
    with pytest.raises(ValueError, match=f"key '{key}' is JSON nested too deeply"):
        Run(copy)


def test_members_the_format_does_not_define_are_never_read(tiny, tmp_path):
    copy = copy_run(tiny, tmp_path, lambda data: None)
    with zipfile.ZipFile(copy / "run.npz", "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("extra.npy", npy_bytes(np.zeros(4_000_000)))     # 32 MB, read = found
        archive.writestr("garbage.npy", b"\x93NUMPY but not really")
    run = Run(copy)
    assert "extra" not in run.data and len(run.snapshot_steps) == 6


def test_a_header_declaring_more_than_its_member_holds_is_refused(tiny, tmp_path):
    """100 GB declared in a few bytes: refused before anything is allocated."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (25 * 2**30,)})
    members = {name + ".npy": npy_bytes(value) for name, value in tiny[1].items()}
    members["log.loss.npy"] = buffer.getvalue() + b"\0" * 64
    write_zip(tmp_path / "run.npz", members)
    with pytest.raises(ValueError, match="key 'log.loss' has shape"):
        Run(tmp_path / "run.npz")
    members["log.loss.npy"] = npy_bytes(tiny[1]["log.loss"])
    members["param.embed.W_E.npy"] = npy_bytes(tiny[1]["param.embed.W_E"])[:200]
    write_zip(tmp_path / "run.npz", members)
    with pytest.raises(ValueError, match="key 'param.embed.W_E' declares 32,768 bytes of data, more"):
        Run(tmp_path / "run.npz")


MEMBER = st.sampled_from(["format_version", "model_config", "train_config", "corpus", "state.step",
                          "state.tokens", "state.rng", "optim.step", "eval_tokens", "token_counts",
                          "snapshot.steps", "snapshot.tokens", "log.loss", "log.seconds",
                          "param.embed.W_E", "param.unembed.b_U", "optim.m.unembed.b_U", "extra"])
DTYPE = st.sampled_from(["int8", "int64", "uint8", "float32", "float64", "complex64", "bool",
                         "U8", "object"])
ARRAY = st.builds(lambda dtype, shape: np.zeros(shape, dtype=dtype), DTYPE,
                  st.lists(st.integers(0, 40), max_size=3).map(tuple))
TEXT = st.one_of(st.text(max_size=30), st.builds(json.dumps, st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6))).map(np.array)
RAW = st.binary(max_size=200).map(lambda tail: b"\x93NUMPY" + tail)
CHANGE = st.tuples(MEMBER, st.one_of(st.none(), ARRAY, TEXT, RAW))


@given(changes=st.lists(CHANGE, max_size=4))
def test_fuzzed_runs_only_ever_raise_one_line_value_errors(tiny, tmp_path_factory, changes):
    members = {name + ".npy": npy_bytes(value) for name, value in tiny[1].items()}
    for key, value in changes:
        if value is None:
            members.pop(key + ".npy", None)
        else:
            members[key + ".npy"] = value if isinstance(value, bytes) else npy_bytes(value)
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "snapshots").symlink_to(tiny[0] / "snapshots")
    write_zip(folder / "run.npz", members)
    try:
        Run(folder).params(step=0)
    except ValueError as e:
        assert "\n" not in str(e) and str(folder / "run.npz") in str(e), str(e)
