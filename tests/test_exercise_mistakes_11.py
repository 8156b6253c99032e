"""Exercise 11's checks catch the typical mistakes, and say which (teacher-only): each mistake
below is the reference build_induction_model with one of its eight matrices set otherwise;
the exercise's own checks (exercises/test_11_handmade_induction.py) are run on it and must
fail with a message that names the head, the circuit and the problem."""
import numpy as np
import pytest

import exercises.test_11_handmade_induction as checks
from exercises.solutions import ex11_handmade_induction as solution
import mistakes  # noqa: E402  (tests/mistakes.py)
from minitransformer import Model


with_mistake, failure_of = mistakes.bound(checks, solution)


def mistaken(edit):
    """build_induction_model whose weights `edit(w, V, P, big)` changes: w holds the eight
    matrices of the two heads ("Q0", "K0", "V0", "O0", "Q1", ...), (D, E) or (E, D)."""
    def build_induction_model(d_vocab=32, n_ctx=64, sharpness=20.0, logit_scale=10.0):
        model = solution.build_induction_model(d_vocab, n_ctx, sharpness, logit_scale)
        p = {k: np.array(v) for k, v in model.params.items()}
        w = {f"{n[-1]}{layer}": p[f"blocks.{layer}.attn.W_{n[-1]}"][0]
             for layer in (0, 1) for n in ("W_Q", "W_K", "W_V", "W_O")}
        edit(w, d_vocab, n_ctx, sharpness * np.sqrt(model.config.d_head))
        return Model(model.config, params=p, dtype=np.float64)
    return build_induction_model


def blocks(V, P):
    return {name: start for name, start, _ in checks.subspaces(V, P)}


def key_to(offset):
    """Head 0.0's key position j -> coordinate j + offset (the right one is + 1)."""
    def edit(w, V, P, big):
        POS = blocks(V, P)["POS"]
        w["K0"][:] = 0
        for j in range(P):
            if 0 <= j + offset < P:
                w["K0"][POS + j, j + offset] = 1.0
    return edit


def head0_on_tokens(w, V, P, big):
    b = blocks(V, P)
    w["Q0"][:], w["K0"][:] = 0, 0
    for t in range(V):
        w["Q0"][b["TOKEN"] + t, t] = big
        w["K0"][b["TOKEN"] + t, t] = 1.0


def scale(name, factor):
    """Matrix `name` times `factor` ("big": the given big)."""
    def edit(w, V, P, big):
        w[name] *= big if factor == "big" else factor
    return edit


def move(name, src, dst, axis):
    """Matrix `name` reads (axis 0) or writes (axis 1) subspace `dst` where it used `src`
    (index k of one to index k of the other)."""
    def edit(w, V, P, big):
        b, size = blocks(V, P), {"TOKEN": V, "POS": P, "PREV": V, "OUT": V}
        n = min(size[src], size[dst])
        m = np.moveaxis(w[name], axis, 0)                      # a view: rows are `axis`
        part = m[b[src]:b[src] + size[src]].copy()
        m[b[src]:b[src] + size[src]] = 0
        m[b[dst]:b[dst] + n] = part[:n]
    return edit


def one_on(name, block, axis):
    """Matrix `name`'s entries in `block` moved one index on (t -> t + 1, mod V) along
    `axis`: a copy or a match one token off."""
    def edit(w, V, P, big):
        start = blocks(V, P)[block]
        m = np.moveaxis(w[name], axis, 0)
        m[start:start + V] = np.roll(m[start:start + V].copy(), 1, axis=0)
    return edit


def swap_query_key(layer):
    def edit(w, V, P, big):
        q, k = w[f"Q{layer}"].copy(), w[f"K{layer}"].copy()
        w[f"Q{layer}"][:], w[f"K{layer}"][:] = k * big, q / big
    return edit


def also_itself(w, V, P, big):
    """Head 0.0's key j at coordinate j as well as j + 1: the query scores itself too."""
    POS = blocks(V, P)["POS"]
    for j in range(P):
        w["K0"][POS + j, j] = 1.0


def last_query_missing(w, V, P, big):
    POS = blocks(V, P)["POS"]
    w["Q0"][POS + P - 1] = 0


def test_the_solution_passes(monkeypatch):
    monkeypatch.setattr(checks, "ex", with_mistake())
    for V, P in checks.SIZES:
        checks.test_the_previous_token_head_circuits(V, P)
        checks.test_the_induction_head_circuits(V, P)
        checks.test_the_circuit_copies(V, P)


def test_the_key_loop_without_its_guard_is_named(monkeypatch):
    """Key position P - 1 sent to coordinate P: an IndexError where E = P."""
    def unguarded(d_vocab=32, n_ctx=64, sharpness=20.0, logit_scale=10.0):
        model = solution.build_induction_model(d_vocab, n_ctx, sharpness, logit_scale)
        W_K0 = np.array(model.params["blocks.0.attn.W_K"][0])
        W_K0[d_vocab + n_ctx - 1, n_ctx] = 1.0                  # past the end when E = P
        return model
    message = failure_of(monkeypatch, checks.test_the_previous_token_head_circuits, 32, 64,
                         build_induction_model=unguarded)
    assert "raised IndexError" in message and "no query's previous position" in message, message


QK0, OV0, QK1, OV1 = ("head 0.0's QK circuit (W_Q W_K^T)", "head 0.0's OV circuit (W_V W_O)",
                      "head 1.0's QK circuit (W_Q W_K^T)", "head 1.0's OV circuit (W_V W_O)")

