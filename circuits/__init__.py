"""circuits: the paper's analyses of attention heads, from the weights (QK/OV circuits,
eigenvalues, composition) and from activations (head evaluators, ablations, activation
patching, in circuits.patching: a command too, so imported from there); every per-head
score of a snapshot on one sample, and the one classification, in circuits.scores; the
in-context-learning score in circuits.icl."""
from .ablation import (AblationLosses, ablation_logits, ablation_losses, every_head, icl_change,
                       loss_projection)
from .evaluators import (copying_score, copying_scores, prefix_matching_score, previous_token_attention,
                         previous_token_score, repeated_random_tokens)
from .factored import FactoredMatrix
from .handmade import induction_model
from .icl import context_indices, icl_score, index_window, loss_at_index
from .paths import attention_score_terms, logit_path_terms, path_name, sum_terms
from .scores import HEAD_SAMPLE, HeadScores, classify_heads
from .weights import (composition_baseline, composition_scores, full_ov_circuit, full_qk_circuit,
                      ov_circuit, ov_copying_score, prev_token_qk_trace, qk_circuit,
                      qk_positivity_score)

__all__ = ["AblationLosses", "ablation_logits", "ablation_losses", "every_head", "icl_change",
           "loss_projection",
           "copying_score", "copying_scores", "prefix_matching_score", "previous_token_attention",
           "previous_token_score", "repeated_random_tokens",
           "FactoredMatrix", "induction_model",
           "context_indices", "icl_score", "index_window", "loss_at_index",
           "attention_score_terms", "logit_path_terms", "path_name", "sum_terms",
           "HEAD_SAMPLE", "HeadScores", "classify_heads",
           "composition_baseline", "composition_scores", "full_ov_circuit", "full_qk_circuit",
           "ov_circuit", "ov_copying_score", "prev_token_qk_trace", "qk_circuit",
           "qk_positivity_score"]
