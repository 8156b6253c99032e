"""Exercise 11: build an induction circuit by hand (set the weights) and watch it copy.

Paper: "Key Concepts: Induction Heads" ("the first attention head copies information from
the previous token into each token ... the second head searches for a previous place where
the present token A occurred and attends to the next token B, copying it") and Argument 5.
If you can write the weights yourself, you understand the circuit.

What to build: a 2-layer attention-only model (one head per layer, no LayerNorm, Shortformer
positions: W_pos is added to the query and key inputs only) whose residual stream has four
one-hot subspaces, each a block of coordinates:

    TOKEN [0, V)          the present token          written by W_E         (given)
    POS   [V, V + P)      the position               added by W_pos          (given)
    PREV  [V + P, 2V + P) the previous token         written by head 0.0     (yours)
    OUT   [2V + P, 3V + P) the predicted next token  written by head 1.0, read by W_U (given)

Head 0.0 (previous-token head): the query at position i must score key i - 1 highest (a
score of `big` against 0, from the positions alone); it copies the key's TOKEN into PREV
(weight 1).
Head 1.0 (induction head): the query's TOKEN must match the key's PREV (score `big` when
equal, 0 otherwise); it copies the key's TOKEN into OUT (weight 1), where W_U turns it into
a logit.

Shapes: W_Q, W_K, W_V of a head are (D, E), W_O (E, D); here D = 3V + P and d_head
E = max(V, P), so a head's E coordinates can index a token or a position.

The score is (x_i W_Q) . (x_j W_K) / sqrt(E), and `big` is given. The checks compare each
head's two circuits, W_Q W_K^T and W_V W_O (D x D), with those of
circuits.handmade.induction_model, which builds the same circuit, and say which head,
which circuit and which subspaces are wrong; then they run your model. So does the run: it
says WRONG where yours differs.

Run: python -m exercises.ex11_handmade_induction    Check: make exercise N=11
Hints, one step at a time: python -m exercises.hint 11 (then --step 2, --step 3)
"""
import numpy as np

from circuits import induction_model, ov_circuit, qk_circuit, repeated_random_tokens
from exercises import common
from minitransformer import Model
from minitransformer.config import ModelConfig
from minitransformer.params import param_shapes


def second_copy_accuracy(model, tokens, length):
    """How often the argmax prediction is right, on the first and the second copy (given)."""
    predictions = model.forward(tokens).argmax(-1)[:, :-1]          # (N, T-1): for token i+1
    right = predictions == tokens[:, 1:]
    return float(right[:, 1:length].mean()), float(right[:, length + 1:].mean())


