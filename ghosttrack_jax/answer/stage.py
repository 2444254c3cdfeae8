"""Stage `answer`: the model answers each question itself; answers are labelled and split into folds.

Own-answer mode (docs/method.md §6.2; datasets `wikidata`, `squad`, `jsonl`, `nq_open`, `truthfulqa`):
  1. Prompt, fixed per (model, dataset) and recorded in the manifest with its exemplars: the wikidata
     stem completed after solved stems of the same relation, few-shot Q:/A: (with the passage for
     SQuAD), or the chat template (answer/prompts.py says why and what each looks like).
  2. Greedy generation with a KV cache through `LanguageModel.generate`, `config.qa.max_new_tokens`
     tokens, `config.qa.batch_size` prompts per call. Each call's raw output is saved under
     `generations/` and reused, so a killed run resumes without regenerating finished batches.
  3. Post-processing on token ids (the decoded string is never re-tokenised): leading whitespace-only
     tokens are moved into the prompt (they are context the model produced, not answer); the answer
     stops before the first special token (EOS, end-of-turn) and before the first token whose text
     contains a newline; with `config.qa.cut_first_sentence` it also ends after the token that closes the
     first sentence (text ending in . ! or ? followed by a token starting with whitespace, or nothing),
     unless the word before the period is a single letter or a common abbreviation (Mr, Dr, St, ...).
     Empty answers are excluded and counted; so are non-answers (no content word beyond the question,
     `labelling.is_non_answer`) unless `config.qa.exclude_non_answers` is False, when they stay in
     with the flag `non_answer`. Answers equal to one of the prompt's exemplar answers are flagged
     `copied_exemplar` (the manifest counts every flag per class).
  4. Labels against gold aliases (`labelling.py`): `config.qa.label_method` for NQ-open; the TruthfulQA
     ROUGE-L "diff" rule for TruthfulQA. Every method's label is kept in `labels_all`. 100 random labelled
     examples go to `audit_sample.jsonl` for the hand audit docs/method.md asks for (`audit_label` left empty).

Given-text mode (docs/method.md §6.4; `truthfulqa_given`, `halueval_given`), clearly labelled `given_text`:
each distinct (question, reference answer) is appended to the same prompt and teacher-forced (nothing is
generated); label 1 = the reference is incorrect / hallucinated. References that appear on both sides for
a question are dropped.

Folds: stratified group K-fold (K = `config.evaluate.n_folds`, shuffled, seed `config.evaluate.seed + r`;
our own greedy assignment, see `folds.stratified_group_kfold`, because scikit-learn's shuffled
`StratifiedGroupKFold` stratifies poorly), groups = normalised question text, R = `config.evaluate.n_repeats`
repeats. When a class has fewer groups than folds, the manifest says the folds are not stratified and a
warning is logged (detection on a single class is meaningless and is reported as such downstream).

Outputs (schema in docs/DESIGN.md "Examples table"): `cache/<model>/answers/<dataset>/`.
"""

import logging
import os
import zlib

import numpy as np

from ghosttrack_jax import config_lib, lm
from ghosttrack_jax.answer import checks, datasets, labelling, prompts, self_eval, uncertainty
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import folds as folds_lib
from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.runtime import atomic_io, paths, progress

OWN_ANSWER_SETS = config_lib.OWN_ANSWER_SETS  # the value sets live in config_lib
GIVEN_TEXT_SETS = config_lib.GIVEN_TEXT_SETS


# ---- labelling -------------------------------------------------------------------------------


def label_own_answer(dataset: str, answer_text: str, item, qa_cfg):
  """Returns (label, label_method, labels_all, details)."""
  if dataset == "truthfulqa":
    kind = qa_cfg.truthfulqa_similarity
    label, details = labelling.truthfulqa_label(answer_text, item.gold, item.incorrect, kind)
    labels_all = {
      f"truthfulqa_{k}_diff": labelling.truthfulqa_label(answer_text, item.gold, item.incorrect, k)[0]
      for k in labelling.TRUTHFULQA_SIMILARITIES
    }
    labels_all.update(labelling.all_labels(answer_text, item.gold, qa_cfg.f1_threshold, item.question))
    return label, f"truthfulqa_{kind}_diff", labels_all, details
  method = labelling.canonical_method(qa_cfg.label_method)
  labels_all = labelling.all_labels(answer_text, item.gold, qa_cfg.f1_threshold, item.question)
  return labels_all[method], method, labels_all, {"best_f1": labelling.best_f1(answer_text, item.gold)}


