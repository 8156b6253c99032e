"""Ops: pure forward/backward pairs. A forward returns (out, cache); its backward takes
(dout, cache) and returns the input and parameter gradients. No op keeps state.

Dimension letters used in every shape comment:
B batch, T positions, D d_model, H heads, E d_head, M d_mlp, V d_vocab.
"""
from .embedding import embed_forward, embed_backward
from .layernorm import layernorm_forward, layernorm_backward
from .linear import linear_forward, linear_backward
from .mlp import (mlp_forward, mlp_backward, mlp_forward_by_sequence, gelu_new_forward,
                  gelu_new_backward)
from .attention import (attention_forward, attention_backward, smear_forward, smear_backward,
                        softmax_forward, softmax_backward)
from .loss import cross_entropy_forward, cross_entropy_backward, per_token_cross_entropy
