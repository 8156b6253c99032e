"""The Model Analysis Table as one HTML page (report/index.html) with its PNG figures, from a
sweep's runs (experiments.sweep), every head's attention to hover over
(experiments.attention_view), and for each model with 2+ layers a page that moves through
every snapshot (experiments.explore: report/explore/<model>.html). Opens in a browser from
disk, no server.

    python -m experiments.report                      # runs/sweep -> report/
    python -m experiments.report --small              # runs/sweep-small -> report-small/
    python -m experiments.report --seeds 3 --markdown # every cell: median [range] over seeds 0-2

Missing measurements are computed (and cached beside each run); a model whose run is
missing is left out and named in the report.
"""
import argparse
import html
import pathlib
import sys

import numpy as np

from circuits.icl import context_indices
from minitransformer.backend import add_device_argument
from minitransformer.cpu import command_settings
from minitransformer.io import atomic_write_text, cannot_write, error, os_error, output_file
from minitransformer.runs import Run

from . import attention_view, claims, explore, figures, seeds, table
from .measure import cached_measurements, measure_run
from .sweep import RECIPES, add_recipe_argument, default_root, finished, jobs_for
from .timeseries import icl_curve, index_pairs

FAMILY_TITLES = {"attn-only": "Attention-only models, 1-6 layers",
                 "mlp": "Models with MLPs, 1-6 layers",
                 "layernorm": "Attention-only models with LayerNorm (the paper's architecture), 1-3 layers",
                 "smeared": "Smeared-key models beside their controls (Argument 2)",
                 "template": "Template corpus (Argument 4)"}


def load(root, jobs, log=print, measure=True, device="cpu"):
    """-> ({run folder: table.ModelAnalysis}, [folders of jobs without a finished run]).
    measure=False: leave out runs not measured yet instead of measuring them (a sweep may be
    doing it now); device: where the models that measure and draw compute."""
    models, missing = {}, []
    for job in jobs:
        path = pathlib.Path(root) / job.folder
        if not finished(path, *job.configs()):
            missing.append(job.folder)
            continue
        run = Run(path, device)
        m = measure_run(run, log=log) if measure else cached_measurements(run)
        if m is None:
            missing.append(job.folder)
            continue
        models[job.folder] = table.analyse(job.name, job.family, job.control, run, m)
    return models, missing


def _img(path, out, alt):
    rel = pathlib.Path(path).relative_to(out)
    return f'<p><img src="{html.escape(str(rel))}" alt="{html.escape(alt)}"></p>'


def coloured_text(pieces, before, after):
    """Each token's text (str) coloured by the change in its loss (blue: easier after, red:
    harder); a newline shown as a return sign and a line break."""
    diff = after - before
    scale = max(float(np.abs(diff).max()), 1e-9)
    spans = []
    for piece, d, b, a in zip(pieces, diff, before, after):
        shown = "".join(c if c.isprintable() or c == " " else
                        ("\u23ce" if c == "\n" else "\u00b7") for c in piece)
        rgb = "40,90,220" if d < 0 else "220,50,40"
        spans.append(f'<span title="{b:.2f} -> {a:.2f} nats" style="background:rgba({rgb},'
                     f'{abs(d) / scale:.2f})">{html.escape(shown)}</span>' + ("<br>" if "\n" in piece else ""))
    return '<div class="passage">' + "".join(spans) + "</div>"


def _num(x, spec):
    return "-" if np.isnan(x) else format(x, spec)


CSS = """body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%} table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ccc;
padding:3px 6px;text-align:right} th{background:#f3f3f3} .ok{color:#17803d}.no{color:#c0392b}.part{color:#b86e00}
.passage{font-family:monospace;font-size:14px;line-height:1.7;border:1px solid #ddd;padding:8px}
pre{background:#f7f7f7;padding:8px;font-size:12px;overflow-x:auto}
""" + attention_view.CSS


def _html_table(headers, rows):
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>" +
            "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                    for r in rows) + "</table>")


