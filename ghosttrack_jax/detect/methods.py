"""The aligned feature table and the methods that detect scores on it (docs/method.md §5.2, §6.3).

`load_feature_data` joins the track stage's feature table with the answer stage's examples, fold file and
question scores (checking they agree) and adds the text and question features; `plan_methods` lists every
method in report order: GhostTrack with each configured classifier, the reconstruction family, ablations
and sweeps, scalar baselines, the field's unsupervised scores (fixed sign, nothing fit), raw-residual and
pooled-SAE probes, probes at single positions (last prompt token, first and last answer token) and
semantic-entropy probes, surface baselines, question-only controls, combined and incremental rows.
"""

import dataclasses
import json
import re

import numpy as np
import sklearn.feature_extraction.text
import sklearn.linear_model
import sklearn.pipeline

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import examples as examples_lib
from ghosttrack_jax.answer import self_eval
from ghosttrack_jax.detect import classifiers
from ghosttrack_jax.errors import StoreMismatchError
from ghosttrack_jax.track import feature_table

OPENER = re.compile(
  r"^\s*(no|nothing|not|none|never|nobody|it depends|there is no|there are no|"
  r"i have no comment)\b",
  re.IGNORECASE,
)


class FeatureData:
  """The aligned feature table: arrays per set, labels, groups, folds, answer texts."""

  def __init__(
    self,
    sets: dict,
    meta: dict,
    example_id,
    label,
    group_id,
    folds,
    texts,
    label_method: str | None = None,
    label_variants: dict | None = None,
    question_texts=None,
  ):
    self.sets = sets
    self.meta = meta
    self.example_id = np.asarray(example_id)
    self.label = np.asarray(label).astype(int)
    self.group_id = np.asarray(group_id)
    self.folds = np.asarray(folds).astype(int)
    self.texts = list(texts)
    # what the question-only baselines see: "relation_<name> <question text>" per row
    self.question_texts = list(question_texts) if question_texts is not None else [""] * len(self.texts)
    self.layers = meta.get("layers") or list(range(meta.get("n_layers", 0)))
    self.label_method = label_method  # the primary label method
    self.label_variants = label_variants or {}  # other label method -> labels [N] (same rows)
    self.relation = np.array([""] * len(self.texts))  # the wikidata relation per row ("" elsewhere)

  def columns(self, name):
    return self.meta["feature_sets"][name]["columns"]

  def get(self, spec: "Method", rows) -> np.ndarray:
    if spec.text_features == "bow":
      return np.asarray([self.texts[i] for i in rows], dtype=object)
    if spec.text_features == "question_bow":
      return np.asarray([self.question_texts[i] for i in rows], dtype=object)
    if spec.text_features == "relation":
      return np.asarray([self.question_texts[i].split(" ", 1)[0] for i in rows], dtype=object)
    return self.get_parts(spec.parts, rows)

  def get_parts(self, parts_spec, rows) -> np.ndarray:
    """The columns of ((feature_set, columns or None), ...) for `rows`, side by side (float64)."""
    parts = []
    for name, cols in parts_spec:
      x = self.sets[name][rows]
      if x.ndim == 3:
        x = x.reshape(len(rows), -1)
      if cols is not None:
        idx = [self.columns(name).index(c) for c in cols]
        x = x[:, idx]
      parts.append(np.asarray(x, np.float64))
    return np.concatenate(parts, axis=1)

  def get3(self, name, rows) -> np.ndarray:
    return np.asarray(self.sets[name][rows], np.float64)


