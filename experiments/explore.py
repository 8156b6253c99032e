"""Watch induction heads form: one self-contained HTML page per run, a slider over its snapshots.

What someone used to CircuitsVis's attention_heads and TensorBoard's scalars expects, offline,
over every stored snapshot of a run.

    python -m experiments.explore runs/attn-only-2l [--out FILE.html]   # default <run>/explorer.html

At each snapshot the page shows every head's attention on a passage of the run's own eval text
with a real repeat in it (a repeated identifier, not whitespace), each head's class and scores,
and below, the curves of prefix matching per head, the ICL score and the eval loss, with a
cursor at the current snapshot and the phase-change window shaded. A slider, the arrow keys and
a play button move through the snapshots; hovering a token shows where each head looks from it.

The curves and classes are experiments.measure's cached Measurements (measured and cached
first if missing); the windows are experiments.timeseries.phase_statistics of them, as in the
report. Each snapshot's patterns are recorded on the passage by a hook at every layer's
hook_pattern. In the page each weight is one byte, round(255 * w), of the causal lower triangle
only, base64-encoded; the passage is as long as lets 200 snapshots fit in about 5 MB
(passage_budget). Inline CSS and JavaScript, no library, no network: it opens from file://.
"""
import argparse
import base64
import html
import pathlib
import re
import sys
import time
from dataclasses import dataclass

import numpy as np

from circuits.icl import context_indices
from circuits.scores import CLASS_RULE, classify_heads
from minitransformer.backend import add_device_argument, to_numpy
from minitransformer.cpu import command_settings
from minitransformer.data import BOS
from minitransformer.interventions import record
from minitransformer.io import atomic_write_text, error, os_error, output_file
from minitransformer.runs import Run

from .attention_view import repeated_passage, script_json
from .measure import measure_run
from .timeseries import icl_curve, phase_statistics

MAX_PASSAGE = 96            # tokens at most in the passage
MIN_PASSAGE = 16            # ... and at least, whatever the size (a page of many heads grows)
REFERENCE_SNAPSHOTS = 200   # the size budget: this many snapshots of every head's pattern ...
BUDGET_BYTES = 5_000_000    # ... fit in this many bytes of page
FIXED_BYTES = 100_000       # the page without its snapshots (script, style, text): ~40 KB, rounded up
NUMBER_BYTES = 22           # a score as JSON: up to 17 significant digits, sign, comma
KEY_BYTES = 80              # a snapshot's keys and brackets as JSON
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{3,}")   # a word or identifier of >= 4 characters
CLASSES = ("induction", "previous-token", "other")
TAIL = 3                    # tokens of text kept after the repeat's second copy


@dataclass(frozen=True)
class Passage:
    """The text the page shows attention on: T tokens, a repeat of `length` tokens at
    positions `first` and `second` (second copy: where an induction head looks back)."""
    tokens: np.ndarray      # (T,) int64, the model's input
    first: int
    second: int
    length: int
    kind: str               # "identifier": a repeated word of >= 4 identifier characters;
                            # "repeat": another repeated n-gram (no identifier repeats);
                            # "planted": BOS + a span of eval text + the same span again
    source: str             # where in the eval set it comes from, in words
    word: str               # the repeated identifier ("identifier"), else the repeat's text
    query: int              # the query shown first: in the second copy, the token after the
                            # word's first one (an induction head looks at the same in the first)


