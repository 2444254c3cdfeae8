"""The field's unsupervised hallucination scores from sampled answers (docs/method.md §6.6).

Every score is oriented in advance so that HIGHER = MORE LIKELY HALLUCINATED; nothing here is fit on
labels. Inputs are the post-processed samples of one question (the same post-processing as the greedy
answer: stop at a newline, a special token or the end of the first sentence):

  * meaning classes (`cluster_answers`): the semantic-entropy papers cluster samples by bidirectional
    entailment under an NLI model. Our answers are a few words, so two answers share a class when their
    normalised texts are equal, name the same thing in the reviewed alias table (answer/aliases.py:
    "Farsi" ~ "Persian"), or one normalised text occurs in the other as a whole-word sequence ("Paris"
    ~ "Paris, France"). Classes are built greedily against each class's first member, as the reference
    code does, so the relation needs no transitivity. Empty answers form one class of their own.
  * `semantic_entropy_discrete`: entropy (nats) of the class frequencies (count / N).
  * `semantic_entropy_weighted`: each class's probability from its members' length-normalised sequence
    probabilities (log-sum-exp of the mean token log-probabilities), renormalised over the classes
    (so it can never exceed 1), then the entropy (nats).
  * `naive_entropy`: minus the mean of the samples' length-normalised sequence log-probabilities.
  * `num_classes` (LM-Polygraph's NumSemSets) and `lexical_dissimilarity`: 1 - mean pairwise
    ROUGE-L F of the samples (LM-Polygraph's lexical similarity, flipped so higher = less consistent).
  * `eigenscore` (INSIDE, Chen et al. 2024): the K sampled answers' embeddings (the middle block's output
    at each answer's last token), each centred over its d features, their K x K covariance plus alpha I,
    and (1/K) log det of it.
"""

import numpy as np

from ghosttrack_jax.answer import aliases, labelling

# Normalised alias -> its canonical name, so that "Farsi" and "Persian" fall in one class.
_ALIAS_CLASS = {}
for _canonical, _names in aliases.EXTRA_ALIASES.items():
  for _name in (_canonical, *_names):
    _ALIAS_CLASS.setdefault(labelling.normalize_answer(_name), labelling.normalize_answer(_canonical))

SCORES = (
  "semantic_entropy",
  "semantic_entropy_discrete",
  "naive_entropy",
  "num_classes",
  "lexical_dissimilarity",
  "eigenscore",
)


def equivalent(a: str, b: str) -> bool:
  """Whether two answers mean the same thing, under the rule in the module docstring."""
  na, nb = labelling.normalize_answer(a), labelling.normalize_answer(b)
  if na == nb:
    return True
  if not na or not nb:
    return False
  if _ALIAS_CLASS.get(na, na) == _ALIAS_CLASS.get(nb, nb):
    return True
  short, long_ = (na, nb) if len(na) <= len(nb) else (nb, na)
  return f" {short} " in f" {long_} "


def cluster_answers(texts) -> np.ndarray:
  """Class index per answer [N] (0, 1, ... in order of first appearance)."""
  reps, out = [], []
  for t in texts:
    for c, rep in enumerate(reps):
      if equivalent(t, rep):
        out.append(c)
        break
    else:
      reps.append(t)
      out.append(len(reps) - 1)
  return np.asarray(out, np.int64)


def _entropy(p) -> float:
  p = np.asarray(p, np.float64)
  p = p[p > 0]
  return float(-(p * np.log(p)).sum()) if p.size else 0.0


def semantic_entropy_discrete(classes) -> float:
  counts = np.bincount(np.asarray(classes, np.int64))
  return _entropy(counts / max(counts.sum(), 1))


def semantic_entropy_weighted(classes, mean_logprobs) -> float:
  """Entropy of the class distribution whose weights are the members' summed length-normalised
  sequence probabilities (computed in log space, renormalised over classes)."""
  classes = np.asarray(classes, np.int64)
  lp = np.asarray(mean_logprobs, np.float64)
  per_class = np.array([np.logaddexp.reduce(lp[classes == c]) for c in range(classes.max() + 1)])
  p = np.exp(per_class - np.logaddexp.reduce(per_class))
  return _entropy(p)


def naive_entropy(mean_logprobs) -> float:
  return float(-np.mean(np.asarray(mean_logprobs, np.float64)))


def lexical_dissimilarity(texts) -> float:
  """1 - the mean ROUGE-L F over all pairs of samples (0 when every sample is the same text)."""
  sims = [labelling.rouge_l(a, b) for i, a in enumerate(texts) for b in texts[i + 1 :]]
  return float(1.0 - np.mean(sims)) if sims else 0.0


def eigenscore(embeddings, alpha: float = 1e-3) -> float:
  """(1/K) log det(C + alpha I), C the K x K covariance of the K embeddings [K, D] (each embedding centred
  over its D features, as np.cov does with one variable per row)."""
  z = np.asarray(embeddings, np.float64)
  k = z.shape[0]
  c = np.cov(z) if k > 1 else np.zeros((1, 1))
  eig = np.linalg.eigvalsh(np.atleast_2d(c) + alpha * np.eye(k))
  return float(np.mean(np.log(np.maximum(eig, alpha))))


def sample_scores(texts, mean_logprobs, embeddings) -> dict[str, float]:
  """Every score of SCORES for one question's samples (texts [S], mean token log-probs [S], [S, D])."""
  classes = cluster_answers(texts)
  return {
    "semantic_entropy": semantic_entropy_weighted(classes, mean_logprobs),
    "semantic_entropy_discrete": semantic_entropy_discrete(classes),
    "naive_entropy": naive_entropy(mean_logprobs),
    "num_classes": float(classes.max() + 1),
    "lexical_dissimilarity": lexical_dissimilarity(texts),
    "eigenscore": eigenscore(embeddings),
  }
