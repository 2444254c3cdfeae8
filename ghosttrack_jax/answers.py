"""Stage `answer`: the model answers each question itself; answers are labelled and split into folds.

Own-answer mode (method.md §6.2; datasets `nq_open`, `truthfulqa`):
  1. Prompt, fixed per model and recorded in the manifest. Few-shot (base models): the instruction line
     "Answer each question with a short phrase.", 5 fixed exemplars from the NQ-open EfficientQA dev
     file as "Q: ...\nA: ...\n\n", then "Q: {question}\nA:". Chat (instruct models): the tokenizer's chat
     template with one user message "Answer with a short phrase only: {question}" and the generation
     prompt. `config.qa.prompt_style` = "fewshot" | "chat" | "auto" (chat iff the tokenizer has a chat
     template).
  2. Greedy generation with a KV cache through `LanguageModel.generate`, `config.qa.max_new_tokens`
     tokens, `config.qa.batch_size` prompts per call. Each call's raw output is saved under
     `generations/` and reused, so a killed run resumes without regenerating finished batches.
  3. Post-processing on token ids (the decoded string is never re-tokenised): leading whitespace-only
     tokens are moved into the prompt (they are context the model produced, not answer); the answer
     stops before the first special token (EOS, end-of-turn) and before the first token whose text
     contains a newline; with `config.qa.cut_first_sentence` it also ends after the token that closes the
     first sentence (text ending in . ! or ? followed by a token starting with whitespace, or nothing),
     unless the word before the period is a single letter or a common abbreviation (Mr, Dr, St, ...).
     Empty answers are excluded and counted.
  4. Labels against gold aliases (`labelling.py`): `config.qa.label_method` for NQ-open; the TruthfulQA
     ROUGE-L "diff" rule for TruthfulQA. Every method's label is kept in `labels_all`. 100 random labelled
     examples go to `audit_sample.jsonl` for the hand audit method.md asks for (`audit_label` left empty).

Given-text mode (method.md §6.4; `truthfulqa_given`, `halueval_given`), clearly labelled `given_text`:
each distinct (question, reference answer) is appended to the same prompt and teacher-forced (nothing is
generated); label 1 = the reference is incorrect / hallucinated. References that appear on both sides for
a question are dropped.

Folds: stratified group K-fold (K = `config.evaluate.n_folds`, shuffled, seed `config.evaluate.seed + r`;
our own greedy assignment, see `stratified_group_kfold`, because scikit-learn's shuffled
`StratifiedGroupKFold` stratifies poorly), groups = normalised question text, R = `config.evaluate.n_repeats`
repeats. When a class has fewer groups than folds, the manifest says the folds are not stratified and a
warning is logged (detection on a single class is meaningless and is reported as such downstream).

Outputs (schema in docs/DESIGN.md "Examples table"): `cache/<model>/answers/<dataset>/`.
"""

import dataclasses
import json
import logging
import os
import re

import numpy as np

from ghosttrack_jax import io_utils, labelling, paths, qa_data
from ghosttrack_jax.errors import DataError, IncompleteStoreError, StoreMismatchError

OWN_ANSWER_SETS = ("nq_open", "truthfulqa")
GIVEN_TEXT_SETS = ("truthfulqa_given", "halueval_given")
FEWSHOT_INSTRUCTION = "Answer each question with a short phrase."
CHAT_INSTRUCTION = "Answer with a short phrase only: {question}"
N_EXEMPLARS = 5
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "no", "mt", "ft", "co", "inc", "ltd",
                  "gen", "col", "lt", "sgt", "capt", "prof", "rev", "fr", "ave", "jan", "feb", "aug",
                  "sept", "oct", "nov", "dec", "approx", "est", "etc"}
SCHEMA_VERSION = 1


# ---- prompts ---------------------------------------------------------------------------------

