"""Exercise 11: the hand-set model must copy; when it does not, the test says which head
(and which circuit of it) is wrong."""
import numpy as np
import pytest

from circuits import repeated_random_tokens
from exercises.harness import fail, load

ex = load("ex11_handmade_induction")


@pytest.mark.checks("build_induction_model")
@pytest.mark.parametrize("d_vocab,n_ctx", [(32, 64), (12, 30)])
def test_the_circuit_copies(d_vocab, n_ctx):
    model = ex.build_induction_model(d_vocab=d_vocab, n_ctx=n_ctx)
    length = min(d_vocab - 1, (n_ctx - 1) // 2)
    tokens = repeated_random_tokens(6, length, 2, d_vocab=d_vocab, seed=0)
    V, P = d_vocab, n_ctx
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
             "PREV: its OV circuit must take TOKEN + t to PREV + t (through W_V then W_O)")
    induction = cache["blocks.1.attn.hook_pattern"][:, 0]
    stripe = np.diagonal(induction, -(length - 1), axis1=-2, axis2=-1)[:, 2:].mean()
    if not stripe > 0.95:
        fail(f"head 1.0 puts only {stripe:.2f} of its attention on the token after the "
             f"present token's earlier occurrence (should be ~1): its query must read TOKEN "
             f"and its key PREV, coordinate t for token t")
    first, later = ex.second_copy_accuracy(model, tokens, length)
    if not later > 0.99:
        fail(f"both attention patterns are right, but the second copy is predicted only "
             f"{later:.0%} of the time: head 1.0's OV circuit must take TOKEN + t to OUT + t")
    if not first < 0.5:
        fail(f"the first copy is predicted {first:.0%} of the time: random tokens should be "
             f"unpredictable before they repeat; is something reading the answer ahead?")
