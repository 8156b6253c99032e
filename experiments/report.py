"""The Model Analysis Table as one HTML page (report/index.html) with its PNG figures, from a
sweep's runs (experiments.sweep), and every head's attention to hover over
(experiments.attention_view). Opens in a browser from disk, no server.

    python -m experiments.report                      # runs/sweep -> report/
    python -m experiments.report --small              # runs/sweep-small -> report-small/

Missing measurements are computed (and cached beside each run); a model whose run is
missing is left out and named in the report.
"""
import argparse
import html
import pathlib
import sys

import numpy as np

from minitransformer.backend import add_device_argument
from minitransformer.io import atomic_write_text, cannot_write, error, output_file
from minitransformer.runs import Run

from . import attention_view, figures, table
from .measure import cached_measurements, measure_run
from .sweep import default_jobs, default_root, finished, small_jobs

FAMILY_TITLES = {"attn-only": "Attention-only models, 1-6 layers",
                 "mlp": "Models with MLPs, 1-6 layers",
                 "smeared": "Smeared-key models beside their controls (Argument 2)",
                 "template": "Template corpus (Argument 4)"}


def load(root, jobs, log=print, measure=True, device="cpu"):
    """-> ({name: table.ModelAnalysis}, [names of jobs without a finished run]). measure=False: leave
    out runs not measured yet instead of measuring them (a sweep may be doing it now);
    device: where the models that measure and draw compute."""
    models, missing = {}, []
    for job in jobs:
        path = pathlib.Path(root) / job.name
        if not finished(path, *job.configs()):
            missing.append(job.name)
            continue
        run = Run(path, device)
        m = measure_run(run, log=log) if measure else cached_measurements(run)
        if m is None:
            missing.append(job.name)
            continue
        models[job.name] = table.analyse(job.name, job.family, job.control, run, m)
    return models, missing


def _img(path, out, alt):
    rel = pathlib.Path(path).relative_to(out)
    return f'<p><img src="{html.escape(str(rel))}" alt="{html.escape(alt)}"></p>'


def coloured_text(data, before, after):
    """Bytes coloured by the change in per-token loss (blue: easier after, red: harder)."""
    diff = after - before
    scale = max(float(np.abs(diff).max()), 1e-9)
    spans = []
    for byte, d, b, a in zip(data, diff, before, after):
        char = chr(byte) if 32 <= byte < 127 else ("\u23ce" if byte == 10 else "\u00b7")
        rgb = "40,90,220" if d < 0 else "220,50,40"
        spans.append(f'<span title="{b:.2f} -> {a:.2f} nats" style="background:rgba({rgb},'
                     f'{abs(d) / scale:.2f})">{html.escape(char)}</span>' + ("<br>" if byte == 10 else ""))
    return '<div class="passage">' + "".join(spans) + "</div>"


def acceptance(models):
    """The issue's acceptance checks, each (statement, what we measured, holds)."""
    checks = []

    def add(name, statement, test, measured):
        if name in models:
            checks.append((statement, measured(models[name]), bool(test(models[name]))))
    add("attn-only-1l", "1-layer attention-only: no phase change, no induction head, ICL flat",
        lambda m: m.window is None and not m.induction_heads and abs(m.icl[-1]) < 0.1,
        lambda m: f"window {_fmt_window(m.window)}, induction heads {', '.join(m.induction_heads) or 'none'}, "
                  f"final ICL {m.icl[-1]:+.3f}")
    for n in range(2, 7):
        add(f"attn-only-{n}l", f"{n}-layer attention-only: phase change, induction heads in the last layer",
            lambda m: m.window is not None and any(int(h.split(".")[0]) == int(m.m.n_layers) - 1
                                                      for h in m.induction_heads),
            lambda m: f"window {_fmt_window(m.window)}, induction heads {', '.join(m.induction_heads) or 'none'}")
    add("smeared-1l", "1-layer smeared key: gets the phase change its control never gets",
        lambda m: m.window is not None and bool(m.induction_heads),
        lambda m: f"window {_fmt_window(m.window)}, induction heads {', '.join(m.induction_heads) or 'none'}")
    if "smeared-2l" in models and "attn-only-2l" in models:
        s, c = models["smeared-2l"], models["attn-only-2l"]
        ok = s.window is not None and (c.window is None or s.window[0] < c.window[0])
        checks.append(("2-layer smeared key: phase change earlier than its control",
                       f"{_fmt_window(s.window)} vs control {_fmt_window(c.window)}", ok))
    add("attn-only-2l", "2-layer attention-only: ablating the induction heads removes most of the ICL score",
        lambda m: m.shares.get("induction heads", 0) > 0.5,
        lambda m: f"{m.shares.get('induction heads', float('nan')):.0%} (all other heads: "
                  f"{m.shares.get('all other heads', float('nan')):.0%})")
    return checks