def fewshot_exemplars(path: str = qa_data.NQ_OPEN_EFFICIENTQA, n: int = N_EXEMPLARS,
                      exclude_questions=()) -> list[tuple[str, str]]:
  """The first `n` EfficientQA questions with a short (<= 3 words) first answer, skipping any question
  whose normalised text is in `exclude_questions` (one EfficientQA question duplicates an NQ dev one)."""
  excluded = {labelling.normalize_answer(q) for q in exclude_questions}
  out = []
  for item in qa_data.load_nq_open(path, prefix="efficientqa"):
    a = item.gold[0]
    if len(a.split()) > 3 or labelling.normalize_answer(item.question) in excluded:
      continue
    q = item.question[:1].upper() + item.question[1:]
    q = q if q.endswith("?") else q + "?"
    out.append((q, a))
    if len(out) == n:
      return out
  raise DataError(f"{path}: fewer than {n} usable few-shot exemplars")


@dataclasses.dataclass
class PromptFormat:
  """Renders the fixed prompt for a question. `style` is "fewshot" or "chat"."""

  style: str
  exemplars: list
  tokenizer: object = None

  def render(self, question: str, raw: bool = False) -> str:
    """The prompt; few-shot questions are capitalised and end in "?" unless `raw`."""
    q = question.strip()
    if self.style == "fewshot":
      if not raw:
        q = q[:1].upper() + q[1:]
        q = q if q.endswith("?") else q + "?"
      shots = "".join(f"Q: {eq}\nA: {ea}\n\n" for eq, ea in self.exemplars)
      return f"{FEWSHOT_INSTRUCTION}\n\n{shots}Q: {q}\nA:"
    messages = [{"role": "user", "content": CHAT_INSTRUCTION.format(question=q)}]
    return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def answer_prefix(self) -> str:
    """What goes between the prompt and a given (teacher-forced) answer text."""
    return " " if self.style == "fewshot" else ""

  def describe(self) -> dict:
    return {"style": self.style, "exemplars": self.exemplars if self.style == "fewshot" else [],
            "template": self.render("{question}", raw=True)}


def prompt_format(qa_cfg, tokenizer, exclude_questions=()) -> PromptFormat:
  style = qa_cfg.get("prompt_style", "auto")
  if style == "auto":
    style = "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"
  if style not in ("fewshot", "chat"):
    raise DataError(f"config.qa.prompt_style={style!r}: use 'fewshot', 'chat' or 'auto'")
  if style == "chat" and not getattr(tokenizer, "chat_template", None):
    raise DataError("config.qa.prompt_style='chat' but the tokenizer has no chat template; use 'fewshot'")
  ex = []
  if style == "fewshot":
    ex = fewshot_exemplars(qa_cfg.get("fewshot_file", qa_data.NQ_OPEN_EFFICIENTQA),
                           exclude_questions=exclude_questions)
  return PromptFormat(style, ex, tokenizer)


# ---- post-processing -------------------------------------------------------------------------

def _is_sentence_end(piece: str, text_so_far: str) -> bool:
  s = piece.rstrip()
  if not s or s[-1] not in ".!?":
    return False
  if s[-1] == ".":
    words = text_so_far.rstrip().rstrip(".").split()
    last = re.sub(r"[^A-Za-z]", "", words[-1]).lower() if words else ""
    if len(last) == 1 or last in _ABBREVIATIONS:
      return False
  return True


def postprocess(gen_ids, tokenizer, stop_ids, cut_first_sentence: bool = True):
  """Splits generated ids into (moved_to_prompt, answer_ids, flags); see the module docstring."""
  gen_ids = [int(t) for t in gen_ids]
  stop_ids = set(int(s) for s in stop_ids)
  pieces = [tokenizer.decode([t]) for t in gen_ids]
  lead = 0
  while lead < len(gen_ids) and gen_ids[lead] not in stop_ids and not pieces[lead].strip():
    lead += 1
  flags = []
  end = lead
  text = ""
  while end < len(gen_ids):
    t, piece = gen_ids[end], pieces[end]
    if t in stop_ids:
      flags.append("stop_token")
      break
    if "\n" in piece:
      flags.append("newline")
      break
    text += piece
    end += 1
    if cut_first_sentence and _is_sentence_end(piece, text):
      nxt = pieces[end] if end < len(gen_ids) else ""
      if not nxt or nxt[:1].isspace():
        if end < len(gen_ids):
          flags.append("sentence_cut")
        break
  else:
    flags.append("max_new_tokens")
  answer = gen_ids[lead:end]
  if lead:
    flags.append("leading_whitespace_moved")
  if not tokenizer.decode(answer).strip():
    flags.append("empty")
  return gen_ids[:lead], answer, flags


