"""Corpora: the built-in one, text files and folders, synthetic ones, the fixed eval set."""
import numpy as np
import pytest

from minitransformer.data import (BOS, candidate_tokens, eval_set, load_corpus, random_crops,
                                  repeated_segments_corpus, stdlib_files, template_corpus)


def test_stdlib_corpus_is_split_by_file_and_includes_tests_unless_asked():
    root, files = stdlib_files()
    assert any("test" in p.relative_to(root).parts[:-1] for p in files)
    assert not any("site-packages" in p.relative_to(root).parts for p in files)
    corpus = load_corpus()
    assert len(corpus.train) > 20_000_000 and len(corpus.eval) > 1_000_000
    assert corpus.train.dtype == np.uint8 and corpus.train[0] == BOS
    # NUL (BOS) only where a document starts: files with NUL bytes or non-UTF-8 are left out
    assert (corpus.train == BOS).sum() + (corpus.eval == BOS).sum() == len(files)
    assert load_corpus().sha256 == corpus.sha256          # identified by content, reproducibly
    root, plain = stdlib_files(tests=False)
    assert plain and not any("test" in p.relative_to(root).parts[:-1] for p in plain)
    assert load_corpus(tests=False).sha256 != corpus.sha256


def test_folder_corpus_and_its_errors(tmp_path):
    for i in range(40):
        (tmp_path / f"doc{i}.txt").write_text(f"document {i} " * 30)
    corpus = load_corpus(tmp_path)
    assert len(corpus.train) > len(corpus.eval) > 0
    assert (corpus.train == BOS).sum() + (corpus.eval == BOS).sum() == 40
    (tmp_path / "doc0.txt").write_text("changed")
    assert load_corpus(tmp_path).sha256 != corpus.sha256
    (tmp_path / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01")
    with pytest.raises(ValueError, match=r"--corpus .*image.bin: contains a NUL byte"):
        load_corpus(tmp_path)
    with pytest.raises(ValueError, match=r"--corpus .*missing: no such file or folder"):
        load_corpus(tmp_path / "missing")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match=r"--corpus .*empty.txt: the file is empty"):
        load_corpus(empty)
    late_nul = tmp_path / "late.txt"                         # past the first 8 KB too
    late_nul.write_bytes(b"text " * 4000 + b"\x00" + b"more")
    with pytest.raises(ValueError, match=r"late.txt: contains a NUL byte \(at byte 20000\)"):
        load_corpus(late_nul)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.txt: not UTF-8 text"):
        load_corpus(latin)


def test_single_file_holds_out_its_end(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 100)
    corpus = load_corpus(path, eval_fraction=0.1)
    assert len(corpus.train) == 901 and len(corpus.eval) == 101


def test_eval_set_is_fixed_by_its_seed_and_crops_are_windows():
    corpus = repeated_segments_corpus(n_docs=200)
    a, b = eval_set(corpus, 8, 16, seed=3), eval_set(corpus, 8, 16, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, eval_set(corpus, 8, 16, seed=4))
    crops = random_crops(corpus.train, 5, 16, np.random.default_rng(0))
    stream = corpus.train.tobytes()
    assert all(row.astype(np.uint8).tobytes() in stream for row in crops)
    with pytest.raises(ValueError, match="shorter than n_ctx"):
        random_crops(corpus.train[:10], 1, 16, np.random.default_rng(0))


def test_synthetic_corpora():
    rep = repeated_segments_corpus(n_docs=50, segment=(8, 8), repeats=(3, 3))
    doc = rep.train[1:25]
    assert np.array_equal(doc[:8], doc[8:16]) and np.array_equal(doc[:8], doc[16:24])
    text = template_corpus(n_docs=20).train.tobytes().decode()
    lines = [l for l in text.replace("\x00", "\n").split("\n") if l]
    assert all(l.split(": ")[0] in ("animal", "color", "fruit", "month") for l in lines)


def test_candidate_tokens_drop_the_most_and_least_common():
    counts = np.zeros(256, dtype=int)
    counts[1:101] = np.arange(100, 0, -1)     # token 1 most common ... token 100 least
    counts[BOS] = 10**6
    pool = candidate_tokens(counts)
    assert BOS not in pool and 1 not in pool and 100 not in pool and 50 in pool
    assert len(pool) == 80


def test_candidate_tokens_leave_out_tokens_too_rare_to_have_trained():
    counts = np.zeros(256, dtype=int)
    counts[1:101] = 10**5                      # the text's alphabet
    counts[200:240] = 3                        # rare bytes: 3 in 10M, under the 1e-5 floor
    pool = candidate_tokens(counts)
    assert len(pool) == 80 and pool.max() <= 100
    assert len(candidate_tokens(counts, min_share=0)) == 112   # 140 seen, 10% dropped each side


def test_repeat_spans_copies_a_span_later_in_the_window():
    from minitransformer.data import repeat_spans
    windows = np.arange(64 * 10).reshape(10, 64)       # every token distinct
    original = windows.copy()
    repeat_spans(windows, 0.5, np.random.default_rng(1))
    changed = [r for r in range(10) if not np.array_equal(windows[r], original[r])]
    assert 2 <= len(changed) <= 8
    for r in changed:
        row = windows[r]
        values, counts = np.unique(row, return_counts=True)
        repeated = values[counts == 2]
        assert 8 <= len(repeated) <= 32        # one span of n_ctx/8 .. n_ctx/2 tokens, seen twice


def test_default_presets_train_on_natural_text_and_the_mixed_ones_say_so():
    from minitransformer.presets import PRESETS, preset
    for name in [f"attn-only-{n}l" for n in range(1, 7)] + [f"mlp-{n}l" for n in range(1, 7)] + \
            ["smeared-1l", "smeared-2l"]:
        _, train = preset(name)
        assert train["corpus"] == "stdlib" and not train.get("synthetic_fraction") \
            and not train.get("repeat_fraction"), name
    mixed = [name for name in PRESETS if name.endswith("-mixed")]
    assert len(mixed) == 6 and all(preset(name)[1]["synthetic_fraction"] == 0.5 for name in mixed)


def test_windows_may_start_with_bos():
    stream = np.arange(1, 200, dtype=np.uint16)
    plain = random_crops(stream, 5, 16, np.random.default_rng(0))
    first = random_crops(stream, 5, 16, np.random.default_rng(0), bos_first=True)
    assert plain.shape == first.shape == (5, 16) and (plain[:, 0] != BOS).all()
    assert (first[:, 0] == BOS).all() and (np.diff(first[:, 1:], axis=1) == 1).all()


def test_repeated_ngram_share_counts_repeats_within_a_window():
    from minitransformer.data import repeated_ngram_share
    windows = np.array([[1, 2, 3, 4, 1, 2, 3, 9], [5, 6, 7, 8, 9, 10, 11, 12]])
    # past position 3: row 0 has (1,2,3) again at 6 but not (3,4,1),(4,1,2),(3,9)...; row 1 none
    assert repeated_ngram_share(windows, 3, skip=3) == 1 / 10
    assert repeated_ngram_share(windows, 2, skip=3) == 2 / 10        # (1,2) and (2,3)
