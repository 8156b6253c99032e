"""Data: byte-level tokens, the built-in corpus, any text file or folder, synthetic corpora.

Tokens are bytes (vocabulary 256): nothing to download, every token visible. Documents are
joined with byte 0 (NUL, absent from text), which also serves as the start-of-sequence token
(BOS) for the evaluators, so a model has seen it begin documents.
"""
import glob
import hashlib
import os
import pathlib
import re
import sysconfig
from dataclasses import dataclass

import numpy as np

BOS = 0
TEST_DIRS = {"test", "tests", "idle_test"}
NEVER_DIRS = {"site-packages", "__pycache__"}


@dataclass
class Corpus:
    """A corpus split by document into train and held-out eval byte streams (uint8)."""
    name: str
    train: np.ndarray
    eval: np.ndarray
    sha256: str

    def token_counts(self, d_vocab=256):
        """How often each token occurs in train: (d_vocab,) int64."""
        return np.bincount(self.train, minlength=d_vocab).astype(np.int64)


def stdlib_files(tests=True):
    """The running interpreter's standard-library .py files (its test folders too unless
    tests=False) that are UTF-8 text without NUL bytes: a few test files are deliberately
    in other encodings, and they are left out rather than refused."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    skip = NEVER_DIRS if tests else NEVER_DIRS | TEST_DIRS
    files = [p for p in sorted(root.rglob("*.py"))
             if not skip & set(p.relative_to(root).parts[:-1]) and _is_text(p)]
    return root, files


def _is_text(path):
    """Would _read_text accept it: the one definition of a text file here."""
    try:
        _read_text(path)
    except ValueError:
        return False
    return True


def _eval_names(names, eval_fraction):
    """A stable split by document: the eval_fraction of names (at least one) whose hashes are
    smallest, so a document's side depends on its name, not its place in a listing."""
    ranked = sorted(names, key=lambda n: hashlib.sha256(n.encode()).digest())
    return set(ranked[: max(1, round(len(names) * eval_fraction))])