# ---- folds -----------------------------------------------------------------------------------

def stratified_group_kfold(labels, groups, n_folds: int, seed: int) -> np.ndarray:
  """Shuffled, stratified, grouped K-fold: fold index per row.

  scikit-learn's `StratifiedGroupKFold(shuffle=True)` stratifies poorly (at prevalence 0.2 with one
  row per group we measured 12-24 positives per fold of 80 rows), so groups are assigned greedily:
  groups are shuffled with `seed`, ordered by size (largest first, stable), and each goes to the fold
  that minimises the squared deviation of the per-class counts from their ideal share, ties broken by
  fold size and then by a seeded random fold order.
  """
  labels = np.asarray(labels).astype(int)
  uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
  counts = np.zeros((len(uniq), 2), np.int64)
  np.add.at(counts, (inv, labels), 1)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(uniq))
  order = order[np.argsort(-counts[order].sum(1), kind="stable")]
  ideal = counts.sum(0) / n_folds
  fold_counts = np.zeros((n_folds, 2))
  tiebreak = rng.permutation(n_folds)
  group_fold = np.empty(len(uniq), np.int64)
  for g in order:
    cand = fold_counts + counts[g]
    cost = ((cand - ideal) ** 2).sum(1) - ((fold_counts - ideal) ** 2).sum(1)
    key = np.lexsort((tiebreak, fold_counts.sum(1), np.round(cost, 9)))
    f = key[0]
    group_fold[g] = f
    fold_counts[f] += counts[g]
  return group_fold[inv]


def assign_folds(labels, groups, n_folds: int, n_repeats: int = 1, seed: int = 0):
  """Returns (folds [R, N] int16, info). Question groups never cross folds; stratified when possible."""
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  n_groups = len(np.unique(groups))
  if n_groups < n_folds:
    raise DataError(f"{n_groups} question groups cannot fill {n_folds} folds; answer more questions or "
                    "lower config.evaluate.n_folds")
  per_class_groups = [len(np.unique(groups[labels == c])) for c in (0, 1)]
  stratified = min(per_class_groups) >= n_folds
  if not stratified:
    logging.warning("class sizes in groups %s < n_folds=%d: folds cannot hold both classes each; "
                    "detection metrics will be undefined or meaningless", per_class_groups, n_folds)
  folds = np.stack([stratified_group_kfold(labels, groups, n_folds, seed + r)
                    for r in range(n_repeats)]).astype(np.int16)
  sizes = [np.bincount(f, minlength=n_folds) for f in folds]
  if min(s.min() for s in sizes) == 0:
    raise DataError(f"an empty fold: {n_groups} groups are too unevenly sized for {n_folds} folds")
  return folds, {"method": "greedy stratified group k-fold (answers.stratified_group_kfold)",
                 "stratified": bool(stratified), "n_folds": n_folds, "n_repeats": n_repeats,
                 "seeds": [seed + r for r in range(n_repeats)], "class_groups": per_class_groups}


def group_ids(questions) -> np.ndarray:
  """Same normalised question text -> same group id (ids in first-seen order)."""
  seen: dict[str, int] = {}
  return np.array([seen.setdefault(labelling.normalize_answer(q) or q, len(seen)) for q in questions],
                  np.int64)


# ---- labelling -------------------------------------------------------------------------------

def label_own_answer(dataset: str, answer_text: str, item, qa_cfg):
  """Returns (label, label_method, labels_all, details)."""
  if dataset == "truthfulqa":
    kind = qa_cfg.get("truthfulqa_similarity", "rougeL")
    label, details = labelling.truthfulqa_label(answer_text, item.gold, item.incorrect, kind)
    labels_all = {f"truthfulqa_{k}_diff": labelling.truthfulqa_label(answer_text, item.gold,
                                                                      item.incorrect, k)[0]
                  for k in labelling.TRUTHFULQA_SIMILARITIES}
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
      role = ("right" if label == 0 else "hallucinated") if dataset == "halueval_given" else (
          "correct" if label == 0 else "incorrect")
      out.append((item, text, label, role))
  return out, dropped


