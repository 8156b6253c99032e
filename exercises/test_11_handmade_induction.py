"""Exercise 11: each head's two circuits, W_Q W_K^T and W_V W_O (D x D, read by
circuits.qk_circuit and circuits.ov_circuit), against those of circuits.induction_model;
then the model must copy. A failure names the head, the circuit, and the subspaces and
offsets it gets wrong (TOKEN, POS, PREV, OUT, as in the exercise), never the weights.

Two sizes, V = 32 with P = 64 (d_head E = P) and V = 40 with P = 24 (E = V), so that no
block of the residual stream has the size of another and E equals only one of V and P: a
token index used for a position, or a loop over the wrong range, lands in the wrong place or
off the end. The copying check runs on 6 sequences at once.

For the teacher: circuits.induction_model (circuits/handmade.py) builds the same circuit:
the engine holds this exercise's answer, and the checks compare with it."""
import numpy as np
import pytest

from circuits import induction_model, ov_circuit, qk_circuit, repeated_random_tokens
from exercises.harness import fail, load

ex = load("ex11_handmade_induction")

SIZES = [(32, 64), (40, 24)]


def build(V, P):
    """The student's model; an index off the end of a block is named."""
    E = max(V, P)
    try:
        return ex.build_induction_model(d_vocab=V, n_ctx=P)
    except IndexError as error:
        fail(f"build_induction_model raised IndexError ({error}) with V = {V}, P = {P}: "
             f"W_Q, W_K, W_V are (D, E) = ({3 * V + P}, {E}) and W_O ({E}, {3 * V + P}), so a "
             f"head has E = max(V, P) = {E} coordinates. Is a coordinate past the last one, or "
             f"a row past the end of a block? The last position, P - 1, is no query's "
             f"previous position")


# ---- reading a D x D circuit in the subspaces' terms ----------------------------------------

def subspaces(V, P):
    return [("TOKEN", 0, V), ("POS", V, P), ("PREV", V + P, V), ("OUT", 2 * V + P, V)]


def locate(index, V, P):
    """A residual coordinate -> (subspace, index within it)."""
    for name, start, size in subspaces(V, P):
        if start <= index < start + size:
            return name, index - start
    raise IndexError(index)


def groups(matrix, V, P):
    """The non-zero entries of a D x D circuit, grouped: {(row subspace, column subspace,
    column index - row index): [(row index, column index, value), ...]}."""
    found = {}
    for r, c in np.argwhere(np.abs(matrix) > 1e-9):
        (rs, ri), (cs, ci) = locate(r, V, P), locate(c, V, P)
        found.setdefault((rs, cs, ci - ri), []).append((ri, ci, float(matrix[r, c])))
    return found


def index_name(subspace):
    return "position" if subspace == "POS" else "token"


def entry(kind, rs, ri, cs, ci):
    if kind == "QK":
        return f"query {rs} {index_name(rs)} {ri} against key {cs} {index_name(cs)} {ci}"
    return f"{rs} {index_name(rs)} {ri} into {cs} {index_name(cs)} {ci}"


def pattern(kind, rs, cs, offset):
    """One group in words: 'query position i against key position i - 1', 'TOKEN token t
    into PREV token t'."""
    letter = "i" if rs == "POS" else "t"
    shifted = letter + (f" {'+' if offset > 0 else '-'} {abs(offset)}" if offset else "")
    if kind == "QK":
        return (f"the query's {rs} {index_name(rs)} {letter} against the key's {cs} "
                f"{index_name(cs)} {shifted}")
    return f"{rs} {index_name(rs)} {letter} into {cs} {index_name(cs)} {shifted}"


