"""Exercise 06: prefix matching against circuits.prefix_matching_score, on a pattern made to be
read, on a hand-built induction model (known answer) and on a random model (every head near
chance).

The pattern made to be read: BOS + 3 tokens x 4 (13 positions), and a stand-in model of 13
layers of 13 heads whose head h of layer l holds one entry, (query l, key h). Your score of
head l.h is then the weight your prefix matching puts on that entry, and a failure names the
entries yours weighs otherwise than the engine: the key one token off (the earlier
occurrence itself, not the token after it), positions one off, earlier copies left out, the
wrong count to divide by. Examples weigh 1, 3 and 5, so that a lost example shows.

For the teacher: circuits.prefix_matching_score is this exercise's answer in the engine; the
checks here hold no copy of it."""
import types

import numpy as np
import pytest

from circuits import induction_model, prefix_matching_score, repeated_random_tokens
from exercises.harness import check_close, check_shape, fail, load
from minitransformer import Model

ex = load("ex06_prefix_matching")

LENGTH, REPEATS = 3, 4
T = 1 + LENGTH * REPEATS
WEIGHTS = np.array([1.0, 3.0, 5.0])              # example n's entries


class OneEntryHeads:
    """A stand-in model: T layers of T heads, head h of layer l attending from query l to key
    h only (with weight WEIGHTS[n] in example n), whatever the tokens."""

    def __init__(self):
        self.config = types.SimpleNamespace(n_layers=T, n_heads=T, n_ctx=T, d_vocab=64)
        self.cache = {}
        for layer in range(T):
            pattern = np.zeros((len(WEIGHTS), T, T, T))
            pattern[:, np.arange(T), layer, np.arange(T)] = WEIGHTS[:, None]
            self.cache[f"blocks.{layer}.attn.hook_pattern"] = pattern

    def run_with_cache(self, tokens, hooks=None):
        return None, {name: value.copy() for name, value in self.cache.items()}


def place(position):
    """Position -> 'copy r, position j' (BOS at 0)."""
    if position == 0:
        return "BOS"
    r, j = divmod(position - 1, LENGTH)
    return f"copy {r}, token {j}"


def keys_of(weights, query):
    return [int(k) for k in np.flatnonzero(np.abs(weights[query]) > 1e-12)]


def what_differs(yours, expected):
    """In words: which (query, key) entries yours weighs otherwise than the engine."""
    mine = np.abs(yours) > 1e-12
    right = np.abs(expected) > 1e-12
    if not mine.any():
        return "yours weighs no entry at all"
    if np.allclose(yours, expected.T, rtol=1e-9):
        return "yours has layers and heads swapped: scores[layer, head]"
    if (mine == right).all():
        ratio = yours[right] / expected[right]
        if np.allclose(ratio, ratio[0], rtol=1e-9):
            c = ratio[0]
            n_queries, n_pairs = (REPEATS - 1) * LENGTH, LENGTH * REPEATS * (REPEATS - 1) // 2
            for value, says in [(n_queries / n_pairs, "is divided by the number of (query, key) "
                                                      "pairs, not by the number of queries: a "
                                                      "token's attention to each of its "
                                                      "earlier occurrences counts"),
                                (n_queries, "is a sum over the queries, not a mean"),
                                (len(WEIGHTS), "is a sum over the examples, not a mean"),
                                (WEIGHTS[0] / WEIGHTS.mean(), "counts only the first example: "
                                                              "average over every example")]:
                if abs(c - value) < 1e-9 * value:
                    return f"yours reads the right entries, but {says}"
            return f"yours reads the right entries, but {c:.4g} times too much"
        copies = (np.argwhere(right)[:, 0] - 1) // LENGTH
        if np.allclose(ratio, 1.0 / copies, rtol=1e-9):
            return ("yours averages over the earlier occurrences of a token: a token of copy r "
                    "has r of them, and its attention to every one counts in full (their sum)")
        return "yours reads the right entries, but weighs them otherwise"
    if (np.roll(mine, 1, axis=1)[:, 1:] == right[:, 1:]).all() and not mine[:, -1].any():
        return ("yours reads the key one token before the right one: the earlier occurrence of "
                "the query's own token; prefix matching is attention to the token after it")
    if (np.roll(mine, -1, axis=1) == right).all():
        return ("yours reads the key one token after the right one: two after the earlier "
                "occurrence of the query's token")
    if (np.roll(mine, (1, 1), axis=(0, 1))[1:, 1:] == right[1:, 1:]).all():
        return ("your queries and keys are all one position early: BOS takes position 0, "
                "so the first copy starts at position 1")
    if (mine <= right).all():
        left_out = np.argwhere(right & ~mine)
        q, k = left_out[0]
        kept = [place(key) for key in keys_of(yours, q)]
        return (f"yours leaves out earlier copies: for query {q} ({place(q)}) it reads only "
                f"{', '.join(kept) or 'nothing'}, not {place(k)}; prefix matching counts the "
                f"token after every earlier occurrence")
    for q in range(T):
        if set(keys_of(yours, q)) != set(keys_of(expected, q)):
            return (f"for query {q} ({place(q)}) yours reads keys {keys_of(yours, q)}, prefix "
                    f"matching {keys_of(expected, q)}: the token after each earlier occurrence "
                    f"of the query's token")
    return ""