HEAD_0 = [
    (key_to(0), [QK0, "key's POS position i;", "key's POS position i - 1",
                 "each query picks itself"]),
    (key_to(-1), [QK0, "key's POS position i + 1", "a later key, which the causal mask hides"]),
    (key_to(2), [QK0, "key's POS position i - 2", "one position off"]),
    (also_itself, [QK0, "key's POS position i - 1, but also the query's POS position i "
                        "against the key's POS position i", "each query picks itself"]),
    (head0_on_tokens, [f"{QK0} scores the query's TOKEN token t against the key's TOKEN "
                       f"token t", "from POS alone"]),
    (scale("Q0", 1 / 160), [QK0, "with 1, where the exercise's has 160", "Is big used?"]),
    (scale("K0", "big"), [QK0, "big is on both sides"]),
    (scale("Q0", -1), [QK0, "the sign is flipped"]),
    (last_query_missing, [f"{QK0} has 62 entries", "where there are 63",
                          "query POS position 63 against key POS position 62 is missing",
                          "every position"]),
    (move("O0", "PREV", "TOKEN", 1), [f"{OV0} copies TOKEN token t into TOKEN token t",
                                      "copies from TOKEN into PREV",
                                      "head 1.0 would read it as the present token"]),
    (move("O0", "PREV", "OUT", 1), [f"{OV0} copies TOKEN token t into OUT",
                                    "head 1.0 looks for the previous token in PREV"]),
    (move("V0", "TOKEN", "POS", 0), [f"{OV0} copies POS position i into PREV",
                                     "not its position"]),
    (one_on("O0", "PREV", 1), [f"{OV0} copies TOKEN token t into PREV token t + 1",
                               "one token off"]),
    (scale("V0", 2.0), [f"{OV0} copies", "with 2, where the exercise's has 1"]),
]


HEAD_0_IDS = ["key is itself", "later key", "two back", "itself too", "on tokens", "no big",
              "big twice", "sign", "last query", "writes TOKEN", "writes OUT",
              "copies position", "copy one off", "weight 2"]


@pytest.mark.parametrize("edit, says", HEAD_0, ids=HEAD_0_IDS)
def test_previous_token_head_mistakes_are_named(monkeypatch, edit, says):
    message = failure_of(monkeypatch, checks.test_the_previous_token_head_circuits, 32, 64,
                         build_induction_model=mistaken(edit))
    for phrase in says:
        assert phrase in message, message


HEAD_1 = [
    (move("K1", "PREV", "TOKEN", 0), [f"{QK1} scores the query's TOKEN token t against the "
                                      f"key's TOKEN token t",
                                      "finds the earlier A itself, not the B after it"]),
    (move("Q1", "TOKEN", "PREV", 0), [f"{QK1} scores the query's PREV",
                                      "the present token, A, is in its TOKEN"]),
    (swap_query_key(1), [f"{QK1} scores the query's PREV token t against the key's TOKEN "
                         f"token t", "query and key are swapped"]),
    (scale("Q1", 1 / 160), [QK1, "Is big used?"]),
    (one_on("K1", "PREV", 0), [QK1, "key's PREV token t + 1", "one token off"]),
    (move("V1", "TOKEN", "PREV", 0), [f"{OV1} copies PREV token t into OUT",
                                      "the key's previous token is A"]),
    (move("O1", "OUT", "PREV", 1), [f"{OV1} copies TOKEN token t into PREV",
                                    "W_U reads only OUT"]),
    (move("O1", "OUT", "TOKEN", 1), [f"{OV1} copies TOKEN token t into TOKEN",
                                     "W_U reads only OUT"]),
    (one_on("V1", "TOKEN", 0), [OV1, "one token off"]),
]


HEAD_1_IDS = ["key reads TOKEN", "query reads PREV", "query and key swapped", "no big",
              "match one off", "copies PREV", "writes PREV", "writes TOKEN", "copy one off"]


@pytest.mark.parametrize("edit, says", HEAD_1, ids=HEAD_1_IDS)
def test_induction_head_mistakes_are_named(monkeypatch, edit, says):
    message = failure_of(monkeypatch, checks.test_the_induction_head_circuits, 32, 64,
                         build_induction_model=mistaken(edit))
    for phrase in says:
        assert phrase in message, message


SEEN_ONLY_IN_THE_CIRCUITS = {"big twice", "weight 2", "last query"}


@pytest.mark.parametrize("edit", [edit for edit, name in zip(
    [edit for edit, _ in HEAD_0 + HEAD_1], HEAD_0_IDS + HEAD_1_IDS)
    if name not in SEEN_ONLY_IN_THE_CIRCUITS])
def test_mistakes_that_break_the_circuit_also_fail_when_it_runs(monkeypatch, edit):
    """The run itself fails too, except where the model still copies (big on both sides, a
    copy of weight 2) or the mistake is at a position the run does not reach (the last
    query): only the circuit checks see those."""
    failure_of(monkeypatch, checks.test_the_circuit_copies, 32, 64,
               build_induction_model=mistaken(edit))


def test_the_other_size_names_mistakes_too(monkeypatch):
    """V = 40, P = 24 (E = V): the same messages."""
    message = failure_of(monkeypatch, checks.test_the_previous_token_head_circuits, 40, 24,
                         build_induction_model=mistaken(key_to(0)))
    assert "V = 40, P = 24" in message and "each query picks itself" in message, message
