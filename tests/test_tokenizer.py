"""Tokenizers (bytes, a BPE learned from the corpus), BPE runs end to end, and the second
corpus (the prose of Python's documentation)."""
import random

import numpy as np
import pytest

from minitransformer import data, tokenizer
from minitransformer.data import BOS, load_corpus, prose, pydocs_corpus
from minitransformer.presets import apply_overrides, preset
from minitransformer.runs import Run, read_npz, save_npz
from minitransformer.tokenizer import BYTES, Tokenizer, parse_spec, tokenize
from minitransformer.train import main, train

pytest.importorskip("tokenizers")

WORDS = ("the cat sat on a mat while induction heads copy tokens from earlier in the context "
         "naïve café déjà vu").split()


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    for i in range(40):
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(30)]
        (folder / f"doc{i}.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINITRANSFORMER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def bpe_run(text_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "bpe"
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MINITRANSFORMER_CACHE", str(tmp_path_factory.mktemp("cache")))
        model, config = apply_overrides(*preset("tiny"), [f"corpus={text_folder}",
                                                          "tokenizer=bpe:300"])
        return train(out, model, config, progress=False)


def test_specs_and_their_errors():
    assert parse_spec("bytes") == 256 and parse_spec("bpe:2048") == 2048
    for bad in ("bpe", "bpe:256", "bpe:70000", "bpe:2k", "wordpiece:100", ""):
        with pytest.raises(ValueError, match=r"tokenizer: .* is not 'bytes' or 'bpe:N'"):
            parse_spec(bad)


def test_bytes_round_trip_and_labels():
    text = "naïve <a>\n\tb"
    ids = BYTES.encode(text)
    assert ids.tolist() == list(text.encode()) and BYTES.decode(ids) == text
    assert [BYTES.label(t) for t in (BOS, 65, 10, 0xE9)] == ["BOS", "A", "\\n", "\\xe9"]


def test_bpe_learned_from_the_training_split_round_trips_text(text_folder):
    corpus = load_corpus(text_folder)
    tokens, tok = tokenize(corpus, "bpe:300")
    assert tok.vocab_size == 300 and tokens.sha256 == corpus.sha256
    # the same documents, BOS first, in fewer tokens; decoding gives the text back exactly
    assert tokens.train[0] == BOS and (tokens.train == BOS).sum() == (corpus.train == BOS).sum()
    assert len(tokens.train) < len(corpus.train) / 2
    assert tok.decode(tokens.eval).encode() == corpus.eval[corpus.eval != BOS].tobytes()
    for text in ("déjà vu: the cat", "unseen words ß∂ƒ 🙂\n\n  x", ""):
        assert tok.decode(tok.encode(text)) == text
    pieces = [tok.label(t) for t in tok.encode(" the cat\n")]
    assert "".join(pieces) == " the cat\\n" and len(pieces) < 6 and tok.label(BOS) == "BOS"
    # learned again from scratch: the same vocabulary (so a cache is only a shortcut)
    again = Tokenizer("bpe:300", tokenizer.train_bpe(tokenizer.documents(corpus.train), 300))
    assert again.sha256 == tok.sha256


def test_the_cache_is_used_and_checked(text_folder, cache, monkeypatch):
    corpus = load_corpus(text_folder)
    first, tok = tokenize(corpus, "bpe:300")
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".npz"]
    monkeypatch.setattr(tokenizer, "train_bpe", lambda *a: pytest.fail("learned again"))
    second, again = tokenize(corpus, "bpe:300")
    assert again.sha256 == tok.sha256 and np.array_equal(first.train, second.train)
    # encoded splits cached with another vocabulary are encoded afresh, not trusted
    npz = next(cache.glob("*.npz"))
    np.savez(npz, tokenizer=np.array("other"), train=np.zeros(9, np.uint16), eval=np.zeros(9, np.uint16))
    third, _ = tokenize(corpus, "bpe:300")
    assert np.array_equal(third.train, first.train)


def test_synthetic_corpora_are_refused():
    with pytest.raises(ValueError, match="tokenizer bpe:300: learned from text; synthetic:repeated"):
        tokenize(data.repeated_segments_corpus(n_docs=20), "bpe:300")