def build_induction_model(d_vocab=32, n_ctx=64, sharpness=20.0, logit_scale=10.0):
    """-> a float64 Model predicting [A][B] ... [A] -> [B] with hand-set weights."""
    V, P = d_vocab, n_ctx
    TOKEN, POS, PREV, OUT = 0, V, V + P, 2 * V + P
    config = ModelConfig(n_layers=2, d_model=3 * V + P, n_heads=1, d_head=max(V, P),
                         n_ctx=P, d_vocab=V, attn_only=True, normalization_type=None,
                         positional_embedding_type="shortformer")
    p = {name: np.zeros(shape) for name, shape in param_shapes(config).items()}
    tokens, positions = np.arange(V), np.arange(P)
    p["embed.W_E"][tokens, TOKEN + tokens] = 1.0                   # token t -> TOKEN + t
    p["pos_embed.W_pos"][positions, POS + positions] = 1.0         # position i -> POS + i
    p["unembed.W_U"][OUT + tokens, tokens] = logit_scale           # OUT + t -> logit of t
    big = sharpness * np.sqrt(config.d_head)     # the score after the 1/sqrt(E) is `sharpness`
    W_Q0, W_K0, W_V0, W_O0 = (p[f"blocks.0.attn.{n}"][0] for n in ("W_Q", "W_K", "W_V", "W_O"))
    W_Q1, W_K1, W_V1, W_O1 = (p[f"blocks.1.attn.{n}"][0] for n in ("W_Q", "W_K", "W_V", "W_O"))
    # (views: writing W_Q0[...] sets the model's weights)
    # BEGIN SOLUTION: head 0.0, the previous-token head (QK on POS, OV from TOKEN to PREV)
    # Hint 1: a head's E coordinates are a meeting place: the score is big exactly when the
    #   query and the key land on the same coordinate. Which subspace tells a query where
    #   it is, and which key it wants? For the OV circuit: from which subspace does it copy,
    #   and into which?
    # Hint 2: send query position i to coordinate i (the query side carries big), and key
    #   position j to the coordinate of the query that should pick it, j + 1; the last
    #   position is no query's previous one (and coordinate P does not exist when E = P).
    #   The OV circuit is a copy, weight 1: W_V takes TOKEN + t to coordinate t, W_O takes
    #   coordinate t to PREV + t.
    # Hint 3: for each position i, `W_Q0[POS + i, i] = big` and, if `i + 1 < P`,
    #   `W_K0[POS + i, i + 1] = 1.0`; for each token t, `W_V0[TOKEN + t, t] = 1.0` and
    #   `W_O0[t, PREV + t] = 1.0`.
    for i in positions:
        W_Q0[POS + i, i] = big                   # query position i -> coordinate i
        if i + 1 < P:
            W_K0[POS + i, i + 1] = 1.0           # key position j -> coordinate j + 1
    for t in tokens:
        W_V0[TOKEN + t, t] = 1.0
        W_O0[t, PREV + t] = 1.0
    # END SOLUTION
    # BEGIN SOLUTION: head 1.0, the induction head (QK TOKEN against PREV, OV from TOKEN to OUT)
    # Hint 1: the same meeting place, a coordinate per token. At the B after an earlier A,
    #   which subspace holds A, the token the present query holds? And which token should
    #   the OV circuit copy, the key's own or its previous one?
    # Hint 2: coordinate t for token t: the query reads its TOKEN (carrying big), the key
    #   reads its PREV, where head 0.0 wrote the token before it. The OV circuit copies the
    #   key's own TOKEN, weight 1, into OUT, the subspace W_U reads.
    # Hint 3: for each token t, `W_Q1[TOKEN + t, t] = big`, `W_K1[PREV + t, t] = 1.0`,
    #   `W_V1[TOKEN + t, t] = 1.0` and `W_O1[t, OUT + t] = 1.0`.
    for t in tokens:
        W_Q1[TOKEN + t, t] = big                 # the present token t...
        W_K1[PREV + t, t] = 1.0                  # ...meets keys whose previous token was t
        W_V1[TOKEN + t, t] = 1.0
        W_O1[t, OUT + t] = 1.0                   # and copies the key's own token to OUT
    # END SOLUTION
    return Model(config, params=p, dtype=np.float64)


if __name__ == "__main__":
    plt = common.pyplot()
    model = build_induction_model()
    length = 20
    tokens = repeated_random_tokens(16, length, 3, d_vocab=32, seed=0)
    first, later = second_copy_accuracy(model, tokens, length)
    print(f"next-token accuracy: first copy {first:.2f} (chance ~ 1/31), later copies {later:.2f}")
    wrong = []
    if not later > 0.99:
        wrong.append(f"the later copies are predicted {later:.0%} of the time, not ~100%")
    if not first < 0.5:
        wrong.append(f"the first copy is predicted {first:.0%} of the time: random tokens "
                     f"cannot be predicted before they repeat")
    engine = induction_model()                          # the same circuit, built by circuits
    for layer, head in ((0, "previous-token head"), (1, "induction head")):
        for name, circuit in (("QK", qk_circuit), ("OV", ov_circuit)):
            gap = np.abs(circuit(model, layer).AB - circuit(engine, layer).AB).max()
            if gap > 1e-9:
                wrong.append(f"head {layer}.0's {name} circuit ({head}) differs from "
                             f"circuits.induction_model's by up to {gap:.3g}")
    for text in wrong:
        print(f"WRONG: {text}")
    if not wrong:
        print("ok     it copies, and its four circuits are circuits.induction_model's")
    _, cache = model.run_with_cache(tokens)
    losses = model.per_token_loss(tokens).mean(0)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for layer, ax in enumerate(axes[:2]):
        ax.imshow(cache[f"blocks.{layer}.attn.hook_pattern"][0, 0], cmap="Blues")
        ax.set(title=f"head {layer}.0 ({'previous token' if layer == 0 else 'induction'})",
               xlabel="key position", ylabel="query position")
    axes[2].plot(np.arange(1, tokens.shape[1]), losses)
    axes[2].set(xlabel="position", ylabel="loss (nats)", title="loss falls to ~0 after one copy")
    common.save(fig, "ex11_handmade_induction")
