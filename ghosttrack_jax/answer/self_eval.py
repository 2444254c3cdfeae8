"""Extra model passes of the answer stage: P(True) and the subject-familiarity proxy (docs/method.md §6.6).

P(True) (Kadavath et al. 2022): the model is shown the question and its own greedy answer in a few-shot
multiple-choice prompt and asked whether the proposed answer is true,

    Question: What is the country of Porto Velho?
    Proposed answer: Brazil
    Is the proposed answer:
     A) True
     B) False
    The proposed answer is: A

then the same block for the question asked, ending in "The proposed answer is:". P(True) is the model's
probability of " A" renormalised over " A" and " B" (both single tokens for the GPT-2 and SmolLM2
tokenizers: `option_ids` checks), and the score is 1 - P(True) (higher = more likely hallucinated).
The shots are the prompt's own solved exemplars (never an evaluated question): exemplar i is shown with
its gold ("A"), except every second one, which is shown with the next exemplar's different gold ("B").
The prompt is plain text for every model, instruct ones included (the semantic-uncertainty reference code
does the same).

Subject familiarity (wikidata, whose questions name a subject): the model's log probability of the
subject's name after the neutral context "Name:", summed and per token, and the name's token count. It is
an offline stand-in for entity popularity (PopQA, Mallen et al. 2023): names the model has seen often are
likely to be ones it knows facts about. It reads only the question, so it belongs to the question-only bar.
"""

import numpy as np

from ghosttrack_jax.errors import DataError
from ghosttrack_jax.runtime import progress

PTRUE_BLOCK = (
  "Question: {question}\nProposed answer: {answer}\nIs the proposed answer:\n A) True\n B) False\n"
)
PTRUE_ASK = "The proposed answer is:"
PTRUE_OPTIONS = (" A", " B")
FAMILIARITY_CONTEXT = "Name:"
FAMILIARITY_COLUMNS = ("subject_logprob", "subject_logprob_per_token", "subject_tokens")
_BUCKET = 32  # padded lengths are multiples of this: few compiles


def ptrue_shots(pairs) -> list[tuple[str, str, bool]]:
  """(question, proposed answer, is it true) shots from solved (question, gold) pairs."""
  shots = []
  for i, (q, a) in enumerate(pairs):
    wrong = pairs[(i + 1) % len(pairs)][1] if len(pairs) > 1 else a
    if i % 2 == 1 and wrong.strip().lower() != a.strip().lower():
      shots.append((q, wrong, False))
    else:
      shots.append((q, a, True))
  return shots


def ptrue_prompt(question: str, answer: str, shots, context: str | None = None) -> str:
  """The P(True) prompt for `answer` to `question` (after the passage `context`, where there is one)."""
  head = "".join(
    PTRUE_BLOCK.format(question=q, answer=a) + f"{PTRUE_ASK}{PTRUE_OPTIONS[0 if ok else 1]}\n\n"
    for q, a, ok in shots
  )
  passage = f"Passage: {context}\n" if context else ""
  return head + passage + PTRUE_BLOCK.format(question=question, answer=answer) + PTRUE_ASK


def option_ids(model, prompt: str) -> list[int]:
  """The token ids of PTRUE_OPTIONS after `prompt`, each required to be exactly one token that leaves
  the prompt's own tokens unchanged (otherwise the probability read would not be the option's)."""
  base = model.encode(prompt)
  out = []
  for opt in PTRUE_OPTIONS:
    ids = model.encode(prompt + opt)
    if ids[: len(base)] != base or len(ids) != len(base) + 1:
      raise DataError(
        f"the tokenizer of {model.name!r} does not encode {opt!r} after the P(True) prompt as one token "
        "of its own; P(True) cannot be read for this model"
      )
    out.append(ids[-1])
  return out


def _padded(seqs, pad_id: int, max_positions: int):
  length = min(-(-max(len(s) for s in seqs) // _BUCKET) * _BUCKET, max_positions)
  ids = np.full((len(seqs), length), pad_id, np.int32)
  mask = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    s = s[-length:]  # a prompt longer than the model's positions keeps its end (the question)
    ids[i, : len(s)], mask[i, : len(s)] = s, 1
  return ids, mask


def _batches(seqs, batch_size: int):
  """Row indices per batch, sorted by length (similar lengths share a bucket); last batch padded."""
  order = np.argsort([len(s) for s in seqs], kind="stable")
  for start in range(0, len(order), batch_size):
    rows = order[start : start + batch_size]
    yield rows, np.concatenate([rows, np.repeat(rows[:1], batch_size - len(rows))])


def p_true(model, prompts, batch_size: int) -> np.ndarray:
  """P(True) [N] of each P(True) prompt: p(" A") / (p(" A") + p(" B")) as the next token."""
  if not prompts:
    return np.zeros(0)
  cand = option_ids(model, prompts[0])
  seqs = [model.encode(p) for p in prompts]
  out = np.zeros(len(seqs))
  for rows, full in progress.track(list(_batches(seqs, batch_size)), "answer: P(True)", "batch"):
    ids, mask = _padded([seqs[i] for i in full], model.pad_id, model.max_positions)
    lp = np.asarray(model.next_token_logprobs(ids, mask, cand), np.float64)[: len(rows)]
    out[rows] = np.exp(lp[:, 0] - np.logaddexp(lp[:, 0], lp[:, 1]))
  return out


def subject_familiarity(model, subjects, batch_size: int) -> np.ndarray:
  """[N, 3]: the summed and per-token log probability of " <subject>" after FAMILIARITY_CONTEXT, and its
  token count (FAMILIARITY_COLUMNS)."""
  ctx = model.encode(FAMILIARITY_CONTEXT)
  tok = model.tokenizer
  conts = [[int(t) for t in tok(" " + s, add_special_tokens=False)["input_ids"]] for s in subjects]
  seqs = [ctx + c for c in conts]
  out = np.zeros((len(seqs), 3))
  for rows, full in _batches(seqs, batch_size):
    ids, mask = _padded([seqs[i] for i in full], model.pad_id, model.max_positions)
    lp = np.asarray(model.token_logprobs(ids, mask), np.float64)
    for r, i in enumerate(rows):
      n = len(conts[i])
      total = float(lp[r, len(ctx) : len(ctx) + n].sum())
      out[i] = (total, total / max(n, 1), n)
  return out
