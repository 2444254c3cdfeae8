"""Corpus reading and window packing."""

import gzip
import json

import numpy as np
import pytest

from ghosttrack_jax.errors import DataError
from ghosttrack_jax.extract import corpus


def _encode(texts):
  return [[ord(ch) for ch in t] for t in texts]


def test_packing_keeps_every_token_in_order_with_eos_between_documents(tmp_path):
  docs = ["abcde", "fg", "hijklmnop"]
  windows = list(corpus.iter_windows(iter(docs), _encode, eos_id=0, seq_len=4))
  stream = (
    [ord(c) for c in "abcde"] + [0] + [ord(c) for c in "fg"] + [0] + [ord(c) for c in "hijklmnop"] + [0]
  )
  assert len(windows) == len(stream) // 4
  flat = np.concatenate([w for w, _ in windows])
  np.testing.assert_array_equal(flat, stream[: len(flat)])
  doc_flat = np.concatenate([d for _, d in windows])
  assert doc_flat[0] == 0 and doc_flat[6] == 1 and doc_flat[9] == 2
  assert all(w.dtype == np.int32 and w.shape == (4,) for w, _ in windows)


def test_windows_start_with_bos_when_asked():
  """BOS then seq_len - 1 stream tokens per window; the stream itself is packed as without BOS."""
  docs = ["abcde", "fg", "hijklmnop"]
  windows = list(corpus.iter_windows(iter(docs), _encode, eos_id=0, seq_len=5, bos_id=1))
  stream = (
    [ord(c) for c in "abcde"] + [0] + [ord(c) for c in "fg"] + [0] + [ord(c) for c in "hijklmnop"] + [0]
  )
  assert len(windows) == len(stream) // 4
  assert all(w[0] == 1 and w.shape == (5,) for w, _ in windows)
  np.testing.assert_array_equal(np.concatenate([w[1:] for w, _ in windows]), stream[: 4 * len(windows)])
  assert windows[1][1].tolist() == [0, 0, 0, 1, 1]  # "e", EOS, "f", "g": BOS takes the doc of "e"


def test_jsonl_gz_and_plain_text_sources(tmp_path):
  p = tmp_path / "c.jsonl.gz"
  with gzip.open(p, "wt") as f:
    for t in ["short", "a long enough document " * 3]:
      f.write(json.dumps({"title": "x", "text": t}) + "\n")
  assert list(corpus.iter_documents(str(p), min_chars=20)) == ["a long enough document " * 3]
  q = tmp_path / "c.txt"
  q.write_text("para one\nline two\n\npara two\n")
  assert list(corpus.iter_documents(str(q))) == ["para one\nline two", "para two"]


def test_bad_corpus_inputs_name_the_problem(tmp_path):
  with pytest.raises(DataError, match="does not exist"):
    list(corpus.iter_documents(str(tmp_path / "missing.jsonl")))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"title": "no text field"}\n')
  with pytest.raises(DataError, match="'text' field"):
    list(corpus.iter_documents(str(bad)))
  with pytest.raises(DataError, match="hf:<dataset>"):
    list(corpus.iter_documents("hf:onlyname"))


def test_shipped_sample_is_found_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  first = next(corpus.iter_documents("data/corpus/enwiki2019_sample.jsonl.gz", min_chars=100))
  assert len(first) >= 100
