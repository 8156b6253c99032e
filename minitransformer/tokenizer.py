"""Tokenizers: bytes (the default) or a byte-level BPE learned from a corpus's training split.

    python -m minitransformer.tokenizer --corpus stdlib --vocab 2048

Bytes need nothing: token = byte, vocabulary 256, BOS = byte 0. A BPE vocabulary is learned
with Hugging Face `tokenizers` (GPT-2's byte-level pre-tokenizer, every byte in the initial
alphabet so any text encodes, `<|bos|>` at id 0 so BOS means the same in both), from the
training split only, and cached: the vocabulary and the encoded corpus go to the cache folder
(MINITRANSFORMER_CACHE, default ~/.cache/minitransformer) named by the corpus's hash and the
vocabulary size. A run stores its tokenizer's JSON, so it loads and decodes without the cache
or the corpus.
"""
import argparse
import hashlib
import os
import pathlib
import sys
from dataclasses import dataclass, replace

import numpy as np

from .data import BOS, _join
from .io import atomic_write, atomic_write_text, error

BOS_TEXT = "<|bos|>"
ESCAPES = {9: "\\t", 10: "\\n", 13: "\\r"}
MAX_VOCAB = 65_536           # token ids are stored as uint16


def parse_spec(spec):
    """'bytes' -> 256; 'bpe:N' -> N (257 <= N <= 65536). Anything else: a one-line error."""
    if spec == "bytes":
        return 256
    kind, _, size = str(spec).partition(":")
    if kind == "bpe" and size.isdigit() and 257 <= int(size) <= MAX_VOCAB:
        return int(size)
    raise ValueError(f"tokenizer: {spec!r} is not 'bytes' or 'bpe:N' with 257 <= N <= {MAX_VOCAB}")


@dataclass(frozen=True)
class Tokenizer:
    """spec 'bytes' or 'bpe:N'; hf_json the BPE's Hugging Face JSON ('' for bytes)."""
    spec: str = "bytes"
    hf_json: str = ""

    @property
    def sha256(self):
        return hashlib.sha256(self.hf_json.encode()).hexdigest() if self.hf_json else "bytes"

    @property
    def vocab_size(self):
        return 256 if not self.hf_json else self._hf.get_vocab_size()

    @property
    def _hf(self):
        hf = self.__dict__.get("_hf_cache")
        if hf is None:
            hf = _hf_tokenizers().Tokenizer.from_str(self.hf_json)
            object.__setattr__(self, "_hf_cache", hf)
        return hf

    def encode(self, text):
        """str or UTF-8 bytes -> (n,) int64 token ids, no BOS."""
        data = text.encode() if isinstance(text, str) else bytes(text)
        if not self.hf_json:
            return np.frombuffer(data, np.uint8).astype(np.int64)
        return np.array(self._hf.encode(data.decode("utf-8")).ids, dtype=np.int64)

    def encode_documents(self, docs):
        """[bytes] -> one uint16 stream, each document preceded by BOS (data._join's layout)."""
        if not self.hf_json:
            return _join(docs).astype(np.uint16)
        encoded = self._hf.encode_batch([d.decode("utf-8") for d in docs])
        return np.concatenate([np.array([BOS] + e.ids, dtype=np.uint16) for e in encoded])

    def decode(self, ids):
        """token ids -> text (BOS dropped; a byte sequence that is not UTF-8 shows as U+FFFD)."""
        ids = [int(i) for i in ids if int(i) != BOS]
        if not self.hf_json:
            return bytes(ids).decode("utf-8", errors="replace")
        return self._hf.decode(ids)

    def label(self, token):
        """How one token is shown: BOS; printable text as itself; a newline, tab or other byte
        as its escape ("\\n", "\\xe9"); a BPE token as the text it decodes to, escaped alike."""
        token = int(token)
        if token == BOS:
            return "BOS"
        if not self.hf_json:
            return chr(token) if 32 <= token < 127 else ESCAPES.get(token, f"\\x{token:02x}")
        text = self._hf.decode([token])
        return "".join(c if c.isprintable() else ESCAPES.get(ord(c), f"\\x{ord(c):02x}")
                       for c in text) or f"#{token}"


BYTES = Tokenizer()