# what a wrong subspace means: (head, circuit, side, subspace) -> why it is wrong
CONSEQUENCES = {
    (0, "QK", "query", "TOKEN"): "the previous-token head finds the previous position from POS "
                                 "alone, whatever the tokens are",
    (0, "QK", "key", "TOKEN"): "the previous-token head finds the previous position from POS "
                               "alone, whatever the tokens are",
    (0, "QK", "query", "PREV"): "PREV is empty when head 0.0 runs: head 0.0 is what writes it",
    (0, "QK", "key", "PREV"): "PREV is empty when head 0.0 runs: head 0.0 is what writes it",
    (0, "OV", "reads", "POS"): "it must copy the key's token, not its position",
    (0, "OV", "reads", "PREV"): "PREV is empty when head 0.0 runs: head 0.0 is what writes it",
    (0, "OV", "writes", "TOKEN"): "head 1.0 would read it as the present token; it looks for "
                                  "the previous token in PREV",
    (0, "OV", "writes", "OUT"): "W_U would read it as a prediction; head 1.0 looks for the "
                                "previous token in PREV",
    (0, "OV", "writes", "POS"): "head 1.0 looks for the previous token in PREV",
    (1, "QK", "key", "TOKEN"): "matching the key's own token finds the earlier A itself, not "
                               "the B after it; the key must read the token before it, which "
                               "head 0.0 wrote",
    (1, "QK", "query", "PREV"): "the query's PREV holds the token before the present one; the "
                                "present token, A, is in its TOKEN",
    (1, "QK", "query", "POS"): "the induction head matches tokens, whatever their positions",
    (1, "QK", "key", "POS"): "the induction head matches tokens, whatever their positions",
    (1, "OV", "reads", "PREV"): "the key's previous token is A, the present token; the token to "
                                "predict is the key's own, B",
    (1, "OV", "reads", "POS"): "it must copy the key's token, not its position",
    (1, "OV", "writes", "PREV"): "W_U reads only OUT",
    (1, "OV", "writes", "TOKEN"): "W_U reads only OUT",
    (1, "OV", "writes", "POS"): "W_U reads only OUT",
}


def wrong_block(layer, kind, block, right):
    """Why `block` (row subspace, column subspace) is wrong where `right` is the one the
    exercise's head uses."""
    if block == right[::-1] and block != right:
        return ("query and key are swapped" if kind == "QK"
                else "it copies the other way round, from where it should write")
    sides = ("query", "key") if kind == "QK" else ("reads", "writes")
    for side, mine, theirs in zip(sides, block, right):
        if mine != theirs:
            return CONSEQUENCES.get((layer, kind, side, mine), "")
    return ""


def circuit_problem(layer, kind, yours, expected, V, P):
    """What is wrong with head `layer`.0's `kind` ("QK" or "OV") circuit, in words, or None."""
    largest = np.abs(expected).max()
    if np.allclose(yours, expected, rtol=1e-9, atol=1e-9 * largest):
        return None
    head = f"head {layer}.0's {kind} circuit ({'W_Q W_K^T' if kind == 'QK' else 'W_V W_O'})"
    verb = "scores" if kind == "QK" else "copies"
    mine, theirs = groups(yours, V, P), groups(expected, V, P)
    if not mine:
        return f"{head} is all zeros: nothing is set"
    blocks = lambda found: {(rs, cs) for rs, cs, _ in found}
    extra = sorted(blocks(mine) - blocks(theirs), key=lambda b: -len(
        [1 for g in mine if g[:2] == b for _ in mine[g]]))
    if extra:
        rs, cs = extra[0]
        offset = max((g for g in mine if g[:2] == (rs, cs)), key=lambda g: len(mine[g]))[2]
        right = sorted(blocks(theirs))[0]                 # each head uses one block
        text = (f"{head} {verb} {pattern(kind, rs, cs, offset)}, where the exercise's head "
                f"{layer}.0 " + (f"scores the query's {right[0]} against the key's {right[1]}"
                                 if kind == "QK" else f"copies from {right[0]} into {right[1]}"))
        because = wrong_block(layer, kind, (rs, cs), right)
        return text + (f": {because}" if because else "")
    for block in sorted(blocks(theirs)):
        mine_here = {g: v for g, v in mine.items() if g[:2] == block}
        theirs_here = {g: v for g, v in theirs.items() if g[:2] == block}
        offsets_mine = {g[2] for g in mine_here}
        offsets_theirs = {g[2] for g in theirs_here}
        rs, cs = block
        if offsets_mine != offsets_theirs:
            right = next(iter(offsets_theirs))                # one offset per head's block
            offset = max((g for g in mine_here if g[2] != right),
                         key=lambda g: len(mine_here[g]))[2]
            if right in offsets_mine:
                text = (f"{head} {verb} {pattern(kind, rs, cs, right)}, but also "
                        f"{pattern(kind, rs, cs, offset)}")
            else:
                text = (f"{head} {verb} {pattern(kind, rs, cs, offset)}; it must be "
                        f"{pattern(kind, rs, cs, right)}")
            if layer == 0 and kind == "QK" and offset == 0:
                text += ": each query picks itself"
            elif layer == 0 and kind == "QK" and offset > 0:
                text += ": a later key, which the causal mask hides"
            elif abs(offset - right) == 1:
                text += f": one {index_name(rs)} off"
            return text
        places = lambda found: {(ri, ci): v for g in found.values() for ri, ci, v in g}
        at_mine, at_theirs = places(mine_here), places(theirs_here)
        lost = sorted(set(at_theirs) - set(at_mine))
        if lost:
            ri, ci = lost[-1]
            return (f"{head} has {len(at_mine)} entries of {pattern(kind, rs, cs, ci - ri)}, "
                    f"where there are {len(at_theirs)}: {entry(kind, rs, ri, cs, ci)} is "
                    f"missing. Does the loop run over every {index_name(rs)}?")
        added = sorted(set(at_mine) - set(at_theirs))
        if added:
            ri, ci = added[0]
            return (f"{head} has {entry(kind, rs, ri, cs, ci)}, which is none of "
                    f"{pattern(kind, rs, cs, ci - ri)}'s entries")
        for place, value in at_mine.items():
            target = at_theirs[place]
            if not np.isclose(value, target, rtol=1e-9):
                ri, ci = place
                text = (f"{head} {verb} {entry(kind, rs, ri, cs, ci)} with {value:.4g}, where "
                        f"the exercise's has {target:.4g}")
                if kind == "QK" and np.isclose(value, target ** 2, rtol=1e-6):
                    text += ": big is on both sides, query and key, so the score is big squared"
                elif kind == "QK" and value > 2 * target:
                    text += (f": {value / target:.3g} times as much. Is big on both sides, "
                             f"query and key?")
                elif kind == "QK" and value > 0 and value < target:
                    text += (": after the 1/sqrt(E) scale the matching key scores only "
                             f"{value / np.sqrt(max(V, P)):.3g} above the others, and the "
                             f"attention spreads over many keys. Is big used?")
                elif value < 0 < target:
                    text += ": the sign is flipped"
                return text
    return f"{head} differs from circuits.induction_model's"


