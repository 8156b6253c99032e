"""The paper's claims as checks (experiments.claims) on fake models whose answers are known."""
from types import SimpleNamespace

import numpy as np

from experiments import claims
from experiments.timeseries import LossBump


def _model(name, n_layers=2, window=(3e6, 5e6), share_in=0.8, share_after=0.05, overlap=1.0,
           bump=LossBump(0.02, 2.5e6, 0.002, 0.005, True), heads=("1.0",), final=-0.3):
    stats = SimpleNamespace(share_in_window=share_in, share_after=share_after,
                            change_after=-share_after * 0.3, icl_before=-0.05, icl_after=-0.29,
                            icl_start=0.0, icl_final=final, co_occurrence=overlap,
                            icl_window_anywhere=window, bump=bump)
    return SimpleNamespace(name=name, measurements=SimpleNamespace(n_layers=n_layers), icl_window=window,
                           prefix_rise=window, stats=stats, induction_heads=list(heads),
                           icl=np.array([0.0, final]), shares={"induction heads": 0.9},
                           heads=SimpleNamespace(share=np.array([[0.8, 0.1], [0.9, 0.0]])))


def _verdicts(models):
    return {statement.split(": ", 1)[1]: holds for statement, _, holds in claims.checks(models)}


def test_a_model_like_the_papers_passes_every_claim():
    verdicts = _verdicts({"attn-only-2l": _model("attn-only-2l")})
    assert len(verdicts) == 7 and all(verdicts.values()), verdicts


def test_each_claim_fails_on_its_own_counterexample():
    cases = {"over 75% of the ICL score's fall inside the window": dict(share_in=0.6),
             "the ICL score constant after the window (under 10% of its fall after it)":
                 dict(share_after=-0.3),                          # a rise after it is no constant
             "a loss bump (departure from convexity above noise) at the window":
                 dict(bump=LossBump(0.004, 2.5e6, 0.002, 0.005, False)),
             "the steepest ICL fall anywhere co-occurs with the prefix-matching rise":
                 dict(overlap=0.3),
             "an abrupt ICL window, induction heads in the last layer": dict(heads=("0.1",))}
    for claim, change in cases.items():
        verdicts = _verdicts({"attn-only-2l": _model("attn-only-2l", **change)})
        assert not verdicts[claim] and sum(not v for v in verdicts.values()) == 1, (claim, verdicts)


def test_a_bump_far_from_the_window_is_not_the_papers():
    near = _model("x", bump=LossBump(0.02, 1.5e6, 0.002, 0.005, True))        # one window-width before
    far = _model("x", bump=LossBump(0.02, 8e6, 0.002, 0.005, True))           # after the window
    assert claims.bump_near_window(near) and not claims.bump_near_window(far)
    assert not claims.bump_near_window(_model("x", window=None))


def test_the_one_layer_model_has_no_window_no_head_no_bump():
    flat = _model("attn-only-1l", n_layers=1, window=None, heads=(), final=0.01,
                  bump=LossBump(0.003, 1e6, 0.002, 0.005, False))
    verdicts = _verdicts({"attn-only-1l": flat})
    assert verdicts == {"no phase change, no induction head, ICL flat (|final| < 0.1)": True,
                        "no loss bump": True}
    bumpy = _model("attn-only-1l", n_layers=1, window=None, heads=(), final=0.01)
    assert not _verdicts({"attn-only-1l": bumpy})["no loss bump"]
