"""The sampling-based scores (answer.uncertainty) and PRR (stats.prr) on small cases with known answers."""

import math

import numpy as np
import pytest

from ghosttrack_jax import stats
from ghosttrack_jax.answer import uncertainty


def test_semantic_entropy_of_identical_and_all_different_samples():
  same = ["Paris"] * 10
  diff = [f"city number {w}" for w in "one two three four five six seven eight nine ten".split()]
  lp = np.full(10, -0.7)
  for texts, want in ((same, 0.0), (diff, math.log(10))):
    classes = uncertainty.cluster_answers(texts)
    assert uncertainty.semantic_entropy_discrete(classes) == pytest.approx(want)
    assert uncertainty.semantic_entropy_weighted(classes, lp) == pytest.approx(want)
    assert uncertainty.sample_scores(texts, lp, np.eye(10, 4))["num_classes"] == len(set(classes))


def test_meaning_classes():
  texts = ["Paris", "paris.", "Paris, France", "Lyon", "the Lyon", "Farsi", "Persian", ""]
  assert uncertainty.cluster_answers(texts).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
  # "1" is not contained in "1972": whole words only
  assert not uncertainty.equivalent("1", "1972")
  assert not uncertainty.equivalent("", "Paris")


def test_weighted_semantic_entropy_uses_sequence_probabilities():
  classes = np.array([0, 0, 1])
  # one class holds almost all the probability: low entropy, although the counts are 2:1
  skewed = uncertainty.semantic_entropy_weighted(classes, [-0.01, -0.01, -9.0])
  even = uncertainty.semantic_entropy_weighted(classes, [-math.log(2), -math.log(2), 0.0])
  assert skewed < 0.01
  assert even == pytest.approx(math.log(2))  # 0.5 + 0.5 against 1.0: two equal classes
  # probabilities are renormalised over classes, never above 1
  assert 0 <= uncertainty.semantic_entropy_weighted([0, 0, 0, 0], [0.0] * 4) == pytest.approx(0.0)


def test_naive_entropy_lexical_and_eigenscore():
  assert uncertainty.naive_entropy([-1.0, -3.0]) == pytest.approx(2.0)
  assert uncertainty.lexical_dissimilarity(["a b", "a b"]) == pytest.approx(0.0)
  assert uncertainty.lexical_dissimilarity(["red", "blue"]) == pytest.approx(1.0)
  rng = np.random.default_rng(0)
  same = np.tile(rng.normal(size=64), (10, 1))
  spread = rng.normal(size=(10, 64))
  # identical embeddings (each centred over its features, as in INSIDE): a rank-one covariance K * var,
  # every other eigenvalue alpha
  var = np.var(same[0], ddof=1)
  want = (math.log(10 * var + 1e-3) + 9 * math.log(1e-3)) / 10
  assert uncertainty.eigenscore(same) == pytest.approx(want, rel=1e-6)
  assert uncertainty.eigenscore(spread) > uncertainty.eigenscore(same) + 5


def test_prr_perfect_random_and_constant():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 400)
  assert stats.prr(y.astype(float), y) == pytest.approx(1.0)
  assert abs(np.mean([stats.prr(rng.normal(size=400), y) for _ in range(100)])) < 0.03
  assert stats.prr(np.zeros(400), y) == pytest.approx(0.0, abs=1e-12)  # ties = expected random order
  assert stats.prr(-y.astype(float), y) < -0.5
  assert math.isnan(stats.prr(np.arange(5.0), np.zeros(5)))  # one class: undefined


def test_prr_weights_are_row_copies():
  rng = np.random.default_rng(2)
  s, y, w = rng.normal(size=30), rng.integers(0, 2, 30), rng.integers(0, 4, 30)
  expanded = stats.prr(np.repeat(s, w), np.repeat(y, w))
  assert stats.prr(s, y, w.astype(float)) == pytest.approx(expanded)
  both = stats.prr(s, y, np.stack([w, np.ones(30)]).astype(float))
  assert both[0] == pytest.approx(expanded) and both[1] == pytest.approx(stats.prr(s, y))