@dataclasses.dataclass
class Method:
  name: str
  kind: str
  label: str
  classifier: str = "logistic"
  parts: tuple = ()  # ((feature_set, columns or None), ...)
  feature_set: str = ""  # for layer_select
  layer_select: bool = False
  candidate_sets: tuple = ()  # feature sets (tracker settings) one is chosen from by inner CV
  # "bow" (answer text), "question_bow" (relation token + question words), "relation" (its token only)
  text_features: str = ""
  search_c: bool = True
  # != 0: an unsupervised score, `sign` x the one column of `parts` (higher = more likely hallucinated,
  # fixed in advance from the method's definition); nothing is fit
  sign: float = 0.0
  layer_range: int = 0  # > 0 with layer_select: this many contiguous layers around the chosen one
  extra_parts: tuple = ()  # parts appended to the layer-selected features (incremental rows)
  # what the method is trained on: "label" (correctness) or "semantic_entropy" (SEP: the semantic
  # entropy of the training rows, binarised there; scored against correctness like every method)
  target: str = "label"
  compare_to: str = ""  # incremental rows: the method this one extends (paired difference in evaluate)
  loro: bool = False  # also scored by leave-one-relation-out cross-validation

  def make(self, c=1.0):
    if self.text_features:
      # The relation token ("relation_country") is one word of the vocabulary: with "relation" alone
      # the bag is the relation's one-hot; with "question_bow" it is one-hot plus the question's words.
      return sklearn.pipeline.Pipeline(
        [
          ("bow", sklearn.feature_extraction.text.CountVectorizer(lowercase=True, binary=True)),
          # lbfgs on the sparse counts: Newton-Cholesky would form a vocabulary x vocabulary Hessian
          ("clf", sklearn.linear_model.LogisticRegression(C=c, class_weight="balanced", max_iter=5000)),
        ]
      )
    return classifiers.make_classifier(self.classifier, c)

  def describe(self) -> dict:
    return {
      "kind": self.kind,
      "label": self.label,
      "classifier": "none (fixed sign)" if self.sign else self.classifier,
      "features": [[n, c] for n, c in self.parts]
      if self.parts
      else list(self.candidate_sets) or self.feature_set or self.text_features,
      "layer_select": self.layer_select,
      **({"sign": self.sign} if self.sign else {}),
      **({"layer_range": self.layer_range} if self.layer_range else {}),
      **({"extra_features": [[n, c] for n, c in self.extra_parts]} if self.extra_parts else {}),
      **({"target": self.target} if self.target != "label" else {}),
      **({"compare_to": self.compare_to} if self.compare_to else {}),
    }


def plan_methods(data: FeatureData, config) -> list[Method]:
  """Every method to score, in report order."""
  fs = data.meta["feature_sets"]
  classifiers = [c for c in config.evaluate.classifiers]
  out = []
  if "ghosttrack" in fs:
    for clf in classifiers:
      kind = "ghosttrack" if clf == "logistic" else "ghosttrack_classifier"
      out.append(
        Method(f"ghosttrack/{clf}", kind, f"GhostTrack 26 metrics, {clf}", clf, (("ghosttrack", None),))
      )
  sweeps = tuple(
    n
    for n, info in fs.items()
    if n.startswith("ghosttrack_") and info.get("kind") == "sweep" and not info.get("per_layer")
  )
  if "ghosttrack" in fs and sweeps:
    out.append(
      Method(
        "ghosttrack/inner_cv_settings",
        "ghosttrack_tuned",
        "GhostTrack, tracker setting (top-k, pooling) chosen by inner CV on the training folds, LR",
        candidate_sets=("ghosttrack",) + sweeps,
      )
    )
  if "reconstruction" in fs:
    out.append(
      Method(
        "reconstruction/logistic",
        "reconstruction",
        "Reconstruction-error family (8), LR",
        "logistic",
        (("reconstruction", None),),
      )
    )
  if config.evaluate.ablations:
    for name, info in fs.items():
      if name.startswith("ghosttrack_") and not info.get("per_layer"):
        kind = info.get("kind") or ("sweep" if ("topk" in name or "pool" in name) else "ablation")
        out.append(Method(f"{name}/logistic", kind, f"{name} (26 metrics), LR", "logistic", ((name, None),)))
  if "scalar_baselines" in fs:
    for col in fs["scalar_baselines"]["columns"]:
      out.append(
        Method(
          f"baseline/{col}",
          "baseline",
          f"{col} (1-feature LR)",
          "logistic",
          (("scalar_baselines", [col]),),
          search_c=False,
        )
      )
    out.append(
      Method(
        "baseline/scalar_all",
        "baseline",
        "all scalar baselines, LR",
        "logistic",
        (("scalar_baselines", None),),
      )
    )
  out += unsupervised_methods(data)
  for name, label in (("raw_resid", "raw-residual probe"), ("sae_pooled", "pooled SAE-feature probe")):
    if name in fs:
      out.append(
        Method(
          f"probe/{name}_best_layer",
          "probe",
          f"{label}, best layer (inner CV)",
          "logistic",
          feature_set=name,
          layer_select=True,
        )
      )
      out.append(
        Method(f"probe/{name}_all_layers", "probe", f"{label}, all layers", "logistic", ((name, None),))
      )
  out += position_probes(data)
  out.append(
    Method("surface/bag_of_words", "surface", "bag of words on the answer text, LR", text_features="bow")
  )
  # Question-only controls: they never see the answer or the model, so whatever they score is what the
  # question alone gives away (wikidata relations differ hugely in accuracy).
  out.append(
    Method(
      "question_only/relation_and_words",
      "question_only",
      "question only: relation one-hot + bag of words of the question, LR",
      text_features="question_bow",
    )
  )
  if any(t.startswith("relation_") and t.split(" ", 1)[0] != "relation_" for t in data.question_texts):
    out.append(
      Method(
        "question_only/relation",
        "question_only",
        "question only: relation one-hot, LR",
        text_features="relation",
      )
    )
  bar = question_bar(data)
  if bar is not None and bar.name != "question_only/relation":
    out.append(bar)
  if data.meta.get("mode") == "given_text":
    out.append(
      Method(
        "surface/opener",
        "surface",
        "opener indicator (No/Not/Nothing/It depends...)",
        parts=(("opener", None),),
        search_c=False,
      )
    )
  if "ghosttrack" in fs and "scalar_baselines" in fs:
    out.append(
      Method(
        "combined/ghosttrack+scalar_baselines",
        "combined",
        "GhostTrack + scalar baselines, LR",
        "logistic",
        (("ghosttrack", None), ("scalar_baselines", None)),
      )
    )
  if "ghosttrack" in fs and "raw_resid" in fs:
    out.append(
      Method(
        "combined/ghosttrack+raw_resid_all_layers",
        "combined",
        "GhostTrack + raw residuals (all layers), LR",
        "logistic",
        (("ghosttrack", None), ("raw_resid", None)),
      )
    )
  out += incremental_methods(data, bar)
  held_out = set(RELATION_HELD_OUT) | ({bar.name} if bar is not None else set())
  for m in out:
    m.loro = m.name in held_out
  return out