# ---- model glue ------------------------------------------------------------------------------

def _gen_ids(gen) -> list[int]:
  for attr in ("answer_ids", "token_ids", "generated_ids", "ids", "tokens"):
    if hasattr(gen, attr):
      return [int(t) for t in getattr(gen, attr)]
  if isinstance(gen, dict):
    for attr in ("answer_ids", "token_ids", "generated_ids", "ids"):
      if attr in gen:
        return [int(t) for t in gen[attr]]
  raise TypeError(f"cannot read generated token ids from {type(gen).__name__}")


def _gen_prompt_ids(gen, model, prompt: str) -> list[int]:
  for attr in ("prompt_ids",):
    if hasattr(gen, attr):
      return [int(t) for t in getattr(gen, attr)]
    if isinstance(gen, dict) and attr in gen:
      return [int(t) for t in gen[attr]]
  return [int(t) for t in model.encode(prompt)]


def stop_ids(model) -> list[int]:
  tok = model.tokenizer
  ids = set(int(i) for i in (getattr(tok, "all_special_ids", None) or []))
  for attr in ("eos_id", "pad_id"):
    v = getattr(model, attr, None)
    if v is not None:
      ids.add(int(v))
  return sorted(ids)


def _encode_continuation(tokenizer, text: str) -> list[int]:
  return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


# ---- stage -----------------------------------------------------------------------------------

def _out_dir(config, workdir):
  return paths.for_config(config, workdir).answers(config.qa.dataset)


def _manifest_key(config) -> dict:
  """Fields that must match for saved generations to be reused."""
  q = config.qa
  return {"model": config.model.name, "source": config.model.source, "dataset": q.dataset,
          "n_questions": q.n_questions, "max_new_tokens": q.max_new_tokens, "batch_size": q.batch_size,
          "prompt_style": q.get("prompt_style", "auto")}


def _generate_all(config, model, prompts, out_dir) -> list:
  """Raw generated ids per prompt; batches saved as they finish and reused on resume."""
  gdir = os.path.join(out_dir, "generations")
  os.makedirs(gdir, exist_ok=True)
  key_path = os.path.join(gdir, "key.json")
  key = _manifest_key(config)
  if os.path.exists(key_path) and io_utils.read_json(key_path) != key:
    logging.warning("saved generations in %s were made with other settings; regenerating", gdir)
    for f in os.listdir(gdir):
      os.remove(os.path.join(gdir, f))
  io_utils.atomic_write_json(key_path, key)
  bs = config.qa.batch_size
  results = []
  n_batches = (len(prompts) + bs - 1) // bs
  for b in range(n_batches):
    path = os.path.join(gdir, f"batch_{b:05d}.json")
    batch = prompts[b * bs:(b + 1) * bs]
    if os.path.exists(path):
      saved = io_utils.read_json(path)
      if [s["prompt"] for s in saved] == batch:
        results.extend(saved)
        continue
    gens = model.generate(batch, max_new_tokens=config.qa.max_new_tokens, batch_size=bs)
    saved = [{"prompt": p, "prompt_ids": _gen_prompt_ids(g, model, p), "gen_ids": _gen_ids(g)}
             for p, g in zip(batch, gens)]
    io_utils.atomic_write_json(path, saved)
    results.extend(saved)
    logging.info("answer: batch %d/%d generated", b + 1, n_batches)
  return results