def given_text_pairs(items, dataset: str):
  """(item, reference_text, label, role) per distinct (question, normalised reference)."""
  out, dropped = [], 0
  for item in items:
    refs: dict[str, list] = {}
    for label, answers in ((0, item.gold), (1, item.incorrect)):
      for a in answers:
        refs.setdefault(labelling.normalize_answer(a) or a, []).append((label, a))
    for _, entries in refs.items():
      if len({lab for lab, _ in entries}) > 1:
        dropped += 1
        continue
      label, text = entries[0]
      role = (
        ("right" if label == 0 else "hallucinated")
        if dataset == "halueval_given"
        else ("correct" if label == 0 else "incorrect")
      )
      out.append((item, text, label, role))
  return out, dropped


# ---- stage -----------------------------------------------------------------------------------


def _out_dir(config, workdir):
  return paths.for_config(config, workdir).answers(config_lib.question_set(config))


def _manifest_key(config) -> dict:
  """Fields that must match for saved generations to be reused."""
  q = config.qa
  return {
    "model": config.model.name,
    "source": config.model.source,
    "dataset": q.dataset,
    "n_questions": q.n_questions,
    "max_new_tokens": q.max_new_tokens,
    "batch_size": q.batch_size,
    "prompt_style": q.prompt_style,
    "per_relation_cap": q.per_relation_cap,
    "sample_seed": q.sample_seed,
    "n_exemplars": q.n_exemplars,
    "path": q.path,
    "n_samples": q.n_samples,
    "sample_temperature": q.sample_temperature,
    "seed": config.seed,
    "cut_first_sentence": q.cut_first_sentence,
  }


def question_seed(config, qid: str) -> int:
  """The PRNG seed of one question's samples: from the root seed and the question id only, so a resumed
  or re-batched run draws the same samples."""
  return zlib.crc32(f"{config.seed}:{qid}".encode()) & 0x7FFFFFFF


def _sample_record(sample, model, qa_cfg) -> tuple[dict, np.ndarray]:
  """One sample post-processed like the greedy answer: its record (answer text, tokens, mean token
  log-probability, flags) and the embedding EigenScore reads (the embedding block's output at the answer's
  last token; at the token that ended the sample when the answer is empty)."""
  raw = list(sample.ids) + ([model.eos_id] if sample.hit_eos else [])
  moved, ans, flags = prompts.postprocess(
    sample.ids, model.tokenizer, prompts.stop_ids(model), qa_cfg.cut_first_sentence, qa_cfg.max_new_tokens
  )
  start, end = len(moved), len(moved) + len(ans)
  lp = sample.logprobs
  at = end - 1 if ans else min(end, len(raw) - 1)
  if ans:
    mean_lp = float(np.mean(lp[start:end]))
  else:  # an empty answer: the probability of the token that ended it
    mean_lp = float(lp[end]) if end < len(lp) else 0.0
  emb = np.asarray(sample.embeddings[at], np.float32) if at >= 0 else np.zeros(model.d_model, np.float32)
  rec = {
    "text": model.tokenizer.decode(ans).strip(),
    "n_tokens": len(ans),
    "mean_logprob": mean_lp,
    "logprob": float(np.sum(lp[start:end])),
    "flags": flags,
  }
  return rec, emb