PRIMARY = "ghosttrack/logistic"
# Refit with whole relations held out (wikidata; detect.stage): GhostTrack, the strongest probes of each
# kind, the question-only controls and two unsupervised scores (unchanged by refitting, there to compare).
RELATION_HELD_OUT = (
  PRIMARY,
  "ghosttrack/random_forest",
  "probe/sae_pooled_all_layers",
  "probe/ans_last_best_layer",
  "probe/sep_ans_last_best_layer",
  "probe/tbg_best_layer",
  "question_only/relation",
  "unsupervised/semantic_entropy",
  "unsupervised/max_sequence_probability",
)

# The field's unsupervised scores (docs/method.md §6.6): (name, feature set, column, sign, label). Every
# sign makes higher = more likely hallucinated and is fixed here, never fit.
UNSUPERVISED = (
  ("semantic_entropy", "question_scores", "semantic_entropy", 1.0, "semantic entropy (probability-weighted)"),
  (
    "semantic_entropy_discrete",
    "question_scores",
    "semantic_entropy_discrete",
    1.0,
    "semantic entropy (discrete)",
  ),
  ("naive_entropy", "question_scores", "naive_entropy", 1.0, "naive predictive entropy of the samples"),
  ("num_classes", "question_scores", "num_classes", 1.0, "number of meaning classes among the samples"),
  ("lexical_dissimilarity", "question_scores", "lexical_dissimilarity", 1.0, "1 - mean pairwise ROUGE-L"),
  ("eigenscore", "question_scores", "eigenscore", 1.0, "EigenScore (mid-layer, last answer token)"),
  ("p_false", "question_scores", "p_true", -1.0, "P(True) of the answer (score = -P(True))"),
  ("max_sequence_probability", "scalar_baselines", "sum_nll", 1.0, "maximum sequence probability (-log p)"),
  ("perplexity", "scalar_baselines", "mean_nll", 1.0, "perplexity (mean token NLL)"),
  ("mean_token_entropy", "scalar_baselines", "mean_entropy", 1.0, "mean token entropy"),
)


def unsupervised_methods(data: "FeatureData") -> list[Method]:
  out = []
  fs = data.meta["feature_sets"]
  for name, fset, col, sign, label in UNSUPERVISED:
    if fset in fs and col in fs[fset]["columns"]:
      out.append(
        Method(
          f"unsupervised/{name}", "unsupervised", label, parts=((fset, [col]),), search_c=False, sign=sign
        )
      )
  return out


SEP_LAYERS = 5  # contiguous layers of the range probes (Kossen et al. concatenate a range)