def _read_text(path, flag="--corpus"):
    data = path.read_bytes()
    if b"\x00" in data:     # anywhere: NUL is the start-of-document token (BOS)
        at = data.index(b"\x00")
        raise ValueError(f"{flag} {path}: contains a NUL byte (at byte {at}), which marks the "
                         f"start of a document here; give text files")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{flag} {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    return data


def _join(docs):
    """Documents -> one uint8 stream, each document preceded by BOS."""
    return np.frombuffer(b"".join(bytes([BOS]) + d for d in docs), dtype=np.uint8).copy()


# ---- the second corpus: the prose of Python's documentation -------------------------------

# Debian's python3-doc (3.11.2-1 on Debian 12) installs the documentation's reStructuredText
# sources; `make pydocs` installs the package. The prose of those 497 files is pinned by its
# hash, so "pydocs" means the same text on every machine or is refused.
PYDOCS_GLOB = "/usr/share/doc/python3*/html/_sources"
PYDOCS_SHA256 = "2d24dcc6ab20124a9cada7664875b878c152fd55e724a573aabbfc9956afc477"
CODE_DIRECTIVE = re.compile(r"\s*\.\. (code-block|sourcecode|code|doctest|testcode|testoutput|"
                            r"testsetup|testcleanup|productionlist|literalinclude|highlight)::")


def prose(text):
    """reStructuredText -> its prose: literal blocks (the indented block after a paragraph
    that ends in '::', which becomes ':'), code directives with their bodies and doctest
    paragraphs ('>>>' to the next blank line) are left out; markup is kept."""
    out, block, doctest = [], None, False
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if block is not None:
            if not stripped or indent > block:
                continue
            block = None
            out.append("\n")
        if doctest:
            if stripped:
                continue
            doctest = False
        if stripped.startswith(">>>"):
            doctest = True
        elif CODE_DIRECTIVE.match(line):
            block = indent
        elif stripped.endswith("::") and not stripped.startswith(".. "):
            block = indent
            head = line.rstrip()[:-2]
            if head.strip():
                out.append(head.rstrip() + ("\n" if head.endswith(" ") else ":\n"))
        else:
            out.append(line)
    return "".join(out)


def pydocs_folder():
    """Where python3-doc put the documentation's sources, or a one-line error saying how to
    install them."""
    found = sorted(glob.glob(PYDOCS_GLOB))
    if not found:
        raise ValueError(f"--corpus pydocs: no {PYDOCS_GLOB}; install Debian's python3-doc "
                         f"(make pydocs, as root: apt-get install python3-doc)")
    return pathlib.Path(found[-1])


def pydocs_corpus(folder=None, eval_fraction=0.1, pinned=PYDOCS_SHA256):
    """The prose of Python's documentation (data.prose of every .rst.txt source), split by
    file; refused unless it hashes to `pinned` (None: any)."""
    root = pathlib.Path(folder) if folder is not None else pydocs_folder()
    files = sorted(root.rglob("*.rst.txt"))
    names = [str(f.relative_to(root)) for f in files]
    docs = {n: prose(f.read_text(encoding="utf-8")).encode() for n, f in zip(names, files)}
    corpus = _split("pydocs", docs, eval_fraction, "--corpus pydocs")
    if pinned is not None and corpus.sha256 != pinned:
        raise ValueError(f"--corpus pydocs: {root} hashes to {corpus.sha256[:12]}, not the pinned "
                         f"{pinned[:12]} (python3-doc 3.11.2-1); give --corpus {root} to train on "
                         f"these docs as code files instead")
    return corpus


def _split(name, docs, eval_fraction, flag):
    """{name: bytes} -> Corpus split by document name (_eval_names), hashed over names and
    contents."""
    held_out = _eval_names(list(docs), eval_fraction)
    digest = hashlib.sha256()
    train_docs, eval_docs = [], []
    for relative, data in docs.items():
        digest.update(relative.encode() + b"\x00" + data)
        (eval_docs if relative in held_out else train_docs).append(data)
    if not train_docs or not eval_docs or not sum(map(len, train_docs)):
        raise ValueError(f"{flag}: needs text files for both the train and the eval "
                         f"split; found {len(train_docs)} train and {len(eval_docs)} eval files")
    return Corpus(name, _join(train_docs), _join(eval_docs), digest.hexdigest())


def load_corpus(path=None, eval_fraction=0.1, tests=True):
    """The built-in corpus (path None: the Python standard library's source, with its test
    folders unless tests=False) or a text file or folder of text files. Folders split by
    file; a single file by position (its last eval_fraction is held out). Raises ValueError
    naming the path when it is missing, empty or binary."""
    if path is None:
        root, files = stdlib_files(tests)
        name = "python-stdlib" if tests else "python-stdlib-no-tests"
    else:
        root = pathlib.Path(path)
        name = str(path)
        if not root.exists():
            raise ValueError(f"--corpus {path}: no such file or folder")
        if root.is_file():
            data = _read_text(root)
            if not data.strip():
                raise ValueError(f"--corpus {path}: the file is empty")
            cut = int(len(data) * (1 - eval_fraction))
            train, held = _join([data[:cut]]), _join([data[cut:]])
            return Corpus(name, train, held, hashlib.sha256(data).hexdigest())
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    docs = {str(f.relative_to(root)): _read_text(f) for f in files}
    return _split(name, docs, eval_fraction, f"--corpus {path}")


def random_crops(stream, n, n_ctx, rng, bos_first=False):
    """n random windows of n_ctx tokens from a token stream -> (n, n_ctx) int64; with
    bos_first, BOS and n_ctx - 1 tokens of the stream (every window begins like a document, as
    the evaluators' sequences do: a first position every head can rest its attention on)."""
    if len(stream) < n_ctx + 1:
        raise ValueError(f"corpus: {len(stream)} tokens is shorter than n_ctx={n_ctx}")
    width = n_ctx - 1 if bos_first else n_ctx
    starts = rng.integers(0, len(stream) - width + 1, size=n)
    crops = stream[starts[:, None] + np.arange(width)].astype(np.int64)
    return np.concatenate([np.full((n, 1), BOS), crops], axis=1) if bos_first else crops


def repeat_spans(windows, fraction, rng, min_length=None):
    """In a `fraction` of the windows (rows), copy one span of the window's own text to a
    later place in it, as natural text repeats a phrase or a name. Span length is uniform in
    [n_ctx/8, n_ctx/2]. windows (B, n_ctx) int64 -> the same array, changed in place."""
    B, n_ctx = windows.shape
    chosen = np.flatnonzero(rng.random(B) < fraction)
    for row in chosen:
        length = int(rng.integers(min_length or max(1, n_ctx // 8), n_ctx // 2 + 1))
        source = int(rng.integers(0, n_ctx - 2 * length + 1))
        target = int(rng.integers(source + length, n_ctx - length + 1))
        windows[row, target:target + length] = windows[row, source:source + length]
    return windows


def random_repeat_windows(windows, fraction, rng, segment=(8, 64), d_vocab=256):
    """Replace a `fraction` of the windows (rows) by BOS + a segment of random tokens repeated
    to fill the window: text where only induction lowers the loss. windows (B, n_ctx) int64
    -> the same array, changed in place."""
    B, n_ctx = windows.shape
    for row in np.flatnonzero(rng.random(B) < fraction):
        length = int(rng.integers(segment[0], segment[1] + 1))
        seg = rng.integers(1, d_vocab, length)
        windows[row, 0] = BOS
        windows[row, 1:] = np.resize(seg, n_ctx - 1)
    return windows


def eval_set(corpus, n, n_ctx, seed, bos_first=False):
    """The fixed eval set: n windows of the held-out split, drawn once with its own seed (laid
    out as the training windows are: bos_first)."""
    return random_crops(corpus.eval, n, n_ctx, np.random.default_rng(seed), bos_first)


def repeated_ngram_share(windows, n, skip=64):
    """How much an induction head could use: the share of tokens, past the first `skip` of
    each window, that end an n-gram already seen earlier in the same window. windows (N, T)."""
    hits = total = 0
    for row in np.asarray(windows):
        seen = set()
        for i in range(n - 1, len(row)):
            gram = tuple(row[i - n + 1:i + 1].tolist())
            if i >= skip:
                total += 1
                hits += gram in seen
            seen.add(gram)
    return hits / max(total, 1)


def candidate_tokens(token_counts, drop_fraction=0.1, min_share=1e-5):
    """Tokens for the evaluators' random sequences (paper, head activation evaluators: random
    tokens without the most and least common): the tokens that make up at least `min_share`
    of the corpus (BOS aside), without the most and the least common drop_fraction of them.

    The floor is ours. In the paper's 50k-token BPE vocabulary even its rare tokens were seen
    thousands of times; in a byte vocabulary the rare tokens are UTF-8 continuation bytes seen
    a few dozen times in a whole run, whose embeddings barely leave their initialisation, so a
    sequence of them tests the embeddings, not the head. On the stdlib corpus the floor keeps
    the ~100 bytes of the text's alphabet (80 after the 10% drops). With no counts, every
    token but BOS."""
    if token_counts is None:
        return None
    counts = np.asarray(token_counts).copy()
    counts[BOS] = 0
    seen = np.flatnonzero(counts >= max(1, counts.sum() * min_share))
    ranked = seen[np.argsort(-counts[seen], kind="stable")]
    drop = int(len(ranked) * drop_fraction)
    return np.sort(ranked[drop: len(ranked) - drop])


# ---- synthetic corpora, for lessons and tests ---------------------------------------------

def repeated_segments_corpus(n_docs=2000, segment=(8, 32), repeats=(2, 4), d_vocab=256, seed=0,
                             eval_fraction=0.1):
    """Documents that are a random segment of random tokens (1..d_vocab-1) repeated a few
    times: the purest induction task (only copying what came before lowers the loss)."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        length = rng.integers(segment[0], segment[1] + 1)
        seg = rng.integers(1, d_vocab, length).astype(np.uint8).tobytes()
        docs.append(seg * int(rng.integers(repeats[0], repeats[1] + 1)))
    n_eval = max(1, int(n_docs * eval_fraction))
    digest = hashlib.sha256(repr(("repeated", n_docs, segment, repeats, d_vocab, seed)).encode())
    return Corpus("synthetic:repeated", _join(docs[n_eval:]), _join(docs[:n_eval]), digest.hexdigest())


TEMPLATE_WORDS = {
    "month": ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"],
    "animal": ["cat", "dog", "horse", "eagle", "whale", "tiger", "rabbit", "snake", "camel",
               "zebra", "otter", "goose"],
    "color": ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "brown",
              "pink", "gray", "gold"],
    "fruit": ["apple", "pear", "plum", "mango", "cherry", "grape", "lemon", "peach", "banana",
              "melon", "kiwi", "fig"],
}


def template_corpus(n_docs=2000, lines=(6, 12), seed=0, eval_fraction=0.1):
    """The paper's Argument 4 task: each document lists lines 'category: word'; within a
    document each category is bound to one word, so after the first line of a category the
    word after ':' is predictable only from context."""
    rng = np.random.default_rng(seed)
    cats = sorted(TEMPLATE_WORDS)
    docs = []
    for _ in range(n_docs):
        binding = {c: TEMPLATE_WORDS[c][rng.integers(len(TEMPLATE_WORDS[c]))] for c in cats}
        n_lines = rng.integers(lines[0], lines[1] + 1)
        text = "".join(f"{c}: {binding[c]}\n" for c in rng.choice(cats, n_lines))
        docs.append(text.encode())
    n_eval = max(1, int(n_docs * eval_fraction))
    digest = hashlib.sha256(repr(("template", n_docs, lines, seed)).encode())
    return Corpus("synthetic:template", _join(docs[n_eval:]), _join(docs[:n_eval]), digest.hexdigest())


def describe(corpus):
    return (f"{corpus.name}: {len(corpus.train):,} train / {len(corpus.eval):,} eval tokens, "
            f"sha256 {corpus.sha256[:12]}")


def corpus_from_spec(spec):
    """'stdlib' (default: the standard library with its tests) | 'stdlib-no-tests' |
    'pydocs' (the prose of Python's documentation) | 'synthetic:repeated' |
    'synthetic:template' | a path."""
    if spec in (None, "", "stdlib"):
        return load_corpus(None)
    if spec == "pydocs":
        return pydocs_corpus()
    if spec == "stdlib-no-tests":
        return load_corpus(None, tests=False)
    if spec == "synthetic:repeated":
        return repeated_segments_corpus()
    if spec == "synthetic:template":
        return template_corpus()
    return load_corpus(os.path.expanduser(spec))