def _generate_all(config, model, prompt_texts, seeds, out_dir) -> tuple[list, np.ndarray | None]:
  """Raw generated ids per prompt (and with config.qa.n_samples its post-processed samples, plus their
  EigenScore embeddings [N, S, D]); batches saved as they finish and reused on resume."""
  gdir = os.path.join(out_dir, "generations")
  os.makedirs(gdir, exist_ok=True)
  key_path = os.path.join(gdir, "key.json")
  key = _manifest_key(config)
  if os.path.exists(key_path) and atomic_io.read_json(key_path) != key:
    logging.warning("saved generations in %s were made with other settings; regenerating", gdir)
    for f in os.listdir(gdir):
      os.remove(os.path.join(gdir, f))
  atomic_io.atomic_write_json(key_path, key)
  bs, n_s = config.qa.batch_size, int(config.qa.n_samples)
  results, embeddings = [], []
  n_batches = (len(prompt_texts) + bs - 1) // bs
  for b in progress.track(range(n_batches), "answer: generate", "batch"):
    path = os.path.join(gdir, f"batch_{b:05d}.json")
    batch = prompt_texts[b * bs : (b + 1) * bs]
    saved = _read_batch(path, n_s) if os.path.exists(path) else None
    if saved is not None and [s["prompt"] for s in saved[0]] == batch:
      results.extend(saved[0])
      embeddings.append(saved[1])
      continue
    gens = model.generate(
      batch,
      max_new_tokens=config.qa.max_new_tokens,
      batch_size=bs,
      n_samples=n_s,
      temperature=float(config.qa.sample_temperature),
      seeds=seeds[b * bs : (b + 1) * bs] if n_s else None,
      stop_at_newline=True,  # postprocess cuts at the first newline: decoding past it is wasted
    )
    rows = []
    embs = np.zeros((len(batch), n_s, model.d_model), np.float32) if n_s else None
    for r, (p, g) in enumerate(zip(batch, gens)):
      row = {
        "prompt": p,
        "prompt_ids": prompts.generated_prompt_ids(g, model, p),
        "gen_ids": prompts.generated_ids(g),
      }
      if n_s:
        row["samples"] = []
        for j, smp in enumerate(g.samples):
          rec, embs[r, j] = _sample_record(smp, model, config.qa)
          row["samples"].append(rec)
      rows.append(row)
    if n_s:  # the embeddings first: the JSON file marks the batch complete
      atomic_io.atomic_save_npz(path[: -len(".json")] + ".npz", embeddings=embs)
    atomic_io.atomic_write_json(path, rows)
    results.extend(rows)
    embeddings.append(embs)
  return results, (np.concatenate(embeddings) if n_s and embeddings else None)


def _read_batch(path: str, n_samples: int) -> tuple[list, np.ndarray] | None:
  """A generation batch saved by an interrupted run (rows, sample embeddings), or None when it cannot be
  read (regenerated)."""
  try:
    saved = atomic_io.read_json(path)
    if not (isinstance(saved, list) and all("prompt" in s for s in saved)):
      return None
    if not n_samples:
      return saved, np.zeros((len(saved), 0, 0), np.float32)
    if not all(len(s.get("samples", ())) == n_samples for s in saved):
      return None
    with np.load(path[: -len(".json")] + ".npz", allow_pickle=False) as z:
      embs = z["embeddings"]
    return (saved, embs) if embs.shape[:2] == (len(saved), n_samples) else None
  except (OSError, ValueError, TypeError, KeyError) as e:
    logging.warning("answer: the saved generations %s cannot be read (%s); regenerating them", path, e)
    return None