def summary_table(models):
    """One row per model: each cell the median [range] over its seeds (experiments.seeds)."""
    return _html_table(seeds.HEADERS, [seeds.row(ms) for ms in seeds.by_model(models).values()])


WINDOW_RULE = (
    "<p><b>How the numbers are read</b> (experiments/timeseries.py). <i>ICL score</i>: the mean "
    "loss at context index {late} minus the mean loss at index {early} (each averaged over "
    "indices &plusmn;{half}), on the run's fixed eval set of held-out text. <i>ICL window</i> "
    "(the phase change): the ICL score averaged over 5 measurements (3 when there are fewer "
    "than 20); its steepest fall, searched for only within the prefix-matching rise (the best "
    "layer&ge;1 head's 10%&rarr;90% rise) widened by a tenth of the run on either side; around "
    "it, the contiguous measurements where the score falls at least 1/4 as fast; kept only if "
    "it falls there by at least 0.05 nats and by at least twice the measurement noise (the "
    "spread of the score about its average). <i>Window anywhere</i>: the same rule without the "
    "restriction to the prefix rise, and its overlap with that rise (the share of the shorter "
    "of the two that they share). <i>Share in the window</i>: the ICL score's fall across the "
    "window (averaged over 3 measurements at each edge) over its whole fall from the first "
    "measurement to the last; <i>after</i>: the change from the window's end to the last. "
    "<i>Loss bump</i> (the paper's: where the loss is not convex): the largest gap between the "
    "eval loss averaged over 5 measurements and its greatest convex minorant, beside the gap "
    "that noise alone makes (99th percentile over 200 draws of the minorant plus Gaussian noise "
    "of the curve's own measurement noise, estimated from its second differences). The paper's "
    "'over 75% of final in-context learning forms in this window' and 'constant for the rest "
    "of training' are checked against the share in the window (&ge; 75%) and after it "
    "(&lt; 10%).</p>")


def claims_table(models):
    """The paper's claims (experiments.claims) on every seed: what was measured on each, and
    on how many seeds each holds."""
    rows = []
    for statement, measured, held, total in seeds.checks_over_seeds(models, claims.checks):
        cls = "ok" if held == total else ("no" if held == 0 else "part")
        seen = "<br>".join(f"seed {k}: {html.escape(v)}" for k, v in measured.items())
        rows.append(f"<tr><td style='text-align:left'>{html.escape(statement)}</td><td "
                    f"style='text-align:left'>{seen}</td><td class={cls}>holds on {held}/{total}"
                    "</td></tr>")
    return "<table><tr><th>claim</th><th>measured</th><th>seeds</th></tr>" + "".join(rows) + "</table>"


def head_ablation_table(models):
    """Argument 3 head by head: each head's share of the ICL score removed by its ablation
    alone, and its projection on the before-and-after vector, at the ICL window's end and at
    the last snapshot, for every seed."""
    rows = []
    for m in models:
        measured = m.measurements
        L, H = int(measured.n_layers), int(measured.n_heads)
        end, last = m.heads.tokens
        for l in range(L):
            for h in range(H):
                k = l * H + h
                rows.append([m.name, m.seed, f"{l}.{h}", measured.classes[l, h],
                             _num(measured.copying[-1, l, h], "+.2f"), _num(measured.copying_paper[-1, l, h], "+.2f"),
                             "-" if np.isnan(end) else f"{end / 1e6:.2f}M",
                             table.percent(m.heads.share[0, k]), _num(m.heads.projection[0, k], "+.3f"),
                             table.percent(m.heads.share[1, k]), _num(m.heads.projection[1, k], "+.3f")])
    return _html_table(["model", "seed", "head", "class (last snapshot)", "copying (ours, chance 0)",
                        "copying (paper's form, chance -0.85)", "window end",
                        "ICL removed at the window's end", "onto before-and-after",
                        "ICL removed at the last snapshot", "onto before-and-after"], rows)