def check_head(layer, V, P):
    model, engine = build(V, P), induction_model(d_vocab=V, n_ctx=P)
    for kind, circuit in (("QK", qk_circuit), ("OV", ov_circuit)):
        problem = circuit_problem(layer, kind, circuit(model, layer).AB[0],
                                  circuit(engine, layer).AB[0], V, P)
        if problem:
            fail(f"V = {V}, P = {P}: {problem}")


@pytest.mark.checks("build_induction_model")
@pytest.mark.parametrize("V, P", SIZES)
def test_the_previous_token_head_circuits(V, P):
    check_head(0, V, P)


@pytest.mark.checks("build_induction_model")
@pytest.mark.parametrize("V, P", SIZES)
def test_the_induction_head_circuits(V, P):
    check_head(1, V, P)


# ---- the model copies ----------------------------------------------------------------------

@pytest.mark.checks("build_induction_model")
@pytest.mark.parametrize("V, P", SIZES)
def test_the_circuit_copies(V, P):
    model = build(V, P)
    length = min(V - 1, (P - 1) // 2)
    tokens = repeated_random_tokens(6, length, 2, d_vocab=V, seed=0)
    PREV = V + P
    _, cache = model.run_with_cache(tokens)
    prev_pattern = cache["blocks.0.attn.hook_pattern"][:, 0]
    on_previous = np.diagonal(prev_pattern, -1, axis1=-2, axis2=-1).mean()
    if not on_previous > 0.95:
        fail(f"head 0.0 puts only {on_previous:.2f} of its attention on the previous position "
             f"(should be ~1): its QK circuit must score key j = i - 1 highest for query i, "
             f"from POS alone")
    written = cache["blocks.0.attn.hook_result"][:, 1:, 0, PREV:PREV + V]    # (N, T-1, V)
    if not (written.argmax(-1) == tokens[:, :-1]).all() or written.max() < 0.5:
        fail("head 0.0 attends to the previous token but does not write that token into "
             "PREV: its OV circuit must copy TOKEN into PREV")
    induction = cache["blocks.1.attn.hook_pattern"][:, 0]
    stripe = np.diagonal(induction, -(length - 1), axis1=-2, axis2=-1)[:, 2:].mean()
    if not stripe > 0.95:
        fail(f"head 1.0 puts only {stripe:.2f} of its attention on the token after the "
             f"present token's earlier occurrence (should be ~1): its query must read TOKEN "
             f"and its key PREV, coordinate t for token t")
    first, later = ex.second_copy_accuracy(model, tokens, length)
    if not later > 0.99:
        fail(f"both attention patterns are right, but the second copy is predicted only "
             f"{later:.0%} of the time: head 1.0's OV circuit must copy the key's TOKEN into "
             f"OUT")
    if not first < 0.5:
        fail(f"the first copy is predicted {first:.0%} of the time: random tokens should be "
             f"unpredictable before they repeat; is something reading the answer ahead?")