def question_scores(config, model, fmt, items_by_id: dict, examples: list[dict], embeddings: dict) -> dict:
  """Per example, the answer-level detection signals that need the model or the samples (names ->
  [N] arrays, in example order): the sampling scores (answer.uncertainty.SCORES, with qa.n_samples),
  P(True) (qa.p_true) and, where questions name a subject, its familiarity (self_eval)."""
  out = {}
  if not examples:
    return out
  if config.qa.n_samples:
    rows = [
      uncertainty.sample_scores(
        [s["text"] for s in e["samples"]], [s["mean_logprob"] for s in e["samples"]], embeddings[e["id"]]
      )
      for e in examples
    ]
    for name in uncertainty.SCORES:
      out[name] = np.array([r[name] for r in rows])
  if config.qa.p_true:
    texts = []
    for e in examples:
      it = items_by_id[e["id"]]
      shots = self_eval.ptrue_shots(fmt.exemplar_pairs(it))
      texts.append(self_eval.ptrue_prompt(it.question, e["answer_text"], shots, it.context))
    out["p_true"] = self_eval.p_true(model, texts, config.qa.batch_size)
  subjects = [items_by_id[e["id"]].meta.get("subject") for e in examples]
  if all(subjects):
    fam = self_eval.subject_familiarity(model, subjects, config.qa.batch_size)
    for j, name in enumerate(self_eval.FAMILIARITY_COLUMNS):
      out[name] = fam[:, j]
  return out


def answer_record(config, model, fmt, item, prompt_ids, gen_ids) -> tuple[dict, str | None]:
  """One generated answer as the stage keeps it, before labelling: (record, reason it is excluded or None).

  The answer stage and the scoring API (detect.score) both call this, so an answer gets the same
  post-processing (prompts.postprocess), flags and exclusions wherever it is made. Reasons: "empty
  answer", "non-answer" (with config.qa.exclude_non_answers), "cut by the token budget" (with
  config.qa.exclude_cut_answers: the budget ended it, so it may be a right answer cut before the name)."""
  tok = model.tokenizer
  moved, ans, flags = prompts.postprocess(
    gen_ids, tok, prompts.stop_ids(model), config.qa.cut_first_sentence, config.qa.max_new_tokens
  )
  text = tok.decode(ans).strip()
  if text and labelling.is_non_answer(text, item.question, item.meta.get("stem", "")):
    flags.append("non_answer")
  shown = {labelling.normalize_answer(a) for a in fmt.prompt_exemplar_answers(item)}
  if text and labelling.normalize_answer(text) in shown:
    flags.append("copied_exemplar")  # the answer is one of the prompt's exemplar answers
  rec = {
    "id": f"{item.qid}",
    "question": item.question,
    "prompt_ids": list(prompt_ids) + moved,
    "answer_ids": ans,
    "answer_text": text,
    "raw_generation": tok.decode(gen_ids),
    "gold": list(item.gold),
    "mode": "own_answer",
    "flags": flags,
    "relation": item.relation,
  }
  reason = None
  if "empty" in flags:
    reason = "empty answer"
  elif "non_answer" in flags and config.qa.exclude_non_answers:
    reason = "non-answer"
  elif "max_new_tokens" in flags and config.qa.exclude_cut_answers:
    reason = "cut by the token budget"
  return rec, reason


def build_examples(config, model, items, out_dir):
  """Returns (examples, excluded, prompt_format) for the configured dataset (no folds yet)."""
  dataset = config.qa.dataset
  exclude = [it.question for it in items] if dataset in ("nq_open", "jsonl") else []
  fmt = prompts.prompt_format(config.qa, model.tokenizer, exclude_questions=exclude)
  tok = model.tokenizer
  examples, excluded, embeddings = [], [], {}
  if dataset in OWN_ANSWER_SETS:
    texts = [fmt.render(it) for it in items]
    seeds = [question_seed(config, it.qid) for it in items]
    gens, sample_embs = _generate_all(config, model, texts, seeds, out_dir)
    for n_item, (it, g) in enumerate(zip(items, gens)):
      rec, reason = answer_record(config, model, fmt, it, g["prompt_ids"], g["gen_ids"])
      if "samples" in g:
        rec["samples"] = g["samples"]
        embeddings[rec["id"]] = sample_embs[n_item]
      if reason:
        excluded.append({**rec, "reason": reason})
        continue
      text = rec["answer_text"]
      label, method, labels_all, details = label_own_answer(dataset, text, it, config.qa)
      if details.get("tie"):
        rec["flags"].append("similarity_tie")
      rec.update(label=int(label), label_method=method, labels_all=labels_all, label_details=details)
      examples.append(rec)
  elif dataset in GIVEN_TEXT_SETS:
    pairs, dropped = given_text_pairs(items, dataset)
    if dropped:
      logging.info("given-text: %d references dropped (listed as both correct and incorrect)", dropped)
    cap = config.qa.given_max_answer_tokens
    prompt_cache = {}
    for n, (it, ref, label, role) in enumerate(pairs):
      if it.question not in prompt_cache:
        prompt_cache[it.question] = [int(t) for t in model.encode(fmt.render(it))]
      ans = prompts.encode_continuation(tok, fmt.answer_prefix() + ref)
      flags = [f"reference_{role}"]
      if len(ans) > cap:
        ans, flags = ans[:cap], flags + ["truncated"]
      rec = {
        "id": f"{it.qid}-r{n:05d}",
        "question": it.question,
        "prompt_ids": prompt_cache[it.question],
        "answer_ids": ans,
        "answer_text": ref,
        "gold": list(it.gold),
        "mode": "given_text",
        "flags": flags,
        "label": int(label),
        "label_method": "given_reference",
        "labels_all": {"given_reference": label},
        "relation": it.relation,
      }
      if not ans:
        excluded.append({**rec, "reason": "empty answer"})
        continue
      examples.append(rec)
  else:
    raise DataError(f"config.qa.dataset={dataset!r}: use one of {OWN_ANSWER_SETS + GIVEN_TEXT_SETS}")
  return examples, excluded, fmt, embeddings