def misreading():
    """What yours reads otherwise than the engine, from the one-entry heads ('' if nothing)."""
    model = OneEntryHeads()
    tokens = repeated_random_tokens(len(WEIGHTS), LENGTH, REPEATS, None, 64, seed=0)
    yours = np.asarray(ex.prefix_matching_score(model, tokens, LENGTH, REPEATS),
                       dtype=np.float64)
    if yours.shape != (T, T):
        return ""
    expected = prefix_matching_score(model, n_examples=len(WEIGHTS), length=LENGTH,
                                     repeats=REPEATS)
    if np.allclose(yours, expected, rtol=1e-9, atol=1e-12):
        return ""
    return what_differs(yours, expected)


@pytest.mark.checks("prefix_matching_score")
def test_reads_the_entries_the_engine_reads():
    model = OneEntryHeads()
    tokens = repeated_random_tokens(len(WEIGHTS), LENGTH, REPEATS, None, 64, seed=0)
    yours = ex.prefix_matching_score(model, tokens, LENGTH, REPEATS)
    check_shape("prefix_matching_score", yours, (T, T), "(n_layers, n_heads)")
    said = misreading()
    if said:
        fail(f"prefix_matching_score on a stand-in whose heads each attend from one query to "
             f"one key (BOS + {LENGTH} tokens x {REPEATS}) differs from "
             f"circuits.prefix_matching_score: {said}")


MODELS = {"the hand-built induction model": lambda: induction_model(d_vocab=32, n_ctx=64),
          "a random 2-layer model": lambda: Model(dict(n_layers=2, d_model=32, n_heads=3,
                                                       d_head=8, n_ctx=64, d_vocab=64,
                                                       attn_only=True, initializer_range=0.5),
                                                  seed=1)}


@pytest.mark.checks("prefix_matching_score")
@pytest.mark.parametrize("which", MODELS)
def test_matches_the_library(which):
    model = MODELS[which]()
    length, repeats = 15, 4
    tokens = repeated_random_tokens(10, length, repeats, None, model.config.d_vocab, seed=0)
    yours = ex.prefix_matching_score(model, tokens, length, repeats)
    check_shape("prefix_matching_score", yours,
                (model.config.n_layers, model.config.n_heads), "(n_layers, n_heads)")
    expected = prefix_matching_score(model, 10, length, repeats, seed=0)
    if not np.allclose(yours, expected, rtol=1e-5, atol=1e-6):
        check_close(f"prefix-matching scores on {which} (entry = (layer, head))", yours,
                    expected, "circuits.prefix_matching_score", rtol=1e-5, atol=1e-6,
                    hint=misreading())


@pytest.mark.checks("prefix_matching_score")
def test_the_hand_built_head_scores_one():
    model = induction_model(d_vocab=32, n_ctx=64)
    tokens = repeated_random_tokens(5, 15, 4, None, 32, seed=2)
    scores = np.asarray(ex.prefix_matching_score(model, tokens, 15, 4))
    if not (scores[1, 0] > 0.95 and scores[0, 0] < 0.1):
        fail(f"the hand-built induction head 1.0 should score ~1 and the previous-token head "
             f"0.0 ~0; yours gives {scores[1, 0]:.2f} and {scores[0, 0]:.2f}")