def _num(x, spec):
    return "-" if np.isnan(x) else format(x, spec)


def _pct(share):
    """A share as a percentage; '-' where there was nothing to ablate (no such heads)."""
    return "-" if share is None or np.isnan(share) else f"{share:.0%}"


def _fmt_window(w):
    return "none" if w is None else f"{w[0] / 1e6:.2f}M-{w[1] / 1e6:.2f}M tokens"


CSS = """body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%} table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;
padding:3px 6px;text-align:right} th{background:#f3f3f3} .ok{color:#17803d}.no{color:#c0392b}
.passage{font-family:monospace;font-size:14px;line-height:1.7;border:1px solid #ddd;padding:8px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
""" + attention_view.CSS


def summary_table(models):
    head = ("<tr><th>model</th><th>window (M tokens)</th><th>ICL before</th><th>ICL after</th>"
            "<th>final ICL</th><th>loss bump</th><th>prefix onset</th><th>induction heads</th>"
            "<th>ICL removed: induction heads</th><th>: all other heads</th></tr>")
    rows = []
    for m in models:
        w, o = m.window, m.onset
        cells = [m.name, "-" if w is None else f"{w[0] / 1e6:.2f} - {w[1] / 1e6:.2f}",
                 _num(m.icl_before, "+.3f"), _num(m.icl_after, "+.3f"), f"{m.icl[-1]:+.3f}",
                 _num(m.bump, ".3f"), "-" if o is None else f"{o[0] / 1e6:.2f}M",
                 ", ".join(m.induction_heads) or "none",
                 _pct(m.shares.get("induction heads")), _pct(m.shares.get("all other heads"))]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "<table>" + head + "".join(rows) + "</table>"


def build(root, jobs, out, log=print, colour="class", measure=True, device="cpu"):
    """Write out/index.html and out/figures/*.png -> (path, summary lines, acceptance)."""
    out = pathlib.Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    models, missing = load(root, jobs, log, measure, device)
    body = ["<h1>In-context learning and induction heads: the Model Analysis Table</h1>",
            f"<p>Runs from <code>{html.escape(str(root))}</code>. Every figure's x axis is training "
            "tokens; the orange band is the phase-change window found from the derivative of "
            "the ICL score, the dashed line the onset of prefix matching. " +
            ("Heads: <b style='color:#d62728'>induction</b>, <b style='color:#1f77b4'>previous-token"
             "</b>, <b style='color:#9a9a9a'>other</b> (classes at the end of training)." if colour == "class"
             else "Heads coloured by layer (C0 = layer 0, C1 = layer 1, ...).") + "</p>"]
    if missing:
        body.append(f"<p class=no>Not in this report (not trained or not measured yet): {html.escape(', '.join(missing))}</p>")
    lines = [table.summary_line(m) for m in models.values()]
    checks = acceptance(models)
    body += ["<h2>Summary</h2>", summary_table(list(models.values())), "<h2>Acceptance checks</h2><table>"]
    body += [f"<tr><td style='text-align:left'>{html.escape(s)}</td><td style='text-align:left'>"
             f"{html.escape(v)}</td><td class={'ok' if ok else 'no'}>{'holds' if ok else 'does not hold'}</td></tr>"
             for s, v, ok in checks] + ["</table>"]
    for family, title in FAMILY_TITLES.items():
        members = [m for m in models.values() if m.family == family]
        if family == "smeared":
            members = [x for m in members for x in (m, models.get(m.control)) if x is not None]
        if not members:
            continue
        body.append(f"<h2>{html.escape(title)}</h2>")
        path = out / "figures" / f"{family}_table.png"
        figures.table_figure(members, figures.ROWS, path, colour=colour)
        body.append(_img(path, out, f"{family} table"))
        body += _family_extras(family, members, models, out)
    body.append(attention_view.section(list(models.values())))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Model Analysis Table</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) +
            "<h2>Printed summary</h2><pre>" + html.escape("\n".join(lines)) + "</pre></body></html>")
    atomic_write_text(out / "index.html", page)
    return out / "index.html", lines, checks