def build_examples(config, model, items, out_dir):
  """Returns (examples, excluded, prompt_format) for the configured dataset (no folds yet)."""
  dataset = config.qa.dataset
  exclude = [it.question for it in items] if dataset == "nq_open" else []
  fmt = prompt_format(config.qa, model.tokenizer, exclude_questions=exclude)
  tok = model.tokenizer
  examples, excluded = [], []
  if dataset in OWN_ANSWER_SETS:
    prompts = [fmt.render(it.question) for it in items]
    gens = _generate_all(config, model, prompts, out_dir)
    sids = stop_ids(model)
    for it, g in zip(items, gens):
      moved, ans, flags = postprocess(g["gen_ids"], tok, sids, config.qa.get("cut_first_sentence", True))
      text = tok.decode(ans).strip()
      rec = {"id": f"{it.qid}", "question": it.question, "prompt_ids": list(g["prompt_ids"]) + moved,
             "answer_ids": ans, "answer_text": text, "raw_generation": tok.decode(g["gen_ids"]),
             "gold": list(it.gold), "mode": "own_answer", "flags": flags}
      if "empty" in flags:
        excluded.append({**rec, "reason": "empty answer"})
        continue
      label, method, labels_all, details = label_own_answer(dataset, text, it, config.qa)
      if details.get("tie"):
        rec["flags"].append("similarity_tie")
      rec.update(label=int(label), label_method=method, labels_all=labels_all, label_details=details)
      examples.append(rec)
  elif dataset in GIVEN_TEXT_SETS:
    pairs, dropped = given_text_pairs(items, dataset)
    if dropped:
      logging.info("given-text: %d references dropped (listed as both correct and incorrect)", dropped)
    cap = config.qa.get("given_max_answer_tokens", 64)
    prompt_cache = {}
    for n, (it, ref, label, role) in enumerate(pairs):
      if it.question not in prompt_cache:
        prompt_cache[it.question] = [int(t) for t in model.encode(fmt.render(it.question))]
      ans = _encode_continuation(tok, fmt.answer_prefix() + ref)
      flags = [f"reference_{role}"]
      if len(ans) > cap:
        ans, flags = ans[:cap], flags + ["truncated"]
      rec = {"id": f"{it.qid}-r{n:05d}", "question": it.question, "prompt_ids": prompt_cache[it.question],
             "answer_ids": ans, "answer_text": ref, "gold": list(it.gold), "mode": "given_text", "flags": flags,
             "label": int(label), "label_method": "given_reference", "labels_all": {"given_reference": label}}
      if not ans:
        excluded.append({**rec, "reason": "empty answer"})
        continue
      examples.append(rec)
  else:
    raise DataError(f"config.qa.dataset={dataset!r}: use one of {OWN_ANSWER_SETS + GIVEN_TEXT_SETS}")
  return examples, excluded, fmt