def test_a_bpe_run_stores_its_tokenizer_and_loads_without_the_cache(bpe_run, text_folder):
    assert bpe_run.config.d_vocab == 300 and bpe_run.train_config["tokenizer"] == "bpe:300"
    run = Run(bpe_run.dir)                     # this test's cache folder is empty
    assert run.tokenizer.vocab_size == 300
    text = run.tokenizer.decode(run.eval_tokens[0])
    assert any(w in text for w in WORDS) and run.eval_tokens.max() >= 256
    corpus_text = b"".join(p.read_bytes() for p in text_folder.iterdir()).decode()
    assert text.replace("\n", " ").split()[1] in corpus_text
    assert Run(bpe_run.dir).tokenizer.sha256 == run.tokenizer.sha256


def test_a_bpe_run_without_its_tokenizer_is_a_one_line_error(bpe_run, tmp_path):
    arrays = read_npz(bpe_run.path)
    del arrays["tokenizer"]
    (tmp_path / "r").mkdir()
    save_npz(tmp_path / "r" / "run.npz", arrays)
    with pytest.raises(ValueError, match=r"run.npz: key 'tokenizer' is missing; the run was "
                                         r"trained with tokenizer bpe:300"):
        Run(tmp_path / "r")
    arrays = read_npz(bpe_run.path)
    arrays["tokenizer"] = np.frombuffer(b'{"not": "a tokenizer"}', np.uint8)
    save_npz(tmp_path / "r" / "run.npz", arrays)
    with pytest.raises(ValueError, match=r"key 'tokenizer' is not a tokenizers JSON"):
        Run(tmp_path / "r")


def test_resume_refuses_another_tokenizer(text_folder, tmp_path, cache, capsys):
    argv = ["--preset", "tiny", "--corpus", str(text_folder), "--out", str(tmp_path / "r"),
            "--quiet", "tokenizer=bpe:300", "total_tokens=3000"]
    assert main(argv) == 0
    assert main(argv + ["--resume"]) == 0            # the same tokenizer: resumes
    vocab = next(cache.glob("*.json"))        # the cache now holds a different vocabulary
    other = tokenizer.train_bpe([b"something else entirely " * 50], 300)
    vocab.write_text(other)
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'tokenizer' (bpe:300, sha256" in err and "cannot resume on other tokens" in err
    assert "\n" not in err


def test_d_vocab_follows_the_tokenizer_unless_given(tmp_path, text_folder, capsys):
    model, config = apply_overrides(*preset("attn-only-2l"), ["tokenizer=bpe:1024"])
    assert model["d_vocab"] == 1024
    argv = ["--preset", "tiny", "--corpus", str(text_folder), "--out", str(tmp_path / "r"),
            "--quiet", "tokenizer=bpe:300", "d_vocab=256"]
    assert main(argv) == 2
    assert "d_vocab=256: tokenizer bpe:300 has 300 tokens; set d_vocab=300" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["circuits.eigen", "circuits.heads", "experiments.phase_change"])
def test_the_analyses_read_a_bpe_run(bpe_run, module, capsys):
    import importlib
    assert importlib.import_module(module).main([str(bpe_run.dir)]) == 0
    out, err = capsys.readouterr()
    assert "1.1" in out or "1-layer" in out or "2-layer" in out


def test_the_tokenizer_command_prints_what_it_learned(text_folder, capsys):
    assert tokenizer.main(["--corpus", str(text_folder), "--vocab", "300"]) == 0
    out = capsys.readouterr().out
    assert "bpe:300: 300 tokens" in out and "bytes per token" in out and " | " in out


# ---- the second corpus --------------------------------------------------------------------

RST = """Title
=====

Some prose with ``markup`` and an example::

    code = 1
        more = 2

Back to prose.

.. code-block:: python

   x = 3

.. note::

   A note is prose.

>>> 1 + 1
2

The end.  Literal ::

    hidden
"""


def test_prose_keeps_prose_and_drops_code():
    text = prose(RST)
    for kept in ("Some prose with ``markup`` and an example:\n", "Back to prose.",
                 ".. note::", "A note is prose.", "The end.  Literal\n"):
        assert kept in text
    for dropped in ("code = 1", "more = 2", "x = 3", "code-block", ">>>", "\n2\n", "hidden", "example::"):
        assert dropped not in text


