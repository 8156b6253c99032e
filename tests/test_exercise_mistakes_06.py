"""Exercise 06's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference prefix_matching_score with one thing wrong (the key's token offset:
the earlier occurrence itself, not the token after it; positions one off, BOS forgotten;
only one earlier copy; the wrong count to divide by); the exercise's own checks
(exercises/test_06_prefix_matching.py) are run on it and must fail with a message that names
the problem. The mistaken variants are near copies of the solution, which the students'
tests must not hold: they live here (test_06 held one, mistaken(), before)."""
import numpy as np
import pytest

import exercises.test_06_prefix_matching as checks
from exercises.solutions import ex06_prefix_matching as solution
import mistakes  # noqa: E402  (tests/mistakes.py)


with_mistake, failure_of = mistakes.bound(checks, solution)


def score(after=1, bos=1, copies="every", divide="queries", reduce="sum", examples="mean",
          out="layer, head"):
    """prefix_matching_score with one thing done otherwise."""
    def prefix_matching_score(model, tokens, length, repeats):
        pairs = [(bos + r * length + j, bos + m * length + j + after)
                 for r in range(1, repeats) for j in range(length)
                 for m in {"every": range(r), "before": [r - 1], "first": [0]}[copies]]
        queries, keys = np.array(pairs).T
        count = {"queries": (repeats - 1) * length, "pairs": len(pairs), "none": 1}[divide]
        _, cache = model.run_with_cache(tokens)
        scores = np.zeros((model.config.n_layers, model.config.n_heads))
        for layer in range(model.config.n_layers):
            p = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, queries, keys]
            if reduce == "mean over copies":
                copy_of = (queries - bos) // length
                p = p / copy_of
            summed = p.sum(-1)
            scores[layer] = (summed.mean(0) if examples == "mean" else summed[0]
                             if examples == "first" else summed.sum(0)) / count
        return scores.T if out == "head, layer" else scores
    return prefix_matching_score


READ = checks.test_reads_the_entries_the_engine_reads
LIBRARY = checks.test_matches_the_library
ONE = checks.test_the_hand_built_head_scores_one


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    READ()
    for which in checks.MODELS:
        LIBRARY(which)
    ONE()


def test_the_stand_in_variant_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake(prefix_matching_score=score()))
    READ()
    LIBRARY("a random 2-layer model")


MISTAKES = {
    "the earlier occurrence": (score(after=0), ["key one token before the right one",
                                                "the earlier occurrence of the query's own "
                                                "token", "the token after it"]),
    "two after": (score(after=2), ["key one token after the right one"]),
    "BOS forgotten": (score(bos=0), ["queries and keys are all one position early",
                                     "BOS takes position 0"]),
    "only the copy before": (score(copies="before"), ["leaves out earlier copies",
                                                      "for query 7 (copy 2, token 0)",
                                                      "not copy 0, token 1"]),
    "only the first copy": (score(copies="first"), ["leaves out earlier copies",
                                                    "for query 7 (copy 2, token 0)",
                                                    "not copy 1, token 1"]),
    "divided by pairs": (score(divide="pairs"), ["right entries",
                                                 "divided by the number of (query, key) pairs"]),
    "not divided": (score(divide="none"), ["a sum over the queries, not a mean"]),
    "mean over earlier copies": (score(reduce="mean over copies"),
                                 ["averages over the earlier occurrences", "in full"]),
    "first example only": (score(examples="first"), ["counts only the first example"]),
    "summed over examples": (score(examples="sum"), ["a sum over the examples"]),
    "heads and layers swapped": (score(out="head, layer"), ["layers and heads swapped"]),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_named(monkeypatch, mistake):
    variant, says = MISTAKES[mistake]
    message = failure_of(monkeypatch, READ, prefix_matching_score=variant)
    assert "differs from circuits.prefix_matching_score" in message, message
    for phrase in says:
        assert phrase in message, f"{mistake}: {phrase!r} not in: {message}"


@pytest.mark.parametrize("mistake", [m for m in MISTAKES if m != "heads and layers swapped"])
def test_each_mistake_also_fails_on_the_random_model_naming_it(monkeypatch, mistake):
    variant, says = MISTAKES[mistake]
    message = failure_of(monkeypatch, LIBRARY, "a random 2-layer model",
                         prefix_matching_score=variant)
    assert "differs from circuits.prefix_matching_score" in message, message
    assert says[0] in message, message


def test_swapped_layers_and_heads_fail_on_the_random_model_by_shape(monkeypatch):
    message = failure_of(monkeypatch, LIBRARY, "a random 2-layer model",
                         prefix_matching_score=score(out="head, layer"))
    assert "yours has shape (3, 2), expected (2, 3)" in message, message


def test_no_message_gives_the_formula(monkeypatch):
    for mistake, (variant, _) in MISTAKES.items():
        message = failure_of(monkeypatch, READ, prefix_matching_score=variant)
        for formula in ("r length", "r * length", "m * length", "j + 1", "(repeats - 1)",
                        "sum(-1)", "mean(0)"):
            assert formula not in message, f"{mistake}: the message gives {formula!r}: {message}"