def index_pair_table(models):
    """The final ICL score of every index pair the sensitivity row draws, per model (median
    [range] over seeds), and the 2-layer minus 1-layer difference where both are there."""
    groups = seeds.by_model(models)
    first = next(iter(groups.values()))[0]
    pairs = index_pairs(first.measurements.ctx_loss.shape[1] + 1)
    finals = {name: [[float(icl_curve(m.measurements.ctx_loss[-1:], e, l)[0]) for e, l in pairs]
                     for m in ms] for name, ms in groups.items()}
    rows = [[name] + [seeds.spread([f[p] for f in fs]).format("+.3f") for p in range(len(pairs))]
            for name, fs in finals.items()]
    for deep, shallow in (("attn-only-2l", "attn-only-1l"), ("mlp-2l", "mlp-1l")):
        if deep in finals and shallow in finals and len(finals[deep]) == len(finals[shallow]):
            diff = np.array(finals[deep]) - np.array(finals[shallow])      # seed by seed
            rows.append([f"{deep} minus {shallow}"] +
                        [seeds.spread(diff[:, p]).format("+.3f") for p in range(len(pairs))])
    return _html_table(["model"] + [f"loss[{l}] - loss[{e}]" for e, l in pairs], rows)


def build(root, jobs, out, log=print, colour="class", measure=True, device="cpu"):
    """Write out/index.html and out/figures/*.png -> (path, summary lines, the claims over
    seeds: [(statement, {seed: measured}, seeds holding, seeds checked)]). The figures and the
    attention view show the lowest seed of each model; the tables every seed."""
    out = pathlib.Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    loaded, missing = load(root, jobs, log, measure, device)
    every = list(loaded.values())
    first = min((m.seed for m in every), default=0)
    models = {m.name: m for m in every if m.seed == first}
    n_seeds = len(seeds.seed_groups(every))
    body = ["<h1>In-context learning and induction heads: the Model Analysis Table</h1>",
            f"<p>Runs from <code>{html.escape(str(root))}</code>, {n_seeds} seed(s) a model; the "
            f"figures show seed {first}. Every figure's x axis is training "
            "tokens; the orange band is the phase-change window found from the derivative of "
            "the ICL score, the dashed line the onset of prefix matching. " +
            ("Heads: <b style='color:#d62728'>induction</b>, <b style='color:#1f77b4'>previous-token"
             "</b>, <b style='color:#9a9a9a'>other</b> (classes at the end of training)." if colour == "class"
             else "Heads coloured by layer (C0 = layer 0, C1 = layer 1, ...).") + "</p>"]
    if missing:
        body.append(f"<p class=no>Not in this report (not trained or not measured yet): {html.escape(', '.join(missing))}</p>")
    lines = [table.summary_line(m) for m in every]
    checks = seeds.checks_over_seeds(every, claims.checks)
    n_ctx = first_n_ctx(every)
    early, late = context_indices(n_ctx)
    body += ["<h2>Summary (median [range] over seeds)</h2>", summary_table(every),
             WINDOW_RULE.format(early=early, late=late, half=max(1, round(n_ctx / 64))),
             "<h2>The paper's claims, seed by seed</h2>", claims_table(every),
             "<h2>Argument 3, head by head (pattern-preserving ablations)</h2>",
             "<p>Positive shares: the model learns less in context without the head; the "
             "before-and-after vector points from after the phase change back to before it, so a "
             "positive projection means removing the head undoes part of the phase change (the "
             "paper's sign is the opposite).</p>", head_ablation_table(every),
             "<h2>The ICL score at other index pairs (last snapshot)</h2>", index_pair_table(every)
             if every else ""]
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
    body.append(explorer_section(list(models.values()), out, log))
    body.append(attention_view.section(list(models.values())))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>Model Analysis Table</title>"
            f"<style>{CSS}</style></head><body>" + "\n".join(body) +
            "<h2>Printed summary</h2><pre>" + html.escape("\n".join(lines)) + "</pre></body></html>")
    atomic_write_text(out / "index.html", page)
    return out / "index.html", lines, checks


