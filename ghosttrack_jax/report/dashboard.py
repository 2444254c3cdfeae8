"""A self-contained, interactive HTML dashboard for one answer: its tracks across every layer, births and
deaths, top features with their activations, the 26 metrics and the detector's verdict.

The input is an *answer summary*, the JSON-ready dict that `detect.score_question` returns for the CLI
(keys below); `summary_from_outputs` builds the same dict for any example of a finished pipeline run from
the track stage's files (the report's case studies):

  question, answer (str); mode ("own_answer" | "given_text");
  probability, threshold (float | None); decision ("hallucinated" | "correct" | None); classifier (str);
  metrics {name: float} (the 26 GhostTrack metrics); answer_scalars {name: float} (optional);
  per_layer {stat: [L] floats} (optional: entropy, competition, dominance, density, list_length);
  layers [L] block indices (None: 0..L-1);
  tracks {birth [m], death [m] (-1 = alive at the last layer), act [m][L] (0 = no observation),
          fid [m][L] (-1 = absent)}: layer *positions* 0..L-1, as in tracks.npz;
  optional: id, label (1 = hallucinated), gold [str], model, dataset, n_layers.

The page has no external resources (inline CSS, SVG and script), so it can be mailed or attached to a
report. The track chart and tables are rendered here in Python; the script only adds interaction
(hover and click to highlight a track, a filter on peak activation, sortable tables).
"""

import html
import json

import numpy as np

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.detect import oof
from ghosttrack_jax.errors import DataError
from ghosttrack_jax.evaluate import metrics as metrics_lib
from ghosttrack_jax.runtime import atomic_io
from ghosttrack_jax.track import feature_table

_PALETTE = (
  "#1f77b4",
  "#ff7f0e",
  "#2ca02c",
  "#d62728",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#7f7f7f",
  "#bcbd22",
  "#17becf",
)
_TOP_PER_LAYER = 5  # features listed per layer in the layer table
_TOP_TRACKS = 20  # tracks listed in the top-features table


def _e(x) -> str:
  return html.escape(str(x), quote=True)


def _num(x, nd: int = 3) -> str:
  if x is None:
    return "–"
  try:
    x = float(x)
  except (TypeError, ValueError):
    return _e(x)
  if not np.isfinite(x):
    return str(x)
  if x == int(x) and abs(x) < 1e9:
    return str(int(x))
  return f"{x:.{nd}g}" if abs(x) >= 1e4 or (x and abs(x) < 1e-3) else f"{x:.{nd}f}"