def snapshot_bytes(n_heads_total, n_tokens):
    """Bytes one snapshot takes in the page, at most: every head's lower-triangle pattern, one
    byte a weight, base64 (4 characters per 3 bytes); its scores as JSON numbers, its classes
    as digits."""
    pattern = n_heads_total * n_tokens * (n_tokens + 1) // 2
    scores = NUMBER_BYTES * (3 * n_heads_total + 4) + 2 * n_heads_total + KEY_BYTES
    return 4 * -(-pattern // 3) + scores


def passage_budget(n_heads_total, n_ctx):
    """The longest passage (<= MAX_PASSAGE, <= n_ctx) for which REFERENCE_SNAPSHOTS snapshots
    of n_heads_total heads fit in BUDGET_BYTES; MIN_PASSAGE at least."""
    fits = [t for t in range(MIN_PASSAGE, MAX_PASSAGE + 1)
            if FIXED_BYTES + REFERENCE_SNAPSHOTS * snapshot_bytes(n_heads_total, t) <= BUDGET_BYTES]
    return min(n_ctx, max(fits, default=MIN_PASSAGE))


def min_repeat(tokenizer):
    """Tokens a repeat needs: 4 bytes, or 2 BPE tokens."""
    return 2 if tokenizer.hf_json else 4


def repeats(segment, n_min):
    """The maximal repeats in a token array: (first, second, length) for each n-gram of
    >= n_min tokens that occurs again (second: its next occurrence, not overlapping the first),
    extended to the right as far as the two copies agree."""
    last = {}
    for p in range(len(segment) - n_min + 1):
        key = segment[p:p + n_min].tobytes()
        q, last[key] = last.get(key), p
        if q is None or p - q < n_min or (q > 0 and segment[q - 1] == segment[p - 1]):
            continue                    # none, overlapping, or part of a repeat found before
        length = n_min
        while (p + length < len(segment) and length < p - q
               and segment[q + length] == segment[p + length]):
            length += 1
        yield q, p, length


def find_passage(eval_tokens, tokenizer, max_tokens, bos_first=False):
    """A window of at most max_tokens tokens of eval text holding a repeat -> Passage. Best: a
    repeated identifier (IDENTIFIER in the decoded repeat), the longer the better (up to 12
    characters), the first such in the eval set; else any repeated n-gram that is not all
    whitespace; else BOS + a span of eval text + the same span again. The window ends TAIL
    tokens after the repeat's second copy and starts as early as max_tokens allows, within one
    document. bos_first (the run's windows start with BOS): the passage does too."""
    budget = max_tokens - bos_first
    n_min = min_repeat(tokenizer)
    best, best_rank = None, None
    for r, row in enumerate(np.asarray(eval_tokens)):
        cuts = [-1] + np.flatnonzero(row == BOS).tolist() + [len(row)]
        for a, b in zip(cuts[:-1], cuts[1:]):           # each document's piece, BOS left out
            segment = row[a + 1:b]
            for q, p, length in repeats(segment, n_min):
                end = min(len(segment), p + length + TAIL)
                if end - q > budget:
                    continue
                text = tokenizer.decode(segment[p:p + length])
                words = IDENTIFIER.findall(text)
                word = max(words, key=len) if words else text
                rank = ((1, min(len(word), 12)) if words else
                        (0, min(length, 12)) if text.strip() else None)
                if rank is not None and (best_rank is None or rank > best_rank):
                    start = max(0, end - budget)
                    best_rank, best = rank, (r, a + 1, start, end, q, p, length, segment, word)
        if best_rank == (1, 12):
            break
    if best is None:
        tokens = repeated_passage(eval_tokens, max_tokens, span=(max_tokens - 1) // 2)
        span = (len(tokens) - 1) // 2
        return Passage(tokens, 1, 1 + span, span, "planted",
                       "BOS, the first stretch of eval text without BOS and the same stretch again "
                       "(the eval set holds no repeat that fits)",
                       tokenizer.decode(tokens[1:1 + span]), min(2 + span, len(tokens) - 1))
    r, offset, start, end, q, p, length, segment, word = best
    lead = [BOS] if bos_first else []
    tokens = np.concatenate([lead, segment[start:end]]).astype(np.int64)
    second = p - start + len(lead)
    return Passage(tokens, q - start + len(lead), second, length,
                   "identifier" if best_rank[0] else "repeat",
                   f"eval sequence {r}, tokens {offset + start}-{offset + end - 1}", word,
                   second + min(word_offset(tokenizer, segment[p:p + length], word) + 1, length - 1))


def word_offset(tokenizer, repeat, word):
    """The token of `repeat` (token ids) where the text `word` begins (0 if it is not there)."""
    at = tokenizer.decode(repeat).find(word)
    if at <= 0:
        return 0
    return next((i for i in range(len(repeat)) if len(tokenizer.decode(repeat[:i + 1])) > at), 0)


def attention_patterns(model, tokens):
    """Every head's attention pattern on tokens (T,), recorded by a hook at each layer's
    hook_pattern (nothing else is kept) -> (L,H,T,T) float32."""
    recorded = {}
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.config.n_layers)]
    model.forward(np.asarray(tokens)[None], hooks=record(names, recorded))
    return np.stack([to_numpy(recorded[name])[0] for name in names])    # each (1,H,T,T)