def explorer_section(analyses, out, log=None):
    """For every model with 2+ layers (analyses: table.ModelAnalysis), its experiments.explore
    page, out/explore/<name>.html, and the list linking them."""
    items = []
    for m in analyses:
        if m.run.config.n_layers < 2:
            continue
        size = explore.write_explorer(m.run, out / "explore" / f"{m.name}.html", m.measurements, log)
        items.append(f"<li><a href='explore/{html.escape(m.name)}.html'>{html.escape(m.name)}</a>: "
                     f"{len(m.measurements.steps)} snapshots, {size / 1e3:,.0f} KB</li>")
    if not items:
        return ""
    return ("<h2>Watch it form: every snapshot, one page a model</h2><p>For each model with two "
            "or more layers, a page with a slider (and the arrow keys, and play) through every "
            "snapshot: every head's attention on a passage of eval text with a repeated identifier, "
            "the head classes, and the curves of prefix matching, the ICL score and the eval loss "
            "with a cursor at the snapshot and the phase-change window shaded "
            "(<code>python -m experiments.explore RUN</code> makes one for any run).</p><ul>"
            + "".join(items) + "</ul>")


def first_n_ctx(models):
    return int(models[0].run.config.n_ctx) if models else 256


def _family_extras(family, members, models, out):
    parts = []
    if family in ("attn-only", "mlp", "layernorm"):
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
                     "".join(f"<tr><td>{n}</td><td>{table.percent(a)}</td><td>{table.percent(b)}</td><td>{c:+.3f}</td></tr>"
                             for n, a, b, c in table.share_table(members)) + "</table>")
    if family == "attn-only":
        parts.append("<h3>Per-token loss change across the phase change (blue: easier after)</h3>")
        for m in members:
            if m.icl_window is None:
                continue
            i, j = m.before_after_steps
            steps = m.measurements.steps[[i, j]]
            data, losses = table.passage_losses(m.run, steps)
            parts.append(f"<p>{m.name}: snapshot at {m.measurements.tokens[i] / 1e6:.2f}M -> "
                         f"{m.measurements.tokens[j] / 1e6:.2f}M tokens; mean change "
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
    classes = m.measurements.classes
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
    add_recipe_argument(parser)
    parser.add_argument("--root", help="the sweep's runs (default runs/sweep, runs/sweep-bpe or runs/sweep-small)")
    parser.add_argument("--out", help="report folder (default report or report-small)")
    parser.add_argument("--colour", choices=["class", "layer"], default="class",
                        help="colour heads by class (induction, previous-token, other) or by layer")
    parser.add_argument("--cached-only", action="store_true",
                        help="leave out runs not measured yet (while a sweep is running)")
    parser.add_argument("--markdown", action="store_true",
                        help="also print the summary as a Markdown table")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 of every model (default 1)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="just these models")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root) if args.root else default_root(args.small, args.recipe)
    out = pathlib.Path(args.out or ("report-small" if args.small else "report" + RECIPES[args.recipe]))
    try:
        if not root.is_dir():
            raise ValueError(f"{root}: no such sweep folder; run python -m experiments.sweep first")
        out.mkdir(parents=True, exist_ok=True)
        output_file(out / "index.html", "--out", suffix=".html")
        jobs = jobs_for(args)
        with command_settings():
            path, lines, checks = build(root, jobs, out, colour=args.colour,
                                        measure=not args.cached_only, device=args.device)
    except ValueError as e:
        return error(e)
    except OSError as e:            # --out's, unless the error names a file elsewhere
        if e.filename and not pathlib.Path(e.filename).resolve().is_relative_to(out.resolve()):
            return os_error(e, out)
        return cannot_write("--out", out, e)
    print("\n".join(lines))
    if args.markdown:   # from the measurements build just cached
        print(seeds.markdown_table(load(root, jobs, None, False, args.device)[0].values()))
    for statement, measured, held, total in checks:
        seen = "; ".join(f"seed {k}: {v}" for k, v in measured.items())
        print(f"[holds on {held}/{total}] {statement}: {seen}")
    print(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
