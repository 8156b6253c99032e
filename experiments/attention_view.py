"""Every head's attention on a passage with repeats, at snapshots before, inside and after the
phase change: an interactive block of the HTML report (what CircuitsVis's attention_heads
shows, offline). Inline CSS and JavaScript, the patterns embedded in the page as JSON, no
network and no library, so the page opens from file://.

The passage: BOS, a span of the run's own eval text, and the same span again (the paper's
repeated tokens, on text the model was scored on), 63 tokens at most. In the second copy an
induction head attends to the token after the current token's earlier occurrence.

Using it: hover a token of the query row (or focus it: Tab, then the arrow keys) and every
head's copy of the passage is shaded by the attention weight from that token to each earlier
one; the weight is in each token's tooltip, the strongest three beside the head's name. Each
head is labelled with its class at that snapshot: circuits.scores.classify_heads of that
snapshot's HeadScores, as experiments.measure cached them in <run>/measurements.npz.

In the page each snapshot's pattern of head l.h is, per query q, its weights to keys 0..q in
thousandths (round(1000 * weight): the pattern rounded to 3 decimals).
"""
import html
import json

import numpy as np

from circuits.scores import classify_heads
from minitransformer.data import BOS

from .table import passage_tokens

SPAN = 31             # tokens of eval text, shown twice after BOS: 63 tokens


