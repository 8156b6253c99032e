"""Every per-head score of one snapshot, on one fixed sample, and the one classification of
heads. circuits.heads, circuits.eigen, experiments.measure (the report's cached
measurements), experiments.phase_change (what `make train-2l` prints) and the exercises all
read a HeadScores, so two tools never disagree about a head.

The sample, HEAD_SAMPLE (the same for every model and snapshot):
  prefix matching   10 examples of BOS + 25 distinct random tokens repeated 4 times, seed 0
                    (25 -> (n_ctx - 1) // 4 when the context is shorter)
  copying           10 examples of BOS + 25 distinct random tokens, seed 0 (25 -> n_ctx - 1)
  random tokens     from the run's corpus without its most and least common tokens
                    (minitransformer.data.candidate_tokens of run.token_counts); from every
                    token but BOS when that leaves too few for one sequence, or without counts
  previous token    the first 16 sequences of the run's fixed eval set
It is what experiments.measure caches (its measurements since version 1).

The scores, (n_layers, n_heads) each, NaN where undefined:
  prefix_matching, copying, previous_token   the head activation evaluators (evaluators.py)
  copying_paper                      the copying score in the paper's own form (chance -0.846)
  ov_copying, qk_positivity          eigenvalue scores of the full OV and QK circuits
  prev_token_qk_trace(_normalised)   the Id (x) h_prev (x) W trace (and / ||W||_F), each
                                     earlier head weighted by its previous_token score
  k_composition, k_composition_partner   the strongest K-composition with an earlier head
                                     and that head ("l.h"; NaN and "" in layer 0)
  classes                            classify_heads, the one rule below

Classes. The paper defines an induction head as one that prefix-matches and copies, and
publishes no cut-offs; these are ours:
  "induction"       prefix_matching >= 0.3 and copying >= 0.5
  "previous-token"  else previous_token >= 0.4
  "other"           else. A NaN score never reaches a threshold.
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from minitransformer.data import candidate_tokens

from .evaluators import copying_scores, prefix_matching_score, previous_token_score
from .weights import (composition_baseline, composition_scores, ov_copying_score,
                      prev_token_qk_trace, qk_positivity_score)

PREFIX_MATCHING_THRESHOLD = 0.3   # about 8x a uniform head's score on BOS + 25 x 4 (~0.04)
COPYING_THRESHOLD = 0.5           # the attended token raised 3x as much as an average other
PREVIOUS_TOKEN_THRESHOLD = 0.4    # mean attention on the i-1 diagonal (uniform: ~ln(T)/T)
CLASS_RULE = (f"induction if prefix >= {PREFIX_MATCHING_THRESHOLD} and copying >= "
              f"{COPYING_THRESHOLD}, else previous-token if prev_tok >= {PREVIOUS_TOKEN_THRESHOLD}")


@dataclass(frozen=True)
class HeadSample:
    """The sample every per-head score is measured on (the module's text says why)."""
    n_examples: int = 10     # random sequences for prefix matching and for copying
    length: int = 25         # distinct random tokens in each
    repeats: int = 4         # prefix matching's copies of them
    seed: int = 0
    n_previous: int = 16     # eval sequences for the previous-token score


HEAD_SAMPLE = HeadSample()


def classify_heads(prefix_matching, copying, previous_token):
    """Each head's class from its evaluator scores (L,H): "induction", "previous-token" or
    "other" by the thresholds above; NaN scores never pass. -> (L,H) array of str."""
    prefix_matching, copying, previous_token = (np.nan_to_num(np.asarray(x, dtype=float), nan=-np.inf)
                                                for x in (prefix_matching, copying, previous_token))
    return np.where((prefix_matching >= PREFIX_MATCHING_THRESHOLD) & (copying >= COPYING_THRESHOLD),
                    "induction", np.where(previous_token >= PREVIOUS_TOKEN_THRESHOLD,
                                          "previous-token", "other"))


def sample_counts(config, token_counts):
    """The token counts the random sequences are drawn with: `token_counts` when its
    candidate tokens fill the longer (copying) sequence at this n_ctx, else None (every
    token but BOS)."""
    pool = candidate_tokens(token_counts)
    needed = min(HEAD_SAMPLE.length, config.n_ctx - 1)
    return token_counts if pool is not None and len(pool) >= needed else None


def _read_only(x):
    x = np.asarray(x)
    x.setflags(write=False)
    return x


class HeadScores:
    """Every per-head score of one model on HEAD_SAMPLE, (L,H) each. A score is computed
    when it is first read and kept, read-only; the classes need only the three evaluators,
    the weight-based scores no forward pass beyond the previous-token one."""

    def __init__(self, model, text, token_counts=None):
        """model: a minitransformer Model; text (N,T): the text of the previous-token score
        (its first n_previous sequences); token_counts (V,): the corpus's, for the random
        tokens (None: every token but BOS)."""
        self.model = model
        self.text = np.asarray(text)[:HEAD_SAMPLE.n_previous]
        self.token_counts = sample_counts(model.config, token_counts)

    @classmethod
    def of_run(cls, run, step=None):
        """The scores of a run's snapshot `step` (None: its latest weights)."""
        return cls(run.model(step), run.eval_tokens, run.token_counts)

    @cached_property
    def prefix_matching(self):
        s = HEAD_SAMPLE
        return _read_only(prefix_matching_score(self.model, s.n_examples, s.length, s.repeats,
                                                self.token_counts, s.seed))

    @cached_property
    def _copying(self):
        s = HEAD_SAMPLE
        return tuple(map(_read_only, copying_scores(self.model, s.n_examples, s.length,
                                                    self.token_counts, s.seed)))

    @property
    def copying(self):
        return self._copying[0]

    @property
    def copying_paper(self):
        """The paper's form of the copying score (evaluators.copying_scores): chance -0.846."""
        return self._copying[1]

    @cached_property
    def previous_token(self):
        return _read_only(previous_token_score(self.model, self.text))

    @cached_property
    def classes(self):
        return _read_only(classify_heads(self.prefix_matching, self.copying, self.previous_token))

    @cached_property
    def ov_copying(self):
        return _read_only(ov_copying_score(self.model))

    @cached_property
    def qk_positivity(self):
        return _read_only(qk_positivity_score(self.model))

    @cached_property
    def _trace(self):
        return tuple(map(_read_only, prev_token_qk_trace(self.model, self.previous_token)))

    @property
    def prev_token_qk_trace(self):
        return self._trace[0]

    @property
    def prev_token_qk_trace_normalised(self):
        return self._trace[1]

    @cached_property
    def _k_composition(self):
        """(best score (L,H), its earlier head "l.h" (L,H)) over the K-composition scores."""
        K = composition_scores(self.model)["K"]                        # (L,H,L,H)
        L, H = K.shape[:2]
        score, partner = np.full((L, H), np.nan), np.full((L, H), "", dtype=object)
        for layer in range(1, L):
            for head in range(H):
                earlier = K[layer, head, :layer]                         # (layer, H)
                if not np.isnan(earlier).all():
                    best = np.unravel_index(np.nanargmax(earlier), earlier.shape)
                    score[layer, head], partner[layer, head] = earlier[best], f"{best[0]}.{best[1]}"
        return _read_only(score), _read_only(partner.astype(str))

    @property
    def k_composition(self):
        return self._k_composition[0]

    @property
    def k_composition_partner(self):
        return self._k_composition[1]

    @property
    def k_composition_baseline(self):
        """What a K-composition score reads against: two random matrices' (a float)."""
        return composition_baseline(self.model.config.d_model, self.model.config.d_head)