def position_probes(data: "FeatureData") -> list[Method]:
  """Probes at the positions of the literature: the last prompt token (TBG: it sees only the question,
  so it is a question-only control), the first and the last answer token (exact answer); each at the best
  layer by inner CV and on the SEP_LAYERS contiguous layers around it; and semantic-entropy probes (SEP,
  trained on binarised semantic entropy) at TBG and the last answer token."""
  fs = data.meta["feature_sets"]
  out = []
  where = {
    "tbg": "last prompt token (TBG)",
    "ans_first": "first answer token",
    "ans_last": "last answer token",
  }
  for name, label in where.items():
    if name not in fs:
      continue
    kind = "question_only" if name == "tbg" else "probe"
    out.append(
      Method(
        f"probe/{name}_best_layer",
        kind,
        f"raw residual at the {label}, best layer (inner CV), LR",
        feature_set=name,
        layer_select=True,
      )
    )
    out.append(
      Method(
        f"probe/{name}_layer_range",
        kind,
        f"raw residual at the {label}, {SEP_LAYERS} layers around the best one, LR",
        feature_set=name,
        layer_select=True,
        layer_range=SEP_LAYERS,
      )
    )
  se = "question_scores" in fs and "semantic_entropy" in fs["question_scores"]["columns"]
  for name in ("tbg", "ans_last"):
    if se and name in fs:
      out.append(
        Method(
          f"probe/sep_{name}_best_layer",
          "probe",
          f"semantic-entropy probe at the {where[name]}, best layer: trained on binarised semantic entropy",
          feature_set=name,
          layer_select=True,
          target="semantic_entropy",
        )
      )
  return out


def question_bar(data: "FeatureData") -> Method | None:
  """The question-only bar: the relation one-hot plus the subject-familiarity proxy where the questions
  name a subject (wikidata), else the relation one-hot alone; None for sets with neither."""
  fs = data.meta["feature_sets"]
  if "question" in fs:
    return Method(
      "question_only/relation_and_familiarity",
      "question_only",
      "question only: relation one-hot + subject familiarity (log p of the subject, its tokens), LR",
      parts=(("question", None),),
    )
  if any(t.startswith("relation_") and t.split(" ", 1)[0] != "relation_" for t in data.question_texts):
    return Method(
      "question_only/relation",
      "question_only",
      "question only: relation one-hot, LR",
      text_features="relation",
    )
  return None


def incremental_methods(data: "FeatureData", bar: Method | None) -> list[Method]:
  """'X + question-only' for GhostTrack, the exact-answer probe, the strongest probe of the default run
  (pooled SAE codes, all layers) and semantic entropy, each compared with the question-only bar alone
  (evaluate: paired difference). Only where the bar has numeric features."""
  fs = data.meta["feature_sets"]
  if bar is None or "question" not in fs:
    return []
  q = (("question", None),)
  ref = bar.name
  out = []
  if "ghosttrack" in fs:
    out.append(
      Method(
        "incremental/ghosttrack+question",
        "incremental",
        "GhostTrack + question-only features, LR",
        parts=(("ghosttrack", None),) + q,
        compare_to=ref,
      )
    )
  if "ans_last" in fs:
    out.append(
      Method(
        "incremental/ans_last_probe+question",
        "incremental",
        "last-answer-token probe (best layer) + question-only features, LR",
        feature_set="ans_last",
        layer_select=True,
        extra_parts=q,
        compare_to=ref,
      )
    )
  if "sae_pooled" in fs:
    out.append(
      Method(
        "incremental/sae_pooled_all_layers+question",
        "incremental",
        "pooled SAE codes (all layers) + question-only features, LR",
        parts=(("sae_pooled", None),) + q,
        compare_to=ref,
      )
    )
  if "question_scores" in fs and "semantic_entropy" in fs["question_scores"]["columns"]:
    out.append(
      Method(
        "incremental/semantic_entropy+question",
        "incremental",
        "semantic entropy + question-only features, LR",
        parts=(("question_scores", ["semantic_entropy"]),) + q,
        compare_to=ref,
      )
    )
  return out