def repeated_passage(eval_tokens, n_ctx, span=SPAN):
    """BOS + the first `span` tokens of eval text without a BOS in them (the first such
    stretch of the eval sequences, after their first token) + the same tokens again; span
    shrinks to fit n_ctx. eval_tokens (N,T) -> tokens (1 + 2 * span,) int64."""
    span = min(span, (n_ctx - 1) // 2)
    for row in np.asarray(eval_tokens):
        for start in range(1, len(row) - span + 1):
            piece = row[start:start + span]
            if not (piece == BOS).any():
                return np.concatenate([[BOS], piece, piece]).astype(np.int64)
    raise ValueError(f"eval text: no {span} tokens in a row without BOS for the passage")


def view_snapshots(analysis):
    """The snapshots shown, [(label, index into the measurements' snapshots)], and a
    sentence saying which: the phase-change window's start, a snapshot inside it and its end
    (experiments.timeseries.icl_window); the first, middle and last snapshot when the run has
    no window. analysis: the model's table.ModelAnalysis."""
    last = len(analysis.measurements.steps) - 1
    if analysis.icl_window is None:
        chosen = [("first", 0), ("middle", last // 2), ("last", last)]
        note = "This run has no phase-change window: its first, middle and last snapshots."
    else:
        i, j = analysis.before_after_steps
        start, end = analysis.icl_window
        chosen = [("before", i), ("inside", (i + j) // 2), ("after", j)]
        note = (f"Snapshots at the start of the phase-change window ({start / 1e6:.2f}M "
                f"tokens), inside it and at its end ({end / 1e6:.2f}M).")
        if j - i < 2:
            note += " No snapshot lies strictly inside the window."
    indices = [index for _, index in chosen]
    return [c for k, c in enumerate(chosen) if c[1] not in indices[:k]], note


def snapshot_data(analysis, label, index, tokens):
    """One snapshot of the view: every head's pattern on `tokens` (run_with_cache), in
    thousandths per query row, with its class and scores from the cached HeadScores.
    analysis: table.ModelAnalysis."""
    m, run = analysis.measurements, analysis.run
    step = int(m.steps[index])
    _, cache = run.model(step).run_with_cache(tokens[None])
    classes = classify_heads(m.prefix_matching[index], m.copying[index], m.previous_token[index])
    heads = []
    for layer in range(run.config.n_layers):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]             # (H,T,T)
        for head in range(run.config.n_heads):
            thousandths = np.rint(pattern[head].astype(np.float64) * 1000).astype(int)
            heads.append({"name": f"{layer}.{head}", "class": str(classes[layer, head]),
                          "scores": [_score(s[index, layer, head])
                                     for s in (m.prefix_matching, m.copying, m.previous_token)],
                          "rows": [thousandths[q, :q + 1].tolist() for q in range(len(tokens))]})
    return {"label": label, "step": step, "tokens": int(m.tokens[index]), "heads": heads}


def _score(x):
    return None if np.isnan(x) else round(float(x), 3)


def view_data(analysis, tokens):
    """Everything one model's view shows, as a JSON-ready dict. analysis: table.ModelAnalysis."""
    chosen, note = view_snapshots(analysis)
    run = analysis.run
    return {"name": analysis.name, "n_heads": run.config.n_heads, "note": note,
            "tokens": [int(t) for t in tokens], "labels": [run.tokenizer.label(t) for t in tokens],
            "snapshots": [snapshot_data(analysis, label, i, tokens) for label, i in chosen]}


def script_json(data):
    """JSON that is safe inside <script>: no '<', '>' or '&' (a passage holding
    '</script>' or '<!--' cannot end the element)."""
    text = json.dumps(data, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def model_view(analysis, tokens, opened=False):
    """One model's view: a <details> block holding its data; SCRIPT builds the rest.
    analysis: table.ModelAnalysis."""
    data = view_data(analysis, tokens)
    config = analysis.run.config
    return (f"<details class='attn-view'{' open' if opened else ''}><summary>{html.escape(analysis.name)}: "
            f"{config.n_layers} layers x {config.n_heads} heads, "
            f"{len(data['snapshots'])} snapshots</summary>"
            f"<script type='application/json' class='attn-data'>{script_json(data)}</script></details>")


def section(analyses, text=None):
    """The report's attention section: a view of every model with 2+ layers (analyses: their
    table.ModelAnalysis), on the repeated eval-text passage of each run, or on `text`."""
    deep = [m for m in analyses if m.run.config.n_layers >= 2]
    if not deep:
        return ""
    views = []
    for k, m in enumerate(deep):
        n_ctx = m.run.config.n_ctx
        tokens = (repeated_passage(m.run.eval_tokens, n_ctx) if text is None
                  else passage_tokens(text, n_ctx, m.run.tokenizer))
        views.append(model_view(m, tokens, opened=k == 0))
    passage = ("BOS, a span of each run's eval text and the same span again" if text is None
               else "BOS and the passage below")
    return ("<h2>Attention on a passage with repeats</h2><p>Every head of each model with two "
            f"or more layers, on {passage}. Hover a token of the query row, or focus it (Tab, "
            "then the arrow keys): each head's copy of the passage is shaded by the attention "
            "weight from that token to every earlier token (the number in its tooltip; the "
            "strongest three beside the head). Heads are labelled with their class at that "
            "snapshot (classify_heads of the snapshot's HeadScores, cached in "
            "measurements.npz). Open a model's block to draw it.</p>"
            "<noscript><p class=no>The attention view needs JavaScript.</p></noscript>"
            + "".join(views) + f"<script>{SCRIPT}</script>")


CSS = """.attn-view{border:1px solid #ddd;margin:6px 0;padding:4px 8px}
.attn-view summary{cursor:pointer;font-weight:bold}
.attn-controls{margin:6px 0;font-size:13px}.attn-controls label{margin-right:1em}
.attn-note{font-size:13px;color:#555}
.attn-tokens{font-family:monospace;font-size:12px;line-height:1.9;word-break:break-all}
.attn-tokens span{white-space:pre;padding:1px 0;margin-right:1px;border-radius:2px}
.attn-tokens span.attn-esc{font-style:italic;color:#666}
.attn-query span{cursor:pointer;background:#f3f3f3}
.attn-query span:focus{outline:2px solid #d62728}
.attn-tokens span.attn-q{outline:1px solid #222}.attn-tokens span.attn-future{color:#bbb}
.attn-grid{display:grid;gap:8px}.attn-panel{border:1px solid #eee;padding:3px}
.attn-name{font-size:12px;font-family:sans-serif}.attn-top{color:#555}
.induction{color:#d62728}.previous-token{color:#1f77b4}.other{color:#9a9a9a}"""

# Builds each view from its JSON when its <details> opens. The only DOM writes are text
# (textContent, title, data-*), never HTML, so no passage can inject markup.
SCRIPT = r"""(function () {
"use strict";
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function tokenRow(data, cls) {
  const row = el("div", "attn-tokens " + cls);
  data.labels.forEach(function (label, i) {
    const span = el("span", label.length > 1 ? "attn-esc" : "", label);
    span.dataset.pos = i;
    span.dataset.token = data.tokens[i];
    row.appendChild(span);
  });
  return row;
}
function build(view) {
  const data = JSON.parse(view.querySelector("script.attn-data").textContent);
  const where = function (i) { return "'" + data.labels[i] + "'@" + i; };
  const snapshotSelect = el("select", "attn-snapshot"), headSelect = el("select", "attn-head");
  data.snapshots.forEach(function (s, i) {
    const option = el("option", "", s.label + ": step " + s.step + ", " + (s.tokens / 1e6).toFixed(2) + "M tokens");
    option.value = i;
    option.dataset.step = s.step;
    snapshotSelect.appendChild(option);
  });
  headSelect.appendChild(el("option", "", "every head")).value = "all";
  data.snapshots[0].heads.forEach(function (h) { headSelect.appendChild(el("option", "", h.name)).value = h.name; });
  const controls = el("div", "attn-controls");
  [["snapshot ", snapshotSelect], ["head ", headSelect]].forEach(function (pair) {
    const label = el("label", "", pair[0]);
    label.appendChild(pair[1]);
    controls.appendChild(label);
  });
  const query = tokenRow(data, "attn-query");
  query.querySelectorAll("span").forEach(function (span) { span.tabIndex = 0; });
  const grid = el("div", "attn-grid");
  grid.style.gridTemplateColumns = "repeat(" + data.n_heads + ", minmax(0, 1fr))";
  const panels = data.snapshots[0].heads.map(function (h) {
    const panel = el("div", "attn-panel"), name = el("div", "attn-name");
    panel.dataset.head = h.name;
    panel.appendChild(name);
    panel.appendChild(tokenRow(data, "attn-keys"));
    grid.appendChild(panel);
    return panel;
  });
  [el("p", "attn-note", data.note), controls, el("div", "attn-note", "query (hover or focus a token):"),
   query, grid].forEach(function (e) { view.appendChild(e); });
  let q = data.tokens.length - 1;
  function draw() {
    const snapshot = data.snapshots[snapshotSelect.value];
    query.querySelectorAll("span").forEach(function (span, i) { span.classList.toggle("attn-q", i === q); });
    snapshot.heads.forEach(function (h, n) {
      const panel = panels[n], row = h.rows[q], name = panel.firstChild;
      const s = h.scores.map(function (x) { return x === null ? "-" : x.toFixed(2); });
      name.textContent = "";
      name.appendChild(el("b", "", h.name + " "));
      name.appendChild(el("span", h["class"], h["class"]));
      name.title = "prefix matching " + s[0] + ", copying " + s[1] + ", previous token " + s[2];
      const top = row.map(function (w, k) { return [w, k]; }).sort(function (a, b) { return b[0] - a[0]; }).slice(0, 3);
      name.appendChild(el("span", "attn-top", " " + top.map(function (t) {
        return where(t[1]) + " " + (t[0] / 1000).toFixed(3); }).join(", ")));
      panel.style.display = headSelect.value === "all" || headSelect.value === h.name ? "" : "none";
      panel.lastChild.querySelectorAll("span").forEach(function (span, k) {
        const future = k > q, w = future ? 0 : row[k] / 1000;
        span.classList.toggle("attn-future", future);
        span.classList.toggle("attn-q", k === q);
        span.dataset.weight = future ? "" : w.toFixed(3);
        span.style.backgroundColor = "rgba(31,119,180," + w + ")";
        span.title = future ? where(k) + ": after the query" : where(q) + " -> " + where(k) + ": " + w.toFixed(3);
      });
    });
  }
  function pick(event) {
    const pos = event.target.dataset.pos;
    if (pos !== undefined) { q = Number(pos); draw(); }
  }
  query.addEventListener("mouseover", pick);
  query.addEventListener("focusin", pick);
  query.addEventListener("keydown", function (event) {
    const step = {ArrowLeft: -1, ArrowRight: 1}[event.key];
    const next = step && query.children[Number(event.target.dataset.pos) + step];
    if (next) { event.preventDefault(); next.focus(); }
  });
  snapshotSelect.addEventListener("change", draw);
  headSelect.addEventListener("change", draw);
  draw();
}
document.querySelectorAll("details.attn-view").forEach(function (view) {
  const once = function () { if (view.open && !view.dataset.built) { view.dataset.built = "1"; build(view); } };
  view.addEventListener("toggle", once);
  once();
});
})();"""