def fold_and_write(config, examples, excluded, fmt, out_dir, extra_manifest=None, scores=None) -> dict:
  """Adds group ids and folds to `examples`, builds the manifest and writes the table (examples.save)
  with the per-example question scores (`question_scores`: name -> [N])."""
  if not examples:
    raise DataError(f"no usable examples for {config.qa.dataset} ({len(excluded)} excluded)")
  groups = folds_lib.group_ids([e["question"] for e in examples])
  labels = np.array([e["label"] for e in examples], np.int8)
  folds, fold_info = folds_lib.assign_folds(
    labels, groups, config.evaluate.n_folds, config.evaluate.n_repeats, config.evaluate.seed
  )
  for i, e in enumerate(examples):
    e["group_id"] = int(groups[i])
    e["fold"] = int(folds[0, i])
    e["folds"] = [int(f) for f in folds[:, i]]
  label_rates = {}
  for m in examples[0]["labels_all"]:
    vals = [e["labels_all"][m] for e in examples]
    label_rates[m] = {
      "n_correct": int(sum(v == 0 for v in vals)),
      "n_incorrect": int(sum(v == 1 for v in vals)),
      "correct_rate": float(np.mean([v == 0 for v in vals])),
    }
  n1 = int(labels.sum())
  minority = min(n1, len(labels) - n1)
  warnings = []
  if minority < 100:
    warnings.append(
      f"minority class has {minority} examples (< 100): confidence intervals will be wide "
      "(docs/method.md §6.2 item 8)"
    )
  if not fold_info["stratified"]:
    warnings.append("folds could not be stratified (a class has fewer question groups than folds)")
  for w in warnings:
    logging.warning("answer: %s", w)
  files = datasets.data_files(config.qa.dataset, config.qa)
  manifest = {
    "schema_version": examples_lib.SCHEMA_VERSION,
    "dataset": config.qa.dataset,
    "mode": "given_text" if config.qa.dataset in GIVEN_TEXT_SETS else "own_answer",
    "model": {"name": config.model.name, "source": config.model.source, "family": config.model.family},
    "prompt": fmt.describe(),
    "generation": {
      "greedy": True,
      "max_new_tokens": config.qa.max_new_tokens,
      "batch_size": config.qa.batch_size,
      "cut_first_sentence": bool(config.qa.cut_first_sentence),
      "exclude_cut_answers": bool(config.qa.exclude_cut_answers),
      # answered questions (examples + excluded) whose answer the token budget ended
      "cut_by_budget": sum("max_new_tokens" in e["flags"] for e in examples + excluded),
      "n_samples": int(config.qa.n_samples),
      "sample_temperature": float(config.qa.sample_temperature),
      "sample_seed_rule": "crc32('<config.seed>:<question id>'), one PRNG stream per question",
    },
    "question_scores": sorted(scores or {}),
    "label_method": examples[0]["label_method"],
    "label_rates": label_rates,
    "n_examples": len(examples),
    "n_excluded": len(excluded),
    "excluded_reasons": {r: sum(e["reason"] == r for e in excluded) for r in {e["reason"] for e in excluded}},
    "n_hallucinated": n1,
    "n_correct": len(labels) - n1,
    "n_groups": int(len(np.unique(groups))),
    "folds": fold_info,
    "data_files": {f: datasets.sha256(f) for f in files},
    "flags": {
      f: sum(f in e["flags"] for e in examples) for f in sorted({f for e in examples for f in e["flags"]})
    },
    # the same counts per class (0 = correct, 1 = hallucinated): a flag that only one class carries is
    # a shortcut a detector could learn
    "flags_by_class": {
      f: [sum(f in e["flags"] and e["label"] == c for e in examples) for c in (0, 1)]
      for f in sorted({f for e in examples for f in e["flags"]})
    },
    "relations": {
      r: [sum(e.get("relation") == r and e["label"] == c for e in examples) for c in (0, 1)]
      for r in sorted({e.get("relation") for e in examples if e.get("relation")})
    },
    "warnings": warnings,
    **(extra_manifest or {}),
  }
  # docs/method.md §6.2 item 4: 100 random labels per (model, dataset) for a hand audit.
  audit = np.sort(np.random.default_rng(config.evaluate.seed).permutation(len(examples))[:100])
  examples_lib.save(out_dir, examples, excluded, folds, manifest, audit, scores or {})
  return manifest