def quantised(patterns):
    """(L,H,T,T) patterns -> base64 of their lower triangles, head by head (l, h), query by
    query, keys 0..q: one byte a weight, round(255 * w). The URL-safe alphabet ('-', '_' for
    '+', '/'), so that page_json has no '/' to escape in it."""
    L, H, T, _ = patterns.shape
    rows, keys = np.tril_indices(T)
    tri = patterns.reshape(L * H, T, T)[:, rows, keys]
    weights = np.rint(np.clip(tri, 0, 1) * 255).astype(np.uint8)
    return base64.urlsafe_b64encode(weights.tobytes()).decode()


def _window(w):
    return None if w is None else [float(w[0]), float(w[1])]


def _numbers(values):
    """Floats for JSON, every digit kept (the page prints them as Python would); NaN: null."""
    return [None if np.isnan(x) else float(x) for x in np.ravel(values)]


def explorer_data(run, m, log=None):
    """Everything the page shows, JSON-ready: run (minitransformer.runs.Run), m its
    experiments.measure.Measurements; each snapshot's patterns computed here (log: progress)."""
    cfg = run.config
    heads = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    max_tokens = passage_budget(len(heads), cfg.n_ctx)
    passage = find_passage(run.eval_tokens, run.tokenizer, max_tokens,
                           bool(run.train_config.get("bos_first", False)))
    icl, eval_loss = icl_curve(m.ctx_loss), m.ctx_loss.mean(1)
    tokens = m.tokens.astype(float)
    stats = phase_statistics(tokens, icl, eval_loss, tokens, m.prefix_matching)
    snapshots, start, S = [], time.time(), len(m.steps)
    every = max(1, S // 20)
    for k, step in enumerate(m.steps):
        classes = classify_heads(m.prefix_matching[k], m.copying[k], m.previous_token[k])
        snapshots.append({
            "step": int(step), "tokens": int(m.tokens[k]), "icl": _numbers(icl[k])[0],
            "loss": _numbers(eval_loss[k])[0], "pm": _numbers(m.prefix_matching[k]),
            "cp": _numbers(m.copying[k]), "pt": _numbers(m.previous_token[k]),
            "cls": [CLASSES.index(c) for c in classes.ravel()],
            "att": quantised(attention_patterns(run.model(int(step)), passage.tokens))})
        if log and (k % every == every - 1 or k == S - 1):
            log(f"{run.dir.name}: snapshot {k + 1}/{S} (step {int(step)}), {time.time() - start:.0f} s")
    early, late = context_indices(cfg.n_ctx)
    return {"run": str(run.dir), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "heads": heads,
            "classes": list(CLASSES), "ids": [int(t) for t in passage.tokens],
            "labels": [run.tokenizer.label(t) for t in passage.tokens],
            "repeat": {"first": passage.first, "second": passage.second, "length": passage.length,
                       "kind": passage.kind, "source": passage.source, "word": passage.word},
            "query": passage.query,
            "window": _window(stats.icl_window), "rise": _window(stats.prefix_rise),
            "early": early, "late": late, "snapshots": snapshots}


def page_json(data):
    """JSON safe in <script> (attention_view.script_json) that spells no URL either: every
    '/' escaped, so no passage can put 'https://' in the page."""
    return script_json(data).replace("/", "\\/")


def page(data):
    """The HTML page of explorer_data, stating its own size."""
    S, T, LH = len(data["snapshots"]), len(data["ids"]), len(data["heads"])
    per = snapshot_bytes(LH, T)
    name = pathlib.Path(data["run"]).name
    repeat = data["repeat"]
    kinds = {"identifier": "a repeated identifier", "repeat": "a repeated run of tokens (the eval set "
             "holds no repeated identifier that fits)", "planted": "a planted repeat"}
    window = data["window"]
    body = f"""<h1>Watch it form: {html.escape(name)}</h1>
<p class=sub>{html.escape(data['run'])}: {data['n_layers']} layers &times; {data['n_heads']} heads,
{S} snapshots. Move with the slider, the arrow keys (&larr; &rarr;, Home, End) or
<b>play</b> (space); hover a token of the passage, or a row of a head's map, to see where each
head looks from it; click a curve to jump to that snapshot.</p>
<div id=controls><button id=play type=button aria-pressed=false>&#9654; play</button>
<input id=slider type=range min=0 max={S - 1} step=1 value=0 aria-label=snapshot>
<span id=position></span> <label>speed <select id=speed><option value=2>2</option>
<option value=5 selected>5</option><option value=10>10</option><option value=25>25</option>
</select> snapshots/s</label></div>
<div id=readout>step <b id=step></b> &middot; <b id=tokens></b> training tokens &middot; ICL score
<b id=icl></b> &middot; eval loss <b id=loss></b> &middot; <span id=phase></span></div>
<p class=note>Passage: {html.escape(kinds[repeat['kind']])} (<b id=word></b>), from
{html.escape(repeat['source'])}; its two copies are underlined. From a token in the second
copy an induction head attends to the token after that token's first occurrence. Query (hover
a token, or focus it with Tab and move with the arrow keys): <b id=query></b></p>
<div id=passage class=tokens></div>
<div id=heads></div>
<h2>Over training</h2>
<p class=note>x: training tokens. <span class=swatch style='background:#ff7f0e40'></span>
the phase-change window (the ICL score's steepest fall near the prefix-matching rise, as in
the report){'' if window else ': none in this run'}; <span class=swatch
style='border-left:2px dashed #1f77b4;border-right:2px dashed #1f77b4'></span> the best
layer&ge;1 head's prefix-matching rise (10%&rarr;90%){'' if data['rise'] else ': none in this run'};
the red line: this snapshot.</p>
<div class=chart-title>prefix matching of each head (colour: layer)</div><svg id=chart-prefix class=chart></svg>
<div class=chart-title>ICL score: loss at context index {data['late']} minus index {data['early']}
(nats; negative: in-context learning)</div><svg id=chart-icl class=chart></svg>
<div class=chart-title>eval loss (nats, mean over the run's fixed eval set)</div><svg id=chart-loss class=chart></svg>
<h2>How this page is made</h2>
<p class=note>Scores and curves: experiments.measure's cached measurements of the run (every
snapshot, the run's fixed eval set); head classes: circuits.scores.classify_heads of each
snapshot's scores ({html.escape(CLASS_RULE)}). Attention: each snapshot's patterns on the
passage ({T} tokens), recorded at every layer's hook_pattern. <b>Size</b>: each weight is
stored as one byte, round(255&middot;w) (so to within &plusmn;0.002), for the causal lower
triangle only ({T}&middot;{T + 1}/2 weights a head), base64-encoded: {per / 1e3:.1f} KB per
snapshot with its scores; this page: <!--SIZE--> for {S} snapshots; 200 snapshots of this model would
make at most about {(FIXED_BYTES + REFERENCE_SNAPSHOTS * per) / 1e6:.1f} MB. The passage is as long as
keeps that under about {BUDGET_BYTES / 1e6:.0f} MB ({MAX_PASSAGE} tokens at most).</p>
<noscript><p>This page needs JavaScript.</p></noscript>
<script type=application/json id=explorer-data>{page_json(data)}</script>
<script>{SCRIPT}</script>"""
    text = ("<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'>"
            f"<title>Watch it form: {html.escape(name)}</title><style>{CSS}</style></head>"
            f"<body>{body}</body></html>")
    before, after = text.split("<!--SIZE-->")     # no '<' in the data: page_json escapes it
    size = ""
    for _ in range(4):                  # the stated size is the size of the page stating it
        shown = f"{len((before + size + after).encode()) / 1e3:,.0f} KB"
        if shown == size:
            break
        size = shown
    return before + size + after


def write_explorer(run, out, m=None, log=None):
    """Measure (from the cache) and compute `run`'s page, written atomically to `out` -> its
    size in bytes. m: the run's Measurements, if the caller has them."""
    m = measure_run(run, log=log) if m is None else m
    text = page(explorer_data(run, m, log))
    atomic_write_text(out, text)
    return len(text.encode())


CSS = """body{font-family:sans-serif;max-width:1500px;margin:1em auto;padding:0 1em;color:#222}
h1{margin-bottom:0}.sub,.note{font-size:13px;color:#444}
#controls{position:sticky;top:0;background:#fff;padding:6px 0;z-index:2;display:flex;gap:10px;align-items:center;font-size:13px}
#slider{flex:1}#play{width:6em}#readout{font-size:14px;margin:4px 0 8px}
.tokens{font-family:monospace;font-size:12px;line-height:1.9;word-break:break-all}.keys{font-size:11px;line-height:1.7}
.tokens span{white-space:pre;padding:1px 0;margin-right:1px;border-radius:2px}
.tokens span.esc{font-style:italic;color:#666}.tokens span.rep{border-bottom:2px solid #2ca02c}
#passage span{cursor:pointer;background:#f3f3f3}#passage span:focus{outline:2px solid #d62728}
.tokens span.q{outline:1px solid #222}.tokens span.future{color:#bbb}
#heads{display:grid;gap:8px;margin-top:8px}.head{border:1px solid #ddd;padding:4px;min-width:0}
.head-name{font-size:13px}.head-scores{font-size:12px;color:#444}.top{font-size:11px;color:#555;min-height:1.3em}
canvas.map{width:100%;max-width:220px;image-rendering:pixelated;display:block;margin:3px 0;cursor:crosshair;border:1px solid #eee}
.induction{color:#d62728}.previous-token{color:#1f77b4}.other{color:#9a9a9a}
.chart{width:100%;height:150px;display:block}.chart-title{font-size:13px;margin-top:8px}
.chart text{font-size:11px;fill:#444}.chart .cursor{stroke:#d62728;stroke-width:1.5}
.swatch{display:inline-block;width:1.5em;height:0.9em;vertical-align:middle}"""

# Text from the data reaches the DOM only as textContent or title, never as HTML.
SCRIPT = r"""(function () {
"use strict";
const data = JSON.parse(document.getElementById("explorer-data").textContent);
const S = data.snapshots.length, T = data.ids.length, LH = data.heads.length, TRI = T * (T + 1) / 2;
const SVG_NS = document.getElementById("chart-prefix").namespaceURI;
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const slider = document.getElementById("slider"), play = document.getElementById("play");
let k = 0, q = data.query, timer = null;
const decoded = new Map();
function weights(index) {            // the snapshot's bytes, decoded once
  if (!decoded.has(index)) {
    const s = atob(data.snapshots[index].att.replace(/-/g, "+").replace(/_/g, "/")), a = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
    decoded.set(index, a);
  }
  return decoded.get(index);
}
function weight(a, head, query, key) { return a[head * TRI + query * (query + 1) / 2 + key] / 255; }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs, parent) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const name in attrs) e.setAttribute(name, attrs[name]);
  if (parent) parent.appendChild(e);
  return e;
}
const repeated = function (i) {
  const r = data.repeat;
  return (i >= r.first && i < r.first + r.length) || (i >= r.second && i < r.second + r.length);
};
function tokenRow(row) {
  data.labels.forEach(function (label, i) {
    const escaped = label === "BOS" || (label.length > 1 && label[0] === "\\");
    const span = el("span", (escaped ? "esc" : "") + (repeated(i) ? " rep" : ""), label);
    span.dataset.pos = i;
    row.appendChild(span);
  });
  return row;
}
const where = function (i) { return "'" + data.labels[i] + "'@" + i; };

// ---- the attention view -------------------------------------------------------------------
document.getElementById("word").textContent = JSON.stringify(data.repeat.word);
const passage = tokenRow(document.getElementById("passage"));
passage.querySelectorAll("span").forEach(function (span) { span.tabIndex = 0; });
const grid = document.getElementById("heads");
grid.style.gridTemplateColumns = "repeat(" + Math.min(data.n_heads, 6) + ", minmax(0, 340px))";
const SCALE = Math.max(1, Math.floor(256 / T));
const panels = data.heads.map(function (name, n) {
  const panel = el("div", "head"), title = el("div", "head-name");
  panel.dataset.head = name;
  title.appendChild(el("b", "", name + " "));
  const cls = title.appendChild(el("span", "cls"));
  const scores = el("div", "head-scores");
  scores.appendChild(document.createTextNode("prefix "));
  const pm = scores.appendChild(el("b", "pm"));
  scores.appendChild(document.createTextNode(" \u00b7 copying "));
  const cp = scores.appendChild(el("span", "cp"));
  scores.appendChild(document.createTextNode(" \u00b7 prev "));
  const pt = scores.appendChild(el("span", "pt"));
  const canvas = el("canvas", "map");
  canvas.width = canvas.height = T * SCALE;
  canvas.title = "head " + name + ": query (row) by key (column); hover a row";
  canvas.addEventListener("mousemove", function (event) {
    const box = canvas.getBoundingClientRect();
    const row = Math.min(T - 1, Math.max(0, Math.floor((event.clientY - box.top) / box.height * T)));
    if (row !== q) { q = row; drawAttention(); }
  });
  const keys = tokenRow(el("div", "tokens keys")), top = el("div", "top");
  [title, scores, canvas, keys, top].forEach(function (e) { panel.appendChild(e); });
  panel.addEventListener("mouseenter", function () { highlight(n, true); });
  panel.addEventListener("mouseleave", function () { highlight(n, false); });
  grid.appendChild(panel);
  return {panel: panel, cls: cls, pm: pm, cp: cp, pt: pt, canvas: canvas, keys: keys.children, top: top};
});
const fixed = function (x, digits) { return x === null || Number.isNaN(x) ? "-" : x.toFixed(digits); };
function drawAttention() {
  const s = data.snapshots[k], a = weights(k);
  document.getElementById("query").textContent = where(q);
  passage.querySelectorAll("span").forEach(function (span, i) { span.classList.toggle("q", i === q); });
  panels.forEach(function (p, n) {
    const cls = data.classes[s.cls[n]];
    p.cls.textContent = cls;
    p.cls.className = "cls " + cls;
    p.pm.textContent = fixed(s.pm[n], 3);
    p.cp.textContent = fixed(s.cp[n], 3);
    p.pt.textContent = fixed(s.pt[n], 3);
    const ctx = p.canvas.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, T * SCALE, T * SCALE);
    for (let i = 0; i < T; i++) {
      for (let j = 0; j <= i; j++) {
        const w = a[n * TRI + i * (i + 1) / 2 + j];
        if (w) { ctx.fillStyle = "rgba(31,119,180," + (w / 255) + ")"; ctx.fillRect(j * SCALE, i * SCALE, SCALE, SCALE); }
      }
    }
    ctx.strokeStyle = "#d62728";
    ctx.lineWidth = Math.max(1, SCALE / 2);
    ctx.strokeRect(0, q * SCALE, (q + 1) * SCALE, SCALE);
    const row = [];
    for (let j = 0; j < T; j++) {
      const span = p.keys[j], future = j > q, w = future ? 0 : weight(a, n, q, j);
      if (!future) row.push([w, j]);
      span.classList.toggle("future", future);
      span.classList.toggle("q", j === q);
      span.dataset.weight = future ? "" : w.toFixed(3);
      span.style.backgroundColor = "rgba(31,119,180," + w + ")";
      span.title = future ? where(j) + ": after the query" : where(q) + " -> " + where(j) + ": " + w.toFixed(3);
    }
    row.sort(function (x, y) { return y[0] - x[0]; });
    p.top.textContent = "strongest: " + row.slice(0, 3).map(function (t) { return where(t[1]) + " " + t[0].toFixed(3); }).join(", ");
  });
}
function pick(event) {
  const pos = event.target.dataset.pos;
  if (pos !== undefined && Number(pos) !== q) { q = Number(pos); drawAttention(); }
}
passage.addEventListener("mouseover", pick);
passage.addEventListener("focusin", pick);

// ---- the curves -----------------------------------------------------------------------------
const xs = data.snapshots.map(function (s) { return s.tokens; });
const WIDTH = 1000, HEIGHT = 150, M = {left: 52, right: 44, top: 8, bottom: 24};
function ticks(lo, hi, n) {         // about n round numbers in [lo, hi], as text too
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const step = [1, 2, 5, 10].map(function (f) { return f * mag; }).find(function (s) { return s >= raw; });
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  const out = [];
  for (let i = Math.ceil(lo / step); i * step <= hi + step * 1e-9; i++) out.push([i * step, (i * step).toFixed(decimals)]);
  return out;
}
const charts = [];
function chart(id, series, digits) {
  const root = document.getElementById(id);
  root.setAttribute("viewBox", "0 0 " + WIDTH + " " + HEIGHT);
  root.setAttribute("preserveAspectRatio", "none");
  const values = [].concat.apply([], series.map(function (c) { return c.values; })).filter(Number.isFinite);
  let lo = Math.min.apply(null, values), hi = Math.max.apply(null, values);
  if (!(hi > lo)) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.05;
  lo -= pad; hi += pad;
  const x0 = xs[0], x1 = xs[S - 1] > xs[0] ? xs[S - 1] : xs[0] + 1;
  const X = function (t) { return M.left + (t - x0) / (x1 - x0) * (WIDTH - M.left - M.right); };
  const Y = function (v) { return M.top + (hi - v) / (hi - lo) * (HEIGHT - M.top - M.bottom); };
  if (data.window) svg("rect", {"class": "window", x: X(data.window[0]), y: M.top, fill: "#ff7f0e40",
                                 width: Math.max(1, X(data.window[1]) - X(data.window[0])), height: HEIGHT - M.top - M.bottom}, root);
  (data.rise || []).forEach(function (t) {
    svg("line", {"class": "rise", x1: X(t), x2: X(t), y1: M.top, y2: HEIGHT - M.bottom, stroke: "#1f77b4",
                 "stroke-dasharray": "4 3"}, root);
  });
  ticks(lo, hi, 4).forEach(function (v) {
    svg("line", {x1: M.left, x2: WIDTH - M.right, y1: Y(v[0]), y2: Y(v[0]), stroke: "#eee"}, root);
    svg("text", {x: M.left - 4, y: Y(v[0]) + 4, "text-anchor": "end"}, root).textContent = v[1];
  });
  ticks(x0 / 1e6, x1 / 1e6, 8).forEach(function (v) {
    svg("text", {x: X(v[0] * 1e6), y: HEIGHT - 6, "text-anchor": "middle"}, root).textContent = v[1] + "M";
  });
  const lines = series.map(function (c) {
    const points = c.values.map(function (v, i) { return Number.isFinite(v) ? X(xs[i]) + "," + Y(v) : null; })
      .filter(function (p) { return p !== null; }).join(" ");
    const line = svg("polyline", {points: points, fill: "none", stroke: c.colour, "stroke-width": 1.3}, root);
    svg("title", {}, line).textContent = c.label;
    return line;
  });
  const cursor = svg("line", {"class": "cursor", y1: M.top, y2: HEIGHT - M.bottom}, root);
  const dots = series.map(function (c) { return svg("circle", {r: 3, fill: c.colour}, root); });
  const label = svg("text", {"class": "value", y: M.top + 10}, root);
  root.addEventListener("click", function (event) {
    const box = root.getBoundingClientRect(), t = x0 + ((event.clientX - box.left) / box.width * WIDTH - M.left)
      / (WIDTH - M.left - M.right) * (x1 - x0);
    let best = 0;
    xs.forEach(function (x, i) { if (Math.abs(x - t) < Math.abs(xs[best] - t)) best = i; });
    go(best);
  });
  charts.push({lines: lines, draw: function () {
    const x = X(xs[k]);
    cursor.setAttribute("x1", x);
    cursor.setAttribute("x2", x);
    series.forEach(function (c, n) {
      const v = c.values[k];
      dots[n].setAttribute("cx", x);
      dots[n].setAttribute("cy", Number.isFinite(v) ? Y(v) : -10);
    });
    label.setAttribute("x", Math.min(x + 6, WIDTH - M.right - 40));
    label.setAttribute("y", Number.isFinite(series[0].values[k]) ? Math.max(M.top + 10, Y(series[0].values[k]) - 6) : M.top + 10);
    label.textContent = series.length === 1 ? fixed(series[0].values[k], digits) : "";
  }});
}
chart("chart-prefix", data.heads.map(function (name, n) {
  return {label: "head " + name, colour: COLOURS[Number(name.split(".")[0]) % COLOURS.length],
          values: data.snapshots.map(function (s) { return s.pm[n] === null ? NaN : s.pm[n]; })};
}), 2);
chart("chart-icl", [{label: "ICL score", colour: "#2ca02c", values: data.snapshots.map(function (s) { return s.icl; })}], 3);
chart("chart-loss", [{label: "eval loss", colour: "#1f77b4", values: data.snapshots.map(function (s) { return s.loss; })}], 3);
function highlight(n, on) {
  const line = charts[0].lines[n];
  line.setAttribute("stroke-width", on ? 3 : 1.3);
  if (on) line.parentNode.insertBefore(line, line.parentNode.querySelector(".cursor"));
}

// ---- moving through the snapshots ----------------------------------------------------------
function phase(t) {
  const w = data.window;
  if (!w) return "no phase-change window in this run";
  return t < w[0] ? "before the phase-change window" : t > w[1] ? "after the phase-change window" : "inside the phase-change window";
}
function draw() {
  const s = data.snapshots[k];
  slider.value = k;
  document.getElementById("position").textContent = "snapshot " + (k + 1) + " of " + S;
  document.getElementById("step").textContent = s.step;
  document.getElementById("tokens").textContent = s.tokens.toLocaleString("en-US");
  document.getElementById("icl").textContent = fixed(s.icl, 3);
  document.getElementById("loss").textContent = fixed(s.loss, 3);
  document.getElementById("phase").textContent = phase(s.tokens);
  drawAttention();
  charts.forEach(function (c) { c.draw(); });
}
function go(index) {
  const next = Math.max(0, Math.min(S - 1, index));
  if (next !== k) { k = next; draw(); }
}
function stop() {
  if (timer !== null) clearInterval(timer);
  timer = null;
  play.textContent = "\u25b6 play";
  play.setAttribute("aria-pressed", "false");
}
function toggle() {
  if (timer !== null) { stop(); return; }
  if (k === S - 1) go(0);
  play.textContent = "\u275a\u275a pause";
  play.setAttribute("aria-pressed", "true");
  timer = setInterval(function () { if (k >= S - 1) stop(); else go(k + 1); },
                      1000 / Number(document.getElementById("speed").value));
}
slider.addEventListener("input", function () { go(Number(slider.value)); });
play.addEventListener("click", toggle);
document.getElementById("speed").addEventListener("change", function () { if (timer !== null) { stop(); toggle(); } });
document.addEventListener("keydown", function (event) {
  const target = event.target, pos = target.dataset && target.dataset.pos;
  if (event.altKey || event.ctrlKey || event.metaKey || target === slider || target.tagName === "SELECT") return;
  if (pos !== undefined && target.parentNode === passage) {      // a focused token: move the query
    const next = {ArrowLeft: -1, ArrowRight: 1}[event.key];
    const span = next && passage.children[Number(pos) + next];
    if (span) { event.preventDefault(); span.focus(); }
    return;
  }
  const moves = {ArrowLeft: k - 1, ArrowRight: k + 1, Home: 0, End: S - 1};
  if (event.key in moves) { event.preventDefault(); stop(); go(moves[event.key]); }
  else if (event.key === " " && target.tagName !== "BUTTON") { event.preventDefault(); toggle(); }
});
draw();
})();"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.explore",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("run", help="run directory or its run.npz")
    parser.add_argument("--out", help="the page to write (default <run>/explorer.html)")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    out = args.out
    try:
        run = Run(args.run, args.device)
        out = output_file(args.out or run.dir / "explorer.html", "--out", suffix=".html")
        start = time.time()
        with command_settings():
            size = write_explorer(run, out, log=lambda line: print(line, flush=True))
    except ValueError as e:
        return error(e)
    except OSError as e:
        return os_error(e, out)
    print(f"explorer: {out} ({size / 1e3:,.0f} KB, {time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
