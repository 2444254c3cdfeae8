"""The report as Markdown and as self-contained HTML (plots inline as base64 PNGs, no external assets)."""

import html
import json

import numpy as np

KIND_ORDER = (
  "ghosttrack",
  "ghosttrack_classifier",
  "ghosttrack_tuned",
  "reconstruction",
  "ablation",
  "sweep",
  "baseline",
  "unsupervised",
  "probe",
  "surface",
  "question_only",
  "combined",
  "incremental",
  "other",
)


def fmt(x, nd=3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def fmt_ci(ci, nd=3) -> str:
  if not ci or ci[0] is None:
    return "n/a"
  return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def method_rows(metrics: dict) -> list[dict]:
  rows = []
  for name, m in metrics["methods"].items():
    dv = m.get("delta_vs_ghosttrack") or {}
    rows.append(
      {
        "method": name,
        "kind": m.get("kind", "other"),
        "label": m.get("label", name),
        "auroc": m["auroc"],
        "auroc_ci": m["auroc_ci"],
        "auprc": m["auprc"],
        "auprc_ci": m["auprc_ci"],
        "auprc_neg": m.get("auprc_correct_positive"),
        "prr": m.get("prr"),
        "prr_ci": m.get("prr_ci"),
        "balanced_accuracy": m["at_threshold"]["balanced_accuracy"],
        "f1": m["at_threshold"]["f1"],
        "per_fold": (m["per_fold_auroc_mean"], m["per_fold_auroc_sd"]),
        "delta": dv.get("delta"),
        "delta_ci": dv.get("ci"),
        "delta_sig": dv.get("excludes_zero"),
      }
    )
  rows.sort(key=lambda r: (KIND_ORDER.index(r["kind"]) if r["kind"] in KIND_ORDER else 99))
  return rows


def md_table(header, rows) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
  return "\n".join(out)


def html_table(header, rows) -> str:
  h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
  body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
  return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


AUROC_HEADER = [
  "method",
  "kind",
  "AUROC",
  "95% CI",
  "AUPRC",
  "AUPRC CI",
  "AUPRC (correct = +)",
  "PRR",
  "PRR CI",
  "bal. acc.",
  "F1",
  "per-fold AUROC",
  "Δ vs GhostTrack",
  "Δ CI",
]


def auroc_table(metrics: dict) -> list[list]:
  out = []
  for r in method_rows(metrics):
    pf = r["per_fold"]
    out.append(
      [
        r["method"],
        r["kind"],
        fmt(r["auroc"]),
        fmt_ci(r["auroc_ci"]),
        fmt(r["auprc"]),
        fmt_ci(r["auprc_ci"]),
        fmt(r["auprc_neg"]),
        fmt(r["prr"]),
        fmt_ci(r["prr_ci"]),
        fmt(r["balanced_accuracy"]),
        fmt(r["f1"]),
        f"{fmt(pf[0])} ± {fmt(pf[1])}",
        fmt(r["delta"]) + (" *" if r["delta_sig"] else ""),
        fmt_ci(r["delta_ci"]),
      ]
    )
  return out


def _sae_table(sq: dict) -> tuple[list, list] | None:
  if "rows" not in sq:
    return None
  cols = sq["columns"]
  return cols, [
    [fmt(r.get(c), 4) if isinstance(r.get(c), float) else r.get(c, "") for c in cols] for r in sq["rows"]
  ]


LV_HEADER = ["label method", "n (correct / halluc.)", "method", "AUROC", "95% CI"]


def _label_variant_rows(d: dict) -> list[list]:
  rows = []
  for lm, e in ((d.get("label_variants") or {}).get("variants") or {}).items():
    n = f"{e['n_correct'] + e['n_hallucinated']} ({e['n_correct']} / {e['n_hallucinated']})"
    if e.get("skipped"):
      rows.append([lm, n, "skipped: " + e["skipped"], "n/a", "n/a"])
    for name, m in e.get("methods", {}).items():
      rows.append([lm, n, name, fmt(m["auroc"]), fmt_ci(m["auroc_ci"])])
  return rows


def _claim_text(d: dict) -> str:
  g = d.get("ghosttrack_minus_best_baseline")
  parts = []
  if d["n_correct"] == 0 or d["n_hallucinated"] == 0:
    parts.append("Only one class is present: no detector can be evaluated on this run.")
  if g:
    if d["claim"]["ghosttrack_beats_best_baseline"]:
      verdict = "GhostTrack beats it (CI above 0)"
    elif g["ci"][1] is not None and g["ci"][1] < 0:
      verdict = "GhostTrack is worse than it (CI below 0)"
    else:
      verdict = "no evidence of a difference (CI includes 0)"
    parts.append(
      f"Strongest baseline: {d['best_baseline']}. AUROC(GhostTrack) − AUROC(baseline) = "
      f"{fmt(g['delta'])} {fmt_ci(g['ci'])}: {verdict}."
    )
  inc = d.get("incremental")
  if inc and inc["delta"] is None:
    parts.append("Incremental value undefined (AUROC undefined).")
  elif inc:
    parts.append(
      f"Incremental: {inc['with']} − {inc['without']} = {fmt(inc['delta'])} {fmt_ci(inc['ci'])}"
      + (" (CI excludes 0)." if d["claim"]["incremental_value"] else " (CI includes 0).")
    )
  return " ".join(parts) or "GhostTrack or baselines missing: no comparison possible."


def _delta_text(what: str, g: dict | None) -> str:
  if not g or g.get("delta") is None:
    return ""
  sig = "CI excludes 0" if g["excludes_zero"] else "CI includes 0"
  return f"{what} = {fmt(g['delta'])} {fmt_ci(g['ci'])} ({sig})."


def controls(d: dict) -> list[tuple[str, list, list] | str]:
  """The controls section as text lines and (title, header, rows) tables, shared by Markdown and HTML."""
  out = []
  if d.get("best_question_only"):
    out.append(
      _delta_text(
        f"GhostTrack − best question-only control ({d['best_question_only']})",
        d["ghosttrack_minus_question_only"],
      )
      + " GhostTrack counts only where it beats what the question alone gives away."
    )
  inc = d.get("incremental_over_question") or {}
  if inc:
    out.append(
      (
        "Incremental over the question-only bar (X + question-only features vs the question-only features "
        "alone, paired bootstrap)",
        ["with", "without", "Δ AUROC", "95% CI"],
        [
          [v["with"], v["without"], fmt(v["delta"]) + (" *" if v["excludes_zero"] else ""), fmt_ci(v["ci"])]
          for v in inc.values()
        ],
      )
    )
  loro = d.get("relation_held_out")
  if loro:
    out.append(
      (
        f"Relation held out ({loro['n_relations']} relations in {loro['n_folds']} folds of whole relations, "
        f"{loro['n_relations_both_classes']} with both classes): every score comes from a model that never "
        "saw the answer's relation. Pooled = one AUROC over all held-out scores; macro = the mean of the "
        "per-relation AUROCs (within a relation, where the relation itself carries no information)",
        ["method", "pooled AUROC", "95% CI", "macro AUROC", "95% CI", "PRR", "PRR CI"],
        [
          [
            n,
            fmt(m["auroc"]),
            fmt_ci(m["auroc_ci"]),
            fmt(m["macro_auroc"]),
            fmt_ci(m["macro_auroc_ci"]),
            fmt(m["prr"]),
            fmt_ci(m["prr_ci"]),
          ]
          for n, m in loro["methods"].items()
        ],
      )
    )
  for line in d.get("not_run", []):
    out.append(line)
  pr = d.get("per_relation")
  if pr:
    within = pr["within"]
    out.append(
      (
        "Within-relation AUROC (pairs from the same relation only). A score fixed per relation gives 0.5, but "
        "out-of-fold fits on small relations push relation-level scores below it: read each row against "
        "the question-only control's",
        ["method", "within-relation AUROC", "95% CI", "relations"],
        [[n, fmt(w["auroc"]), fmt_ci(w["auroc_ci"]), w["n_relations"]] for n, w in within.items()],
      )
    )
    names = list(within)
    rows = [
      [r, e["n_correct"], e["n_hallucinated"]] + [fmt(e["auroc"].get(n)) for n in names]
      for r, e in pr["relations"].items()
    ]
    out.append(
      (
        f"Per-relation AUROC (relations with at least {pr['min_per_class']} answers in each class)",
        ["relation", "correct", "hallucinated"] + names,
        rows,
      )
      if rows
      else f"No relation has {pr['min_per_class']} answers in each class: no per-relation rows (see within-relation)."
    )
  assoc = d.get("association_per_layer")
  if assoc:
    out.append(
      (
        "Tracker: associations accepted per layer (tracks alive at l continued to l+1; born and died at l "
        "= never continued)",
        ["layer", "alive", "continued", "accepted share", "born and died here"],
        [
          [r["layer"], r["alive"], r["continued"], fmt(r["accepted_share"], 2), r["born_and_died_here"]]
          for r in assoc
        ],
      )
    )
  a = d.get("answers") or {}
  if a.get("flags_by_class"):
    out.append(
      (
        "Answer flags per class",
        ["flag", "correct", "hallucinated"],
        [[f, c[0], c[1]] for f, c in a["flags_by_class"].items()],
      )
    )
  au = d.get("label_audit")
  if au:
    if au["n_matched"]:
      out.append(
        f"Label audit ({au['file']}): {au['n_agree']} of {au['n_matched']} hand-checked labels agree "
        f"({fmt(au['agreement'])}); {au['n_audited'] - au['n_matched']} audited answers are not in this run."
      )
      if au["disagreements"]:
        out.append(
          (
            "Label audit: disagreements",
            ["id", "answer", "gold", "label", "reason"],
            [
              [x["id"], x["answer"], "; ".join(x["gold"][:3]), x["label"], x["reason"]]
              for x in au["disagreements"]
            ],
          )
        )
    else:
      out.append(
        f"Label audit ({au['file']}) is of another run: none of its {au['n_audited']} answers is in this one."
      )
  return out


def transfer_tables(t: dict | None) -> list[tuple[str, list, list]]:
  """One table per method: AUROC [CI] of a detector fit on the row's set and scored on the column's
  (the diagonal: the set's own cross-validated AUROC)."""
  if not t:
    return []
  sets = t["datasets"]
  out = []
  for method, cells in t["methods"].items():
    rows = []
    for a in sets:
      row = [a]
      for b in sets:
        c = cells.get(a, {}).get(b)
        row.append("n/a" if not c else f"{fmt(c['auroc'])} {fmt_ci(c['auroc_ci'])}")
      rows.append(row)
    out.append(
      (
        f"Transfer across question sets: {method} (rows: fit on, columns: scored on)",
        ["fit on \\ scored on"] + sets,
        rows,
      )
    )
  return out


def _summary_lines(rep: dict, name: str, d: dict) -> list[str]:
  a = d.get("answers") or {}
  lines = [
    f"Mode: **{d['mode_title']}**. Model `{rep['model']}` ({rep['model_source']}), dataset `{name}`, "
    f"label method `{d['label_method']}`.",
    f"Examples: {d['n_examples']} ({d['n_correct']} correct, {d['n_hallucinated']} hallucinated; "
    f"prevalence {fmt(d['prevalence'])} = AUPRC chance level; {fmt(1 - d['prevalence'])} for AUPRC with "
    f"correct = +), {d['n_groups']} question groups, "
    f"{d['n_folds']}-fold grouped CV × {d['n_repeats']} repeat(s), {d['n_bootstrap']} question "
    "resamples for the intervals.",
  ]
  if a.get("label_rates"):
    rates = ", ".join(f"{k}: {v['n_correct']} correct" for k, v in a["label_rates"].items())
    lines.append(f"Label rates under every method: {rates}.")
  if a.get("n_excluded"):
    lines.append(f"Excluded before folding: {a['n_excluded']} ({a.get('excluded_reasons')}).")
  return lines


def to_markdown(rep: dict) -> str:
  out = [
    f"# GhostTrack report: {rep['model']}",
    "",
    f"Code commit `{rep['code']['commit']}`"
    + (" (uncommitted changes)" if rep["code"]["dirty"] else "")
    + ".",
  ]
  for name, d in rep["datasets"].items():
    out += ["", f"## {name} — {d['mode_title']}", ""] + _summary_lines(rep, name, d)
    out += ["", _claim_text(d), ""]
    for w in d["warnings"]:
      out.append(f"> warning: {w}")
    out += [
      "",
      f"### AUROC table ({d['mode_title']}; positive class = hallucinated)",
      "",
      md_table(AUROC_HEADER, auroc_table({"methods": d["methods"]})),
      "",
      "Δ marked * when its paired-bootstrap 95% CI excludes 0. Thresholds for balanced accuracy / F1 "
      "were chosen on training folds only.",
      "",
    ]
    ctl = controls(d)
    if ctl:
      out += ["### Controls", ""]
      for c in ctl:
        out += [f"**{c[0]}**", "", md_table(c[1], c[2]), ""] if isinstance(c, tuple) else [c, ""]
    lv = _label_variant_rows(d)
    if lv:
      out += ["### Label-method sensitivity (same folds)", "", md_table(LV_HEADER, lv), ""]
    if d["degeneracy"]:
      out += ["### Degeneracy", ""]
      out += [
        md_table(
          ["feature set", "constant", "near-constant", "effective rank (99%)"],
          [
            [
              k,
              ", ".join(v["constant"]) or "none",
              ", ".join(v["near_constant"]) or "none",
              v["effective_rank_99"],
            ]
            for k, v in d["degeneracy"].items()
          ],
        ),
        "",
      ]
    if d["case_studies"]:
      out += ["### Case studies", ""]
      out += [
        md_table(
          ["id", "label", "P(halluc.)", "question", "answer", "gold"],
          [
            [
              c["id"],
              "hallucinated" if c["label"] else "correct",
              fmt(c["score"], 2),
              c["question"],
              c["answer"],
              "; ".join(c["gold"][:3]),
            ]
            for c in d["case_studies"]
          ],
        ),
        "",
      ]
  out += ["## SAE quality per layer", ""]
  t = _sae_table(rep["sae_quality"])
  out += [md_table(*t) if t else f"_{rep['sae_quality'].get('note')}_", ""]
  out += [f"- {n}" for n in rep["sae_quality"].get("notes", [])]
  if rep["sae_quality"].get("targets"):
    out += [f"- targets: {json.dumps(rep['sae_quality']['targets'])}"]
  for title, header, rows in transfer_tables(rep.get("transfer")):
    out += [f"## {title}", "", md_table(header, rows), ""]
  return "\n".join(out) + "\n"


CSS = (
  "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
  "table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
  "th{background:#eee}.warn{color:#a40}img{max-width:100%}.mode{background:#ffe;padding:4px}"
)


def to_html(rep: dict, plots: dict) -> str:
  e = html.escape
  out = [
    f"<!doctype html><html><head><meta charset='utf-8'><title>GhostTrack report: {e(rep['model'])}</title>"
    f"<style>{CSS}</style></head><body>",
    f"<h1>GhostTrack report: {e(rep['model'])}</h1>",
    f"<p>Code commit <code>{e(str(rep['code']['commit']))}</code>"
    + (" (uncommitted changes)" if rep["code"]["dirty"] else "")
    + ".</p>",
  ]
  img = lambda b64, alt: f"<img alt='{e(alt)}' src='data:image/png;base64,{b64}'>" if b64 else ""
  for name, d in rep["datasets"].items():
    pl = plots.get(name, {})
    out.append(f"<h2>{e(name)} — <span class='mode'>{e(d['mode_title'])}</span></h2>")
    out += [f"<p>{e(line).replace('**', '')}</p>" for line in _summary_lines(rep, name, d)]
    out.append(f"<p><b>{e(_claim_text(d))}</b></p>")
    out += [f"<p class='warn'>warning: {e(w)}</p>" for w in d["warnings"]]
    out.append(f"<h3>AUROC table ({e(d['mode_title'])}; positive class = hallucinated)</h3>")
    out.append(html_table(AUROC_HEADER, auroc_table({"methods": d["methods"]})))
    out.append(
      "<p>Δ marked * when its paired-bootstrap 95% CI excludes 0. Thresholds for balanced accuracy / "
      "F1 were chosen on training folds only.</p>"
    )
    out.append(img(pl.get("roc"), "ROC curves") + img(pl.get("forest"), "AUROC intervals"))
    if pl.get("importances"):
      out += [
        "<h3>Feature importances (final detectors, all rows)</h3>",
        img(pl["importances"], "importances"),
      ]
    ctl = controls(d)
    if ctl:
      out.append("<h3>Controls</h3>")
      for c in ctl:
        out += [f"<h4>{e(c[0])}</h4>", html_table(c[1], c[2])] if isinstance(c, tuple) else [f"<p>{e(c)}</p>"]
    lv = _label_variant_rows(d)
    if lv:
      out += ["<h3>Label-method sensitivity (same folds)</h3>", html_table(LV_HEADER, lv)]
    if d["degeneracy"]:
      out.append("<h3>Degeneracy</h3>")
      out.append(
        html_table(
          ["feature set", "constant", "near-constant", "effective rank (99%)"],
          [
            [
              k,
              ", ".join(v["constant"]) or "none",
              ", ".join(v["near_constant"]) or "none",
              v["effective_rank_99"],
            ]
            for k, v in d["degeneracy"].items()
          ],
        )
      )
    if pl.get("cases"):
      out.append("<h3>Case studies: tracks across layers</h3>")
      for c, b64 in pl["cases"]:
        link = f' <a href="{e(c["dashboard"])}">interactive dashboard</a>' if c.get("dashboard") else ""
        out.append(
          f"<p><b>Q:</b> {e(c['question'])}<br><b>A:</b> {e(c['answer'])} "
          f"(<i>{'hallucinated' if c['label'] else 'correct'}</i>; gold: {e('; '.join(c['gold'][:3]))})"
          f"{link}</p>"
        )
        out.append(img(b64, f"tracks of {c['id']}"))
  out.append("<h2>SAE quality per layer</h2>")
  t = _sae_table(rep["sae_quality"])
  out.append(html_table(*t) if t else f"<p><i>{e(rep['sae_quality'].get('note', ''))}</i></p>")
  notes = rep["sae_quality"].get("notes", [])
  if notes:
    out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
  if rep["sae_quality"].get("targets"):
    out.append(f"<p>targets: {e(json.dumps(rep['sae_quality']['targets']))}</p>")
  for title, header, rows in transfer_tables(rep.get("transfer")):
    out += [f"<h2>{e(title)}</h2>", html_table(header, rows)]
  out.append("</body></html>")
  return "\n".join(out)