def _tracks(summary: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
  t = summary.get("tracks") or {}
  n_layers = int(
    summary.get("n_layers")
    or len(summary.get("layers") or [])
    or (np.asarray(t.get("act", [[]])).shape[-1] if t else 0)
  )
  if n_layers == 0:
    e = np.zeros(0, np.int64)
    return e, e, np.zeros((0, 0)), np.zeros((0, 0), np.int64), 0
  act = np.asarray(t.get("act", np.zeros((0, n_layers))), np.float64).reshape(-1, n_layers)
  fid = np.asarray(t.get("fid", np.full(act.shape, -1)), np.int64).reshape(act.shape)
  birth = np.asarray(t.get("birth", np.zeros(len(act))), np.int64).reshape(-1)
  death = np.asarray(t.get("death", np.full(len(act), -1)), np.int64).reshape(-1)
  keep = birth >= 0  # batches pad with birth = -1
  return birth[keep], death[keep], act[keep], fid[keep], n_layers


def layer_rows(summary: dict) -> list[dict]:
  """One row per layer: active tracks, births, deaths and the strongest features there."""
  birth, death, act, fid, n_layers = _tracks(summary)
  layers = summary.get("layers") or list(range(n_layers))
  per_layer = summary.get("per_layer") or {}
  rows = []
  for pos in range(n_layers):
    observed = np.nonzero(fid[:, pos] >= 0)[0]
    order = observed[np.argsort(-act[observed, pos], kind="stable")][:_TOP_PER_LAYER]
    rows.append(
      {
        "pos": pos,
        "layer": int(layers[pos]),
        "active": int(observed.size),
        "births": int(np.sum(birth == pos)),
        "deaths": int(np.sum(death == pos)),
        "top": [(int(fid[i, pos]), float(act[i, pos]), int(i)) for i in order],
        "stats": {k: (v[pos] if pos < len(v) else None) for k, v in per_layer.items()},
      }
    )
  return rows


def top_tracks(summary: dict, n: int = _TOP_TRACKS) -> list[dict]:
  """The n tracks with the largest peak activation, with their feature path across layers."""
  birth, death, act, fid, n_layers = _tracks(summary)
  layers = summary.get("layers") or list(range(n_layers))
  peak = act.max(axis=1) if act.size else np.zeros(0)
  out = []
  for i in np.argsort(-peak, kind="stable")[:n]:
    obs = np.nonzero(fid[i] >= 0)[0]
    out.append(
      {
        "track": int(i),
        "birth": int(layers[birth[i]]),
        "death": None if death[i] < 0 else int(layers[death[i]]),
        "length": int(obs.size),
        "peak": float(peak[i]),
        "peak_layer": int(layers[int(np.argmax(act[i]))]),
        "path": [(int(layers[p]), int(fid[i, p]), float(act[i, p])) for p in obs],
      }
    )
  return out


def _svg_tracks(summary: dict) -> str:
  """Activation of every track (y) across every layer (x); circle = birth, cross = death."""
  birth, death, act, fid, n_layers = _tracks(summary)
  layers = summary.get("layers") or list(range(n_layers))
  w, h, left, right, top, bottom = 900, 340, 56, 16, 16, 44
  step = (w - left - right) / max(1, n_layers - 1)
  y_max = float(act.max()) if act.size and act.max() > 0 else 1.0
  xs = lambda p: left + p * step  # noqa: E731
  ys = lambda v: top + (h - top - bottom) * (1 - v / y_max)  # noqa: E731
  parts = [
    f'<svg id="track-chart" viewBox="0 0 {w} {h}" width="100%" role="img" '
    f'aria-label="tracks across {n_layers} layers">',
    f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>',
  ]
  for k in range(5):  # horizontal grid and y labels
    v = y_max * k / 4
    parts.append(
      f'<line x1="{left}" x2="{w - right}" y1="{ys(v):.1f}" y2="{ys(v):.1f}" '
      f'stroke="#e5e5e5"/><text x="{left - 6}" y="{ys(v) + 4:.1f}" text-anchor="end" '
      f'class="tick">{_num(v, 2)}</text>'
    )
  label_every = max(1, n_layers // 24)
  for p in range(n_layers):
    x = xs(p)
    parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{h - bottom}" stroke="#f0f0f0"/>')
    if p % label_every == 0 or p == n_layers - 1:
      parts.append(
        f'<text x="{x:.1f}" y="{h - bottom + 16}" text-anchor="middle" class="tick" '
        f'data-axis-layer="{int(layers[p])}">{int(layers[p])}</text>'
      )
  parts.append(
    f'<text x="{(left + w - right) / 2}" y="{h - 6}" text-anchor="middle" class="axis">layer'
    f'</text><text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" class="axis" '
    f'transform="rotate(-90 14 {(top + h - bottom) / 2})">activation</text>'
  )
  for i in np.argsort(act.max(axis=1) if act.size else np.zeros(0), kind="stable"):  # strongest on top
    obs = np.nonzero(fid[i] >= 0)[0]
    if not obs.size:
      continue
    color = _PALETTE[i % len(_PALETTE)]
    pts = " ".join(f"{xs(p):.1f},{ys(act[i, p]):.1f}" for p in obs)
    path = "; ".join(f"L{int(layers[p])}:f{int(fid[i, p])}={act[i, p]:.3g}" for p in obs)
    parts.append(
      f'<g class="track" data-track="{i}" data-peak="{act[i].max():.6g}" '
      f'data-path="{_e(path)}"><polyline points="{pts}" fill="none" stroke="{color}" '
      f'stroke-width="1.6" opacity="0.85"/>'
    )
    b = obs[0]
    parts.append(
      f'<circle cx="{xs(b):.1f}" cy="{ys(act[i, b]):.1f}" r="3.5" fill="{color}">'
      f"<title>track {i} born at layer {int(layers[b])}</title></circle>"
    )
    if death[i] >= 0:
      d = int(death[i])
      x, y = xs(d), ys(act[i, d])
      parts.append(
        f'<path d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}M{x - 4:.1f},{y + 4:.1f}'
        f'L{x + 4:.1f},{y - 4:.1f}" stroke="#000" stroke-width="1.5">'
        f"<title>track {i} dies after layer {int(layers[d])}</title></path>"
      )
    parts.append("</g>")
  parts.append("</svg>")
  return "".join(parts)


def _svg_births_deaths(rows: list[dict]) -> str:
  """Births (up) and deaths (down) per layer."""
  n = len(rows)
  w, h, left, mid = 900, 160, 56, 80
  step = (w - left - 16) / max(1, n)
  peak = max([1] + [max(r["births"], r["deaths"]) for r in rows])
  scale = (mid - 12) / peak
  parts = [
    f'<svg id="birth-death-chart" viewBox="0 0 {w} {h}" width="100%" role="img" '
    f'aria-label="births and deaths per layer"><rect width="{w}" height="{h}" fill="#fff"/>',
    f'<line x1="{left}" x2="{w - 16}" y1="{mid}" y2="{mid}" stroke="#999"/>',
    f'<text x="{left - 6}" y="{mid - 30}" text-anchor="end" class="tick">births</text>',
    f'<text x="{left - 6}" y="{mid + 38}" text-anchor="end" class="tick">deaths</text>',
  ]
  for r in rows:
    x = left + r["pos"] * step + step * 0.15
    bw = step * 0.7
    if r["births"]:
      parts.append(
        f'<rect x="{x:.1f}" y="{mid - r["births"] * scale:.1f}" width="{bw:.1f}" '
        f'height="{r["births"] * scale:.1f}" fill="#2ca02c"><title>layer {r["layer"]}: '
        f"{r['births']} births</title></rect>"
      )
    if r["deaths"]:
      parts.append(
        f'<rect x="{x:.1f}" y="{mid}" width="{bw:.1f}" height="{r["deaths"] * scale:.1f}" '
        f'fill="#d62728"><title>layer {r["layer"]}: {r["deaths"]} deaths</title></rect>'
      )
  parts.append("</svg>")
  return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:20px;margin:0 0 8px} h2{font-size:16px;margin:24px 0 8px}
.verdict{padding:12px 16px;border-radius:6px;font-size:18px;margin:12px 0}
.hallucinated{background:#fde2e1;border:1px solid #d62728} .correct{background:#e3f4e1;border:1px solid #2ca02c}
.unknown{background:#eee;border:1px solid #999}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f5f5f5;cursor:pointer} .tick{font-size:11px;fill:#555} .axis{font-size:12px;fill:#333}
.qa{display:grid;grid-template-columns:110px 1fr;gap:4px 12px;font-size:14px} .qa b{color:#555}
#info{min-height:1.4em;font-family:monospace;font-size:12px;margin:6px 0;color:#333}
.track.dim{opacity:.12} .track.hl polyline{stroke-width:3.5} .grid2{display:grid;grid-template-columns:1fr 1fr;gap:16px}
tr.hl td{background:#fff6d5}
"""

_JS = """
(function () {
  var chart = document.getElementById('track-chart');
  var info = document.getElementById('info');
  var tracks = chart ? Array.prototype.slice.call(chart.querySelectorAll('g.track')) : [];
  var pinned = null;
  function show(g) {
    tracks.forEach(function (t) { t.classList.toggle('dim', g !== null && t !== g);
                                  t.classList.toggle('hl', t === g); });
    document.querySelectorAll('tr[data-track]').forEach(function (r) {
      r.classList.toggle('hl', g !== null && r.getAttribute('data-track') === g.getAttribute('data-track'));
    });
    info.textContent = g ? 'track ' + g.getAttribute('data-track') + ': ' + g.getAttribute('data-path')
                         : 'Hover or click a track (or a row of the top-features table).';
  }
  tracks.forEach(function (g) {
    g.addEventListener('mouseenter', function () { if (pinned === null) { show(g); } });
    g.addEventListener('mouseleave', function () { if (pinned === null) { show(null); } });
    g.addEventListener('click', function () { pinned = (pinned === g) ? null : g; show(pinned); });
  });
  document.querySelectorAll('tr[data-track]').forEach(function (r) {
    r.addEventListener('click', function () {
      var g = chart.querySelector('g.track[data-track="' + r.getAttribute('data-track') + '"]');
      pinned = (pinned === g) ? null : g; show(pinned);
    });
  });
  var slider = document.getElementById('min-peak');
  var label = document.getElementById('min-peak-value');
  if (slider) {
    slider.addEventListener('input', function () {
      var v = parseFloat(slider.value);
      label.textContent = v.toPrecision(3);
      tracks.forEach(function (t) {
        t.style.display = parseFloat(t.getAttribute('data-peak')) >= v ? '' : 'none';
      });
    });
  }
  document.querySelectorAll('table.sortable th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = th.closest('table').tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-asc') !== '1';
      th.setAttribute('data-asc', asc ? '1' : '0');
      rows.sort(function (a, b) {
        var x = a.cells[th.cellIndex].getAttribute('data-v') || a.cells[th.cellIndex].textContent;
        var y = b.cells[th.cellIndex].getAttribute('data-v') || b.cells[th.cellIndex].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  show(null);
})();
"""


def render_dashboard(summary: dict, title: str | None = None) -> str:
  """The dashboard page for one answer summary (see the module docstring) as one HTML string."""
  rows = layer_rows(summary)
  if not rows:
    raise DataError("the answer summary has no layers: give `layers` or `tracks.act` with a layer axis")
  tops = top_tracks(summary)
  prob, thr, decision = summary.get("probability"), summary.get("threshold"), summary.get("decision")
  if decision is None and prob is not None and thr is not None:
    decision = "hallucinated" if prob >= thr else "correct"
  verdict_cls = decision if decision in ("hallucinated", "correct") else "unknown"
  verdict = (
    f"Verdict: <b>{_e(decision)}</b> &mdash; P(hallucinated) = {_num(prob)} "
    f"(threshold {_num(thr)}, {_e(summary.get('classifier', 'detector'))})"
    if decision
    else "Verdict: not scored (no detector output in this summary)"
  )
  label = summary.get("label")
  truth = (
    "" if label is None else f" &middot; gold label: <b>{'hallucinated' if int(label) else 'correct'}</b>"
  )
  title = title or f"GhostTrack: {summary.get('id') or summary.get('question', '')[:60]}"
  gold = summary.get("gold") or []
  qa = [
    ("model", summary.get("model")),
    ("dataset", summary.get("dataset")),
    ("example", summary.get("id")),
    ("mode", summary.get("mode")),
    ("question", summary.get("question")),
    ("answer", summary.get("answer")),
    ("gold", "; ".join(map(str, gold)) if gold else None),
  ]
  peaks = [t["peak"] for t in tops]
  stats = sorted({k for r in rows for k in r["stats"]})
  out = [
    f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
    f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{_CSS}</style></head><body>',
    f"<h1>{_e(title)}</h1>",
    '<div class="qa">',
  ]
  out += [f"<b>{_e(k)}</b><span>{_e(v)}</span>" for k, v in qa if v not in (None, "")]
  out.append(f'</div><div class="verdict {verdict_cls}" id="verdict">{verdict}{truth}</div>')
  n_tracks = len(_tracks(summary)[0])
  out.append(f"<h2>Tracks across all {len(rows)} layers ({n_tracks} tracks)</h2>")
  out.append(
    f'<label>minimum peak activation <input type="range" id="min-peak" min="0" '
    f'max="{max(peaks + [0]):.6g}" step="{max(peaks + [1e-6]) / 100:.6g}" value="0"> '
    f'<span id="min-peak-value">0</span></label><div id="info"></div>'
  )
  out.append(_svg_tracks(summary))
  out.append("<h2>Births and deaths per layer</h2>" + _svg_births_deaths(rows))
  out.append(
    '<div class="grid2"><div><h2>Metrics</h2><table class="sortable" id="metrics">'
    "<thead><tr><th>metric</th><th>value</th></tr></thead><tbody>"
  )
  for k, v in (summary.get("metrics") or {}).items():
    out.append(f'<tr><td>{_e(k)}</td><td data-v="{_e(v)}">{_num(v)}</td></tr>')
  for k, v in (summary.get("answer_scalars") or {}).items():
    out.append(f'<tr><td>{_e(k)} (answer)</td><td data-v="{_e(v)}">{_num(v)}</td></tr>')
  out.append("</tbody></table></div><div>")
  out.append(
    '<h2>Top features (tracks by peak activation)</h2><table class="sortable" id="top-tracks">'
    "<thead><tr><th>track</th><th>birth</th><th>death</th><th>layers</th><th>peak</th>"
    "<th>peak layer</th><th>features (layer:feature)</th></tr></thead><tbody>"
  )
  for t in tops:
    feats = " ".join(f"{l}:{f}" for l, f, _ in t["path"][:8]) + (" …" if len(t["path"]) > 8 else "")
    out.append(
      f'<tr data-track="{t["track"]}"><td>{t["track"]}</td><td>{t["birth"]}</td>'
      f"<td>{'alive' if t['death'] is None else t['death']}</td><td>{t['length']}</td>"
      f'<td data-v="{t["peak"]:.6g}">{_num(t["peak"])}</td><td>{t["peak_layer"]}</td>'
      f"<td>{_e(feats)}</td></tr>"
    )
  out.append("</tbody></table></div></div>")
  out.append(
    '<h2>Every layer</h2><table class="sortable" id="layers"><thead><tr><th>layer</th>'
    "<th>active tracks</th><th>births</th><th>deaths</th>"
    + "".join(f"<th>{_e(k)}</th>" for k in stats)
    + f"<th>top {_TOP_PER_LAYER} features (feature: activation)</th></tr></thead><tbody>"
  )
  for r in rows:
    top = ", ".join(f"f{f}: {_num(a)}" for f, a, _ in r["top"]) or "–"
    out.append(
      f'<tr data-layer="{r["layer"]}"><td>{r["layer"]}</td><td>{r["active"]}</td>'
      f"<td>{r['births']}</td><td>{r['deaths']}</td>"
      + "".join(f'<td data-v="{_e(r["stats"].get(k))}">{_num(r["stats"].get(k))}</td>' for k in stats)
      + f"<td>{_e(top)}</td></tr>"
    )
  out.append("</tbody></table>")
  data = json.dumps(
    {k: summary.get(k) for k in ("id", "probability", "threshold", "decision")}, default=float
  ).replace("</", "<\\/")
  out.append(f'<script type="application/json" id="summary">{data}</script>')
  out.append(f"<script>{_JS}</script></body></html>")
  return "\n".join(out)


def write_dashboard(summary: dict, path: str, title: str | None = None) -> str:
  """Writes the dashboard atomically to `path`; returns the path."""
  atomic_io.atomic_write_text(path, render_dashboard(summary, title))
  return path


def summary_from_outputs(
  config, workdir: str, example_id: str, dataset: str | None = None, method: str | None = None
) -> dict:
  """The answer summary of one example of a finished run, from the track stage's `tracks.npz` (so the
  example must be one of its `config.tracking.n_track_examples`), `features.npz`, `summaries.npz`,
  the examples table and, when the detect stage ran, its out-of-fold score (repeat 0) and the
  threshold chosen on that fold's training folds."""
  dataset = dataset or config_lib.question_set(config)
  method = method or metrics_lib.PRIMARY
  tdir = feature_table.directory(config, workdir, dataset)
  arrays, meta = feature_table.load_features(tdir)
  tr = feature_table.load_tracks(tdir)
  ids = tr["example_id"].astype(str)
  if example_id not in set(ids):
    raise DataError(
      f"example {example_id!r} has no stored tracks in {tdir}/tracks.npz (it keeps "
      f"{len(ids)} examples, e.g. {list(ids[:3])}); raise config.tracking.n_track_examples "
      "or score the question with the scoring CLI"
    )
  i = int(np.nonzero(ids == example_id)[0][0])
  m = int(tr["n_tracks"][i])
  row = int(np.nonzero(arrays["example_id"].astype(str) == example_id)[0][0])
  metrics = dict(zip(meta["feature_sets"]["ghosttrack"]["columns"], arrays["X__ghosttrack"][row].tolist()))
  scal = (
    dict(
      zip(meta["feature_sets"]["scalar_baselines"]["columns"], arrays["X__scalar_baselines"][row].tolist())
    )
    if "X__scalar_baselines" in arrays
    else {}
  )
  per_layer = {}
  summaries = feature_table.load_summaries(tdir)
  if summaries is not None:
    srow = int(np.nonzero(summaries["example_id"].astype(str) == example_id)[0][0])
    per_layer = {k[len("layer_") :]: v[srow].tolist() for k, v in summaries.items() if k.startswith("layer_")}
  example = next(
    (e for e in examples_lib.load_examples(config, workdir, dataset) if e["id"] == example_id), {}
  )
  summary = {
    "id": example_id,
    "model": config.model.name,
    "dataset": dataset,
    "mode": meta.get("mode"),
    "question": example.get("question", ""),
    "answer": example.get("answer_text", ""),
    "gold": example.get("gold", []),
    "label": int(tr["label"][i]) if "label" in tr else example.get("label"),
    "layers": meta["layers"],
    "n_layers": meta["n_layers"],
    "metrics": metrics,
    "answer_scalars": scal,
    "per_layer": per_layer,
    "probability": None,
    "threshold": None,
    "decision": None,
    "classifier": method,
    "tracks": {
      "birth": tr["birth"][i, :m].tolist(),
      "death": tr["death"][i, :m].tolist(),
      "act": tr["act"][i, :m].tolist(),
      "fid": tr["fid"][i, :m].tolist(),
    },
  }
  det_dir = oof.directory(config, workdir, dataset)
  if atomic_io.is_done(det_dir):
    z = oof.load_scores(det_dir)
    names = [str(n) for n in z["methods"]]
    eids = z["example_id"].astype(str)
    if method in names and example_id in set(eids):
      k, n = names.index(method), int(np.nonzero(eids == example_id)[0][0])
      fold = int(z["folds"][0, n])
      summary["probability"] = float(z["scores"][k, 0, n])
      summary["threshold"] = float(z["thresholds"][k, 0, fold])
  return summary
