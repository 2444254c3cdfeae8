"""Text corpus -> fixed-length token windows.

Packing rule: documents are read in file order, each is tokenised without special tokens, followed by
the model's end-of-text token, and appended to one token stream; the stream is cut into consecutive
windows of `seq_len` tokens. For a model that expects BOS at the start of every input (Gemma 3, whose
activations without it are off the distribution its prompts see) a window is BOS plus `seq_len - 1`
stream tokens instead. Documents therefore span window boundaries and nothing is padded or
truncated away (truncating each article would over-represent article leads). The last, incomplete
window is dropped. Position 0 of every window is later excluded from the store, since a token with no
context acts as an attention sink with an outlier norm.

Sources: a `.jsonl` / `.jsonl.gz` file with a "text" field (the shipped Wikipedia sample), a plain-text
file (`.txt`, `.raw`; documents separated by blank lines), or `hf:<dataset>[:<config>]:<split>` through
the `datasets` library where it is installed and the hub is reachable.
"""

import gzip
import json
import os
from typing import Callable, Iterator

import numpy as np

from ghosttrack_jax.errors import DataError
from ghosttrack_jax.runtime import atomic_io, paths

# Documents are tokenised in groups of this many (fast tokenizers batch well).
_TOKENIZE_GROUP = 64


def resolve_path(path: str) -> str:
  """Resolves a corpus path relative to the working directory, then to the repository root."""
  return paths.repo_relative(path)


def describe(path: str) -> dict:
  """Provenance recorded in the store's metadata: path, size and SHA-256 of a local file."""
  path = resolve_path(path)
  if path.startswith("hf:"):
    return {"source": path}
  return {
    "source": os.path.abspath(path),
    "bytes": os.path.getsize(path),
    "sha256": atomic_io.file_sha256(path),
  }


def _iter_jsonl(path: str) -> Iterator[str]:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(
          f"{path}:{line_no} is not valid JSON ({e}); a .jsonl corpus needs one "
          "JSON object per line with a 'text' field"
        ) from e
      if not isinstance(record, dict) or "text" not in record:
        raise DataError(
          f"{path}:{line_no} has no 'text' field; each line must be "
          '{"text": "..."} (other fields are ignored)'
        )
      yield record["text"]


def _iter_plain(path: str) -> Iterator[str]:
  with open(path, encoding="utf-8") as f:
    block: list[str] = []
    for line in f:
      if line.strip():
        block.append(line.rstrip("\n"))
      elif block:
        yield "\n".join(block)
        block = []
    if block:
      yield "\n".join(block)


def _iter_hf(spec: str) -> Iterator[str]:
  parts = spec[3:].split(":")
  if len(parts) not in (2, 3):
    raise DataError(f"corpus {spec!r}: use hf:<dataset>:<split> or hf:<dataset>:<config>:<split>")
  try:
    # Optional: the Hugging Face datasets library is not a dependency (hf: corpora need network).
    import datasets  # noqa: PLC0415
  except ImportError as e:
    raise DataError(
      f"corpus {spec!r} needs the `datasets` library: pip install datasets, or use a local .jsonl/.txt file"
    ) from e
  name, split = parts[0], parts[-1]
  config = parts[1] if len(parts) == 3 else None
  for record in datasets.load_dataset(name, config, split=split, streaming=True):
    yield record["text"]


def iter_documents(path: str, min_chars: int = 0) -> Iterator[str]:
  """Yields the documents of a corpus, skipping those shorter than `min_chars` characters."""
  path = resolve_path(path)
  if path.startswith("hf:"):
    docs = _iter_hf(path)
  elif not os.path.exists(path):
    raise DataError(
      f"corpus file {path!r} does not exist: set --config.data.corpus to a .jsonl(.gz) "
      "or .txt file (the shipped sample is data/corpus/enwiki2019_sample.jsonl.gz)"
    )
  elif path.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
    docs = _iter_jsonl(path)
  else:
    docs = _iter_plain(path)
  for text in docs:
    if len(text.strip()) >= max(min_chars, 1):
      yield text


def iter_windows(
  documents: Iterator[str],
  encode_batch: Callable[[list[str]], list[list[int]]],
  eos_id: int,
  seq_len: int,
  bos_id: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Packs documents into windows; yields (token_ids [seq_len], doc_ids [seq_len]) as int32.

  `encode_batch` tokenises a list of texts without special tokens. With `bos_id`, every window starts
  with it (its doc id is the next token's). Memory holds one group of documents and at most one
  window's worth of leftover tokens.
  """
  take = seq_len - (bos_id is not None)  # stream tokens per window
  tokens: list[int] = []
  docs: list[int] = []
  doc_index = 0

  def groups():
    group = []
    for text in documents:
      group.append(text)
      if len(group) == _TOKENIZE_GROUP:
        yield group
        group = []
    if group:
      yield group

  for group in groups():
    for ids in encode_batch(group):
      tokens.extend(ids)
      tokens.append(eos_id)
      docs.extend([doc_index] * (len(ids) + 1))
      doc_index += 1
    n_full = len(tokens) // take
    for w in range(n_full):
      sl = slice(w * take, (w + 1) * take)
      ids, doc = tokens[sl], docs[sl]
      if bos_id is not None:
        ids, doc = [bos_id] + ids, doc[:1] + doc
      yield np.asarray(ids, np.int32), np.asarray(doc, np.int32)
    tokens = tokens[n_full * take :]
    docs = docs[n_full * take :]