def finalize(config, examples, excluded, fmt, out_dir, extra_manifest=None) -> dict:
  """Adds group ids and folds, writes examples.jsonl, excluded.jsonl, folds.npz, manifest.json, DONE."""
  if not examples:
    raise DataError(f"no usable examples for {config.qa.dataset} ({len(excluded)} excluded)")
  groups = group_ids([e["question"] for e in examples])
  labels = np.array([e["label"] for e in examples], np.int8)
  folds, fold_info = assign_folds(labels, groups, config.evaluate.n_folds,
                                  config.evaluate.get("n_repeats", 1), config.evaluate.seed)
  for i, e in enumerate(examples):
    e["group_id"] = int(groups[i])
    e["fold"] = int(folds[0, i])
    e["folds"] = [int(f) for f in folds[:, i]]
  lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples)
  io_utils.atomic_write_text(os.path.join(out_dir, "examples.jsonl"), lines)
  io_utils.atomic_write_text(os.path.join(out_dir, "excluded.jsonl"),
                             "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in excluded))
  io_utils.atomic_save_npz(os.path.join(out_dir, "folds.npz"),
                           example_id=np.array([e["id"] for e in examples]), group_id=groups,
                           label=labels, folds=folds)
  # method.md §6.2 item 4: 100 random labels per (model, dataset) for a hand audit; fill `audit_label`.
  pick = np.sort(np.random.default_rng(config.evaluate.seed).permutation(len(examples))[:100])
  io_utils.atomic_write_text(os.path.join(out_dir, "audit_sample.jsonl"), "".join(
      json.dumps({"id": examples[i]["id"], "question": examples[i]["question"],
                  "answer_text": examples[i]["answer_text"], "gold": examples[i]["gold"],
                  "label": examples[i]["label"], "label_method": examples[i]["label_method"],
                  "audit_label": None}, ensure_ascii=False) + "\n" for i in pick))
  label_rates = {}
  for m in examples[0]["labels_all"]:
    vals = [e["labels_all"][m] for e in examples]
    label_rates[m] = {"n_correct": int(sum(v == 0 for v in vals)), "n_incorrect": int(sum(v == 1 for v in vals)),
                      "correct_rate": float(np.mean([v == 0 for v in vals]))}
  n1 = int(labels.sum())
  minority = min(n1, len(labels) - n1)
  warnings = []
  if minority < 100:
    warnings.append(f"minority class has {minority} examples (< 100): confidence intervals will be wide "
                    "(method.md §6.2 item 8)")
  if not fold_info["stratified"]:
    warnings.append("folds could not be stratified (a class has fewer question groups than folds)")
  for w in warnings:
    logging.warning("answer: %s", w)
  files = qa_data.data_files(config.qa.dataset, config.qa)
  manifest = {
      "schema_version": SCHEMA_VERSION, "dataset": config.qa.dataset,
      "mode": "given_text" if config.qa.dataset in GIVEN_TEXT_SETS else "own_answer",
      "model": {"name": config.model.name, "source": config.model.source, "family": config.model.family},
      "prompt": fmt.describe(),
      "generation": {"greedy": True, "max_new_tokens": config.qa.max_new_tokens,
                     "batch_size": config.qa.batch_size,
                     "cut_first_sentence": bool(config.qa.get("cut_first_sentence", True))},
      "label_method": examples[0]["label_method"], "label_rates": label_rates,
      "n_examples": len(examples), "n_excluded": len(excluded),
      "excluded_reasons": {r: sum(e["reason"] == r for e in excluded) for r in {e["reason"] for e in excluded}},
      "n_hallucinated": n1, "n_correct": len(labels) - n1, "n_groups": int(len(np.unique(groups))),
      "folds": fold_info, "data_files": {f: qa_data.sha256(f) for f in files},
      "flags": {f: sum(f in e["flags"] for e in examples) for f in sorted({f for e in examples for f in e["flags"]})},
      "warnings": warnings, **(extra_manifest or {})}
  io_utils.atomic_write_json(os.path.join(out_dir, "manifest.json"), manifest)
  io_utils.write_done(out_dir, {"n_examples": len(examples)})
  return manifest


def run(config, workdir: str, model=None) -> None:
  """Stage entry point. `model` may be passed in (tests, notebooks); otherwise it is loaded."""
  out_dir = _out_dir(config, workdir)
  if io_utils.is_done(out_dir):
    logging.info("answer: %s is complete; skipping", out_dir)
    return
  os.makedirs(out_dir, exist_ok=True)
  items = qa_data.load(config.qa.dataset, config.qa, limit=config.qa.n_questions)
  if model is None:
    from ghosttrack_jax import lm  # pylint: disable=g-import-not-at-top
    model = lm.load_model(config.model)
  examples, excluded, fmt = build_examples(config, model, items, out_dir)
  m = finalize(config, examples, excluded, fmt, out_dir, {"n_questions": len(items)})
  logging.info("answer: %s: %d examples (%d correct, %d hallucinated), %d excluded -> %s",
               config.qa.dataset, m["n_examples"], m["n_correct"], m["n_hallucinated"], m["n_excluded"],
               out_dir)


# ---- readers -------------------------------------------------------------------------------

def load_examples(config, workdir: str, dataset: str | None = None) -> list[dict]:
  """The examples table of a finished `answer` stage (IncompleteStoreError otherwise)."""
  out_dir = paths.for_config(config, workdir).answers(dataset or config.qa.dataset)
  if not io_utils.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'answer' stage first")
  with open(os.path.join(out_dir, "examples.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def load_folds(config, workdir: str, dataset: str | None = None) -> dict:
  """folds.npz of a finished `answer` stage as a dict of arrays."""
  out_dir = paths.for_config(config, workdir).answers(dataset or config.qa.dataset)
  if not io_utils.is_done(out_dir):
    raise IncompleteStoreError(f"{out_dir} has no DONE marker: run the 'answer' stage first")
  with np.load(os.path.join(out_dir, "folds.npz"), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def load_manifest(config, workdir: str, dataset: str | None = None) -> dict:
  out_dir = paths.for_config(config, workdir).answers(dataset or config.qa.dataset)
  m = io_utils.read_json(os.path.join(out_dir, "manifest.json"))
  if m["model"]["name"] != config.model.name:
    raise StoreMismatchError(f"{out_dir} was made for model {m['model']['name']!r}, not {config.model.name!r}")
  return m