def load_feature_data(config, workdir: str, dataset: str | None = None) -> FeatureData:
  """Loads the feature table, checks it against the answer stage's fold file, adds text features."""
  dataset = dataset or config_lib.question_set(config)
  arrays, meta = feature_table.load_features(feature_table.directory(config, workdir, dataset))
  folds_file = examples_lib.load_folds(config, workdir, dataset)
  examples = {e["id"]: e for e in examples_lib.load_examples(config, workdir, dataset)}
  eid = arrays["example_id"].astype(str)
  pos = {e: i for i, e in enumerate(folds_file["example_id"].astype(str))}
  missing = [e for e in eid if e not in pos]
  if missing:
    raise StoreMismatchError(
      f"{len(missing)} feature rows (e.g. {missing[0]}) are not in the answer "
      "stage's examples: rerun 'track' after 'answer'"
    )
  idx = np.array([pos[e] for e in eid])
  folds = folds_file["folds"][:, idx]
  label = folds_file["label"][idx].astype(int)
  if "label" in arrays and not np.array_equal(arrays["label"].astype(int), label):
    raise StoreMismatchError("labels in features.npz differ from the answer stage's fold file")
  if "folds" in arrays and not np.array_equal(arrays["folds"].astype(int), folds.astype(int)):
    raise StoreMismatchError("folds in features.npz differ from the answer stage's fold file")
  sets = {k[3:]: v for k, v in arrays.items() if k.startswith("X__")}
  texts = [examples[e]["answer_text"] for e in eid]
  question_texts = [question_text(examples[e]) for e in eid]
  meta = json.loads(json.dumps(meta))
  meta.setdefault("mode", examples[eid[0]].get("mode", "own_answer"))
  if "scalar_baselines" not in sets:  # lengths are always available from the examples table
    sets["scalar_baselines"] = np.array(
      [[len(examples[e]["answer_ids"]), len(examples[e]["answer_text"].split())] for e in eid], np.float32
    )
    meta["feature_sets"]["scalar_baselines"] = {
      "columns": ["answer_tokens", "answer_words"],
      "per_layer": False,
      "kind": "baseline",
    }
  if meta["mode"] == "given_text":
    sets["opener"] = np.array([[float(bool(OPENER.match(t)))] for t in texts], np.float32)
    meta["feature_sets"]["opener"] = {"columns": ["opener"], "per_layer": False, "kind": "surface"}
  _add_question_sets(config, workdir, dataset, examples, eid, sets, meta)
  primary = examples[eid[0]].get("label_method")
  variants = {
    m: np.array([int(examples[e]["labels_all"][m]) for e in eid])
    for m in examples[eid[0]].get("labels_all", {})
    if m != primary
  }
  data = FeatureData(
    sets, meta, eid, label, folds_file["group_id"][idx], folds, texts, primary, variants, question_texts
  )
  data.relation = np.array([examples[e].get("relation", "") for e in eid])
  return data


def _add_question_sets(config, workdir, dataset, examples, eid, sets, meta) -> None:
  """Adds the answer stage's question scores (sampling scores, P(True), subject familiarity) as the set
  `question_scores`, and the numeric question-only features (relation one-hot, subject familiarity) as the
  set `question`, both aligned with the feature table's rows."""
  ids, scores = examples_lib.load_question_scores(config, workdir, dataset)
  if scores:
    pos = {str(e): i for i, e in enumerate(ids)}
    missing = [e for e in eid if e not in pos]
    if missing:
      raise StoreMismatchError(f"example {missing[0]} has no question scores: rerun 'answer' and 'track'")
    rows = np.array([pos[e] for e in eid])
    names = sorted(scores)
    sets["question_scores"] = np.stack([scores[n][rows] for n in names], 1).astype(np.float64)
    meta["feature_sets"]["question_scores"] = {"columns": names, "per_layer": False, "kind": "unsupervised"}
  relations = sorted({examples[e].get("relation", "") for e in eid} - {""})
  cols, parts = [], []
  if relations:
    rel = np.array([examples[e].get("relation", "") for e in eid])
    parts.append(np.stack([(rel == r).astype(np.float64) for r in relations], 1))
    cols += [f"relation={r}" for r in relations]
  fam = [c for c in self_eval.FAMILIARITY_COLUMNS if c in scores]
  if fam:
    parts.append(np.stack([scores[c][rows] for c in fam], 1))
    cols += fam
  if parts:
    sets["question"] = np.concatenate(parts, 1)
    meta["feature_sets"]["question"] = {"columns": cols, "per_layer": False, "kind": "question_only"}


def question_text(example: dict) -> str:
  """The question-only baselines' input: the relation as one token, then the question's words."""
  rel = "_".join(example.get("relation", "").split())
  return f"relation_{rel} {example['question']}"