def test_pydocs_is_pinned_by_hash(tmp_path):
    for i in range(12):
        (tmp_path / f"page{i}.rst.txt").write_text(RST.replace("Title", f"Page {i}"))
    (tmp_path / "ignored.html").write_text("<p>not a source</p>")
    corpus = pydocs_corpus(tmp_path, pinned=None)
    assert corpus.name == "pydocs" and (corpus.train == BOS).sum() + (corpus.eval == BOS).sum() == 12
    assert b"x = 3" not in corpus.train.tobytes()
    with pytest.raises(ValueError, match=r"--corpus pydocs: .* hashes to \w{12}, not the pinned "
                                         r"2d24dcc6ab20 \(python3-doc 3.11.2-1\)"):
        pydocs_corpus(tmp_path)


def test_pydocs_names_how_to_install_it(monkeypatch):
    monkeypatch.setattr(data, "PYDOCS_GLOB", "/nonexistent/python3*/html/_sources")
    with pytest.raises(ValueError, match=r"--corpus pydocs: no .*; install Debian's python3-doc"):
        data.corpus_from_spec("pydocs")


@pytest.mark.skipif(not __import__("glob").glob(data.PYDOCS_GLOB), reason="python3-doc not installed")
def test_the_installed_pydocs_is_the_pinned_text():
    corpus = data.corpus_from_spec("pydocs")
    assert corpus.sha256 == data.PYDOCS_SHA256
    assert len(corpus.train) > 8_000_000 and b"Classes provide a means of bundling" in corpus.train.tobytes() + corpus.eval.tobytes()


def test_passages_are_shown_in_the_runs_tokens(bpe_run):
    from experiments import table
    run = Run(bpe_run.dir)
    pieces, losses = table.passage_losses(run, run.snapshot_steps[[0, -1]], text="the cat sat on a mat")
    assert "".join(pieces) == "the cat sat on a mat" and losses.shape == (2, len(pieces))
    assert len(pieces) < len("the cat sat on a mat")                    # BPE tokens, not bytes
    tokens = table.passage_tokens("the cat", run.config.n_ctx, run.tokenizer)
    assert tokens[0] == BOS and run.tokenizer.decode(tokens) == "the cat"


def test_the_tokenizer_command_refuses_a_missing_corpus(tmp_path, capsys):
    assert tokenizer.main(["--corpus", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err


def test_levers_prints_one_row_per_run_from_its_phase_change(bpe_run, capsys):
    from experiments import levers, phase_change
    assert phase_change.main([str(bpe_run.dir)]) == 0
    capsys.readouterr()
    assert levers.main([str(bpe_run.dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | tokenizer |") and len(out) == 3
    cells = [c.strip() for c in out[2].strip("|").split("|")]
    assert cells[0] == bpe_run.dir.name and cells[1] == "bpe:300" and len(cells) == 10
    per_token, per_byte = cells[8].replace("(", "").replace(")", "").split()
    assert float(per_byte) < float(per_token)          # a BPE token holds more than a byte


def test_levers_names_a_run_without_its_analysis(tmp_path, capsys):
    from experiments import levers
    assert main(["--preset", "tiny", "--out", str(tmp_path / "r"), "--quiet", "total_tokens=3000"]) == 0
    assert levers.main([str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "phase_change.json: unreadable" in err
    (tmp_path / "r" / "phase_change.json").write_text('{"window": null, "icl_window": null}')
    assert levers.main([str(tmp_path / "r")]) == 2                  # an older analysis's keys
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no stats.prefix_rise" in err


def test_a_bpe_tokenizer_without_the_tokenizers_package_is_a_one_line_error(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_tokenizers(name, *args, **kwargs):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ImportError("No module named 'tokenizers'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    from minitransformer.tokenizer import train_bpe
    with pytest.raises(ValueError, match=r"needs the `tokenizers` package; pip install") as error:
        train_bpe([b"some text"], 300)
    assert "\n" not in str(error.value)