def preflight(config, workdir: str) -> list:
  """Reads the questions (a bad file raises DataError naming the line and the fix) and checks that a
  finished answer folder was made from the same question files; returns the questions."""
  items = datasets.load(config.qa.dataset, config.qa, limit=config.qa.n_questions)
  out_dir = _out_dir(config, workdir)
  if not atomic_io.is_done(out_dir):
    checks.check_questions(config, items)  # what the stage would meet late, found before any stage
  else:
    made = examples_lib.load_manifest(config, workdir)
    now = {f: datasets.sha256(f) for f in datasets.data_files(config.qa.dataset, config.qa)}
    if sorted(made["data_files"].values()) != sorted(now.values()) or made["n_questions"] != len(items):
      raise StoreMismatchError(
        f"{out_dir} holds the answers to other questions ({made['n_questions']} questions from "
        f"{sorted(made['data_files'])}; this config asks {len(items)} from {sorted(now)}): give this run "
        "outputs of its own (--config.qa.run_name=NAME), use another --workdir, or delete that folder and "
        "the tracking/detection/evaluation folders of this dataset"
      )
  return items


def run(config, workdir: str, model=None) -> None:
  """Stage entry point. `model` may be passed in (tests, notebooks); otherwise it is loaded."""
  out_dir = _out_dir(config, workdir)
  items = preflight(config, workdir)
  if atomic_io.is_done(out_dir):
    examples_lib.verify(out_dir)
    logging.info("answer: %s is complete; skipping", out_dir)
    return
  os.makedirs(out_dir, exist_ok=True)
  if model is None:
    model = lm.load_model(config.model)
  examples, excluded, fmt, embeddings = build_examples(config, model, items, out_dir)
  scores = {}
  if config.qa.dataset in OWN_ANSWER_SETS:
    scores = question_scores(config, model, fmt, {it.qid: it for it in items}, examples, embeddings)
  m = fold_and_write(config, examples, excluded, fmt, out_dir, {"n_questions": len(items)}, scores)
  logging.info(
    "answer: %s: %d examples (%d correct, %d hallucinated), %d excluded -> %s",
    config.qa.dataset,
    m["n_examples"],
    m["n_correct"],
    m["n_hallucinated"],
    m["n_excluded"],
    out_dir,
  )