def _family_extras(family, members, models, out):
    parts = []
    if family in ("attn-only", "mlp"):
        coords, ratio = table.joint_pca(members)
        path = out / "figures" / f"{family}_pca.png"
        figures.pca_figure(members, coords, ratio, path)
        parts += ["<h3>PCA of per-token losses (all snapshots of the family, fitted jointly)</h3>",
                  _img(path, out, "PCA")]
        path = out / "figures" / f"{family}_loss_derivative.png"
        figures.loss_derivative_figure(members, path)
        parts += ["<h3>dLoss/dln(tokens): does the order of the models invert at the phase change?</h3>",
                  _img(path, out, "loss derivative")]
        parts.append("<h3>Argument 3: share of the final ICL score removed by ablating heads together</h3>"
                     "<table><tr><th>model</th><th>induction heads</th><th>all other heads</th>"
                     "<th>clean ICL (ablation sequences)</th></tr>" +
                     "".join(f"<tr><td>{n}</td><td>{_pct(a)}</td><td>{_pct(b)}</td><td>{c:+.3f}</td></tr>"
                             for n, a, b, c in table.share_table(members)) + "</table>")
    if family == "attn-only":
        parts.append("<h3>Per-token loss change across the phase change (blue: easier after)</h3>")
        for m in members:
            if m.window is None:
                continue
            i, j = m.before_after_steps
            steps = m.m.steps[[i, j]]
            data, losses = table.passage_losses(m.run, steps)
            parts.append(f"<p>{m.name}: snapshot at {m.m.tokens[i] / 1e6:.2f}M -> "
                         f"{m.m.tokens[j] / 1e6:.2f}M tokens; mean change "
                         f"{float((losses[1] - losses[0]).mean()):+.3f} nats</p>")
            parts.append(coloured_text(data, losses[0], losses[1]))
    if family == "smeared":
        pairs = [(m, models[m.control]) for m in members if m.family == "smeared" and m.control in models]
        if pairs:
            path = out / "figures" / "smeared_pairs.png"
            figures.pair_figure(pairs, path)
            parts += ["<h3>Each smeared-key model (solid) beside its control (dashed)</h3>", _img(path, out, "pairs")]
    if family == "template":
        # the template model, and the stdlib-trained 2-layer model read on the same documents
        # (the paper's setting: a model trained on ordinary text)
        readers = members + [models[n] for n in ("attn-only-2l",) if n in models]
        for m in readers:
            parts.append(_template_table(m))
    return parts


def _template_table(m):
    """Argument 4: every head's share of attention to earlier same-category lines (layer 0
    too: a 1-layer model has only it), the induction heads marked."""
    classes = m.m.classes
    heads = [(l, h) for l in range(classes.shape[0]) for h in range(classes.shape[1])]
    shares, uniform, count = table.template_attention(m.run, heads)
    rows = "".join(f"<tr><td>{l}.{h}</td><td>{html.escape(str(classes[l, h]))}</td><td>{a:.0%}</td>"
                   f"<td>{b:.0%}</td></tr>" for (l, h), (a, b) in shares.items())
    return (f"<p>{m.name}: share of attention to earlier lines of the same category in the same "
            f"document, over {count} template lines that have one (uniform attention would give "
            f"{uniform[0]:.0%} from ':' and {uniform[1]:.0%} from ': ').</p><table><tr><th>head</th>"
            f"<th>class (random tokens)</th><th>from ':'</th><th>from ': ' (predicts the word)</th>"
            f"</tr>{rows}</table>")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="the small sweep's runs")
    parser.add_argument("--root", help="the sweep's runs (default runs/sweep or runs/sweep-small)")
    parser.add_argument("--out", help="report folder (default report or report-small)")
    parser.add_argument("--colour", choices=["class", "layer"], default="class",
                        help="colour heads by class (induction, previous-token, other) or by layer")
    parser.add_argument("--cached-only", action="store_true",
                        help="leave out runs not measured yet (while a sweep is running)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the summary as a Markdown table")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root) if args.root else default_root(args.small)
    out = pathlib.Path(args.out or ("report-small" if args.small else "report"))
    try:
        if not root.is_dir():
            raise ValueError(f"{root}: no such sweep folder; run python -m experiments.sweep first")
        out.mkdir(parents=True, exist_ok=True)
        output_file(out / "index.html", "--out", suffix=".html")
        path, lines, checks = build(root, small_jobs() if args.small else default_jobs(), out,
                                    colour=args.colour, measure=not args.cached_only,
                                    device=args.device)
    except ValueError as e:
        return error(e)
    except OSError as e:
        return cannot_write("--out", out, e)
    print("\n".join(lines))
    if args.markdown:   # from the measurements build just cached
        jobs = small_jobs() if args.small else default_jobs()
        print(table.markdown_table(load(root, jobs, None, False, args.device)[0].values()))
    for statement, measured, ok in checks:
        print(f"[{'holds' if ok else 'DOES NOT HOLD'}] {statement}: {measured}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