def from_run(spec, stored_json, where):
    """The tokenizer a run names (spec) from its stored JSON; where: the file, for errors."""
    parse_spec(spec)
    if spec == "bytes":
        return BYTES
    if not stored_json:
        raise ValueError(f"{where}: key 'tokenizer' is missing; the run was trained with "
                         f"tokenizer {spec} and must store it")
    try:
        tok = Tokenizer(spec, stored_json)
        tok.vocab_size
    except Exception as e:    # tokenizers raises its own exception types
        raise ValueError(f"{where}: key 'tokenizer' is not a tokenizers JSON "
                         f"({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None
    return tok


def cache_folder():
    return pathlib.Path(os.environ.get("MINITRANSFORMER_CACHE")
                        or pathlib.Path.home() / ".cache" / "minitransformer")


def documents(stream):
    """A joined stream (data._join: BOS before each document) -> [bytes], the documents."""
    data = np.asarray(stream).astype(np.uint8).tobytes()
    return data.split(bytes([BOS]))[1:]


def _hf_tokenizers():
    """The HF `tokenizers` package (the `bpe` extra), or a one-line error saying how to get it."""
    try:
        import tokenizers
    except ImportError:
        raise ValueError("tokenizer bpe:N: needs the `tokenizers` package; pip install "
                         "'minitransformer[bpe]' (or '.[bpe]' in a checkout)") from None
    return tokenizers


def train_bpe(docs, vocab_size):
    """A byte-level BPE of vocab_size tokens learned from docs ([bytes]) -> its JSON."""
    tk = _hf_tokenizers()
    HF, decoders, models, pre_tokenizers, trainers = (tk.Tokenizer, tk.decoders, tk.models,
                                                      tk.pre_tokenizers, tk.trainers)
    hf = HF(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS_TEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator((d.decode("utf-8") for d in docs), trainer=trainer)
    return hf.to_str()


def tokenize(corpus, spec, stored=None):
    """A byte corpus (data.Corpus) -> (the same corpus in `spec`'s tokens, the Tokenizer).
    The BPE is learned from the training split, or `stored` (a run's Tokenizer) is used; the
    vocabulary and the encoded splits are cached, named by the corpus hash and the spec."""
    vocab = parse_spec(spec)
    if spec == "bytes":
        return corpus, BYTES
    if corpus.name.startswith("synthetic:"):
        raise ValueError(f"tokenizer {spec}: learned from text; {corpus.name} is random tokens, "
                         f"use tokenizer=bytes")
    base = cache_folder() / f"{corpus.sha256[:16]}-bpe{vocab}"
    vocab_file, ids_file = base.with_suffix(".json"), base.with_suffix(".npz")
    if stored is not None:
        tok = stored
    elif vocab_file.exists():
        tok = Tokenizer(spec, vocab_file.read_text())
    else:
        tok = Tokenizer(spec, train_bpe(documents(corpus.train), vocab))
        atomic_write_text(vocab_file, tok.hf_json)
    splits = _cached_ids(ids_file, tok)
    if splits is None:
        splits = {name: tok.encode_documents(documents(getattr(corpus, name)))
                  for name in ("train", "eval")}
        atomic_write(ids_file, lambda f: np.savez(f, tokenizer=np.array(tok.sha256), **splits))
    return replace(corpus, train=splits["train"], eval=splits["eval"]), tok


def _cached_ids(path, tok):
    """The cached encoded splits if they were made with this tokenizer, else None."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["tokenizer"]) == tok.sha256:
                return {"train": f["train"], "eval": f["eval"]}
    except (OSError, KeyError, ValueError):
        pass
    return None


def main(argv=None):
    from .data import corpus_from_spec, describe, eval_set, repeated_ngram_share
    parser = argparse.ArgumentParser(description="Learn (or read from the cache) a BPE "
                                     "vocabulary of a corpus and show how it splits text.")
    parser.add_argument("--corpus", default="stdlib", help="as for minitransformer.train")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (default 2048)")
    args = parser.parse_args(argv)
    try:
        corpus = corpus_from_spec(args.corpus)
        tokens, tok = tokenize(corpus, f"bpe:{args.vocab}")
        windows = [eval_set(c, 200, 256, 1234) for c in (corpus, tokens)]
    except ValueError as e:
        return error(e)
    print(describe(corpus))
    print(f"bpe:{args.vocab}: {tok.vocab_size} tokens, sha256 {tok.sha256[:12]}, cached in "
          f"{cache_folder()}")
    for name in ("train", "eval"):
        print(f"  {name}: {len(getattr(tokens, name)):,} tokens, "
              f"{len(getattr(corpus, name)) / len(getattr(tokens, name)):.2f} bytes per token")
    print("  repeats an induction head could use (eval windows of 256 tokens, past token 64): "
          f"{repeated_ngram_share(windows[0], 8):.1%} of bytes end an 8-byte string seen earlier "
          f"in the window; {repeated_ngram_share(windows[1], 3):.1%} of BPE tokens end a 3-token one")
    sample = tokens.eval[1:25]
    print("  eval text as tokens: " + " | ".join(tok.label(t) for t in sample))
    return 0


if __name__ == "__main__":
    sys.exit(main())
