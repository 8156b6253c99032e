"""How sharp each run's phase change is, one markdown row per run, for
docs/phase-change-search.md:

    python -m experiments.levers runs/lever/base-s0 runs/lever/bpe2048-s0 ...

Reads each run's phase_change.json (written by `python -m experiments.phase_change RUN`) and
its run.npz: the best layer>=1 head's prefix matching, the 10%->90% rise as a ratio of its
end to its start in tokens and as a share of the run (a rise whose 90% point is the last
snapshot is marked: it is cut by the end of the run, not finished), the share of the ICL score's fall
inside that rise, the ICL score at the end, the final eval loss (per token and, to compare
tokenizers, per byte of text) and the training time.
"""
import argparse
import json
import sys

import numpy as np

from minitransformer.data import BOS
from minitransformer.io import error
from minitransformer.runs import Run

from .timeseries import rise_ratio, rise_share

HEADER = ("| run | tokenizer | best later-layer head: prefix matching | rise 10% -> 90% | x in tokens "
          "| share of run | ICL fall inside the rise | ICL score end | final eval loss, nats/token (nats/byte) | train time |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def bytes_per_token(run):
    """UTF-8 bytes per token of the run's eval set (BOS not counted as a token of text)."""
    text = sum(len(run.tokenizer.decode(w).encode()) for w in run.eval_tokens)
    return text / max(1, int((run.eval_tokens != BOS).sum()))


def row(path):
    run = Run(path)
    again = f"python -m experiments.phase_change {run.dir}"
    try:
        a = json.loads((run.dir / "phase_change.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{run.dir / 'phase_change.json'}: unreadable ({e}); run {again} first") from None
    if not (isinstance(a, dict) and isinstance(a.get("stats"), dict) and "prefix_rise" in a["stats"]):
        raise ValueError(f"{run.dir / 'phase_change.json'}: has no stats.prefix_rise (written by an "
                         f"older experiments.phase_change); run {again} again")
    st = a["stats"]
    pm = np.array(a["prefix_matching"], dtype=float)            # (S, L, H)
    head = "-"
    if pm.shape[1] > 1:
        later = pm[:, 1:, :]
        layer, h = np.unravel_index(np.argmax(later[-1]), later.shape[1:])
        head = f"{layer + 1}.{h}: {later[0, layer, h]:.2f} -> {later[-1, layer, h]:.2f}"
    num = lambda x, spec: "-" if x is None else format(x, spec)       # noqa: E731
    rise = st["prefix_rise"]
    total = float(a["tokens"][-1])
    cells = [run.dir.name, run.train_config["tokenizer"], head,
             (f"{rise[0] / 1e6:.2f}M -> {rise[1] / 1e6:.2f}M" + (" (still rising at the end)" if
              rise[1] >= a["tokens"][-2] else "")) if rise else "none",
             f"x{rise_ratio(rise):.2f}" if rise and rise[0] else "-",
             f"{rise_share(rise, total):.0%}" if rise else "-",
             num(st.get("share_in_rise"), ".0%"), num(st["icl_final"], "+.3f"),
             f"{a['eval_loss'][-1]:.3f} ({a['eval_loss'][-1] / bytes_per_token(run):.3f})",
             f"{run.log['seconds'][-1]:.0f} s" if len(run.log["seconds"]) else "-"]
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run directories, each analysed by experiments.phase_change")
    args = parser.parse_args(argv)
    try:
        rows = [row(r) for r in args.runs]
    except ValueError as e:
        return error(e)
    print(HEADER)
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
