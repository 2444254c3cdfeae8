"""Prompts and answer post-processing of the `answer` stage (also used to score a new question).

Prompt, fixed per model and recorded in the manifest. Few-shot (base models): the instruction line
"Answer each question with a short phrase.", 5 fixed exemplars from the NQ-open EfficientQA dev file as
"Q: ...\nA: ...\n\n", then "Q: {question}\nA:". Chat (instruct models): the tokenizer's chat template
with one user message "Answer with a short phrase only: {question}" and the generation prompt.
`config.qa.prompt_style` = "fewshot" | "chat" | "auto" (chat iff the tokenizer has a chat template).

Post-processing on token ids (the decoded string is never re-tokenised): leading whitespace-only tokens
are moved into the prompt (they are context the model produced, not answer); the answer stops before the
first special token (EOS, end-of-turn) and before the first token whose text contains a newline; with
`config.qa.cut_first_sentence` it also ends after the token that closes the first sentence (text ending in
. ! or ? followed by a token starting with whitespace, or nothing), unless the word before the period is a
single letter or a common abbreviation (Mr, Dr, St, ...).
"""

import dataclasses
import re

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import datasets, labelling
from ghosttrack_jax.errors import DataError

FEWSHOT_INSTRUCTION = "Answer each question with a short phrase."


CHAT_INSTRUCTION = "Answer with a short phrase only: {question}"


N_EXEMPLARS = 5


_ABBREVIATIONS = {
  "mr",
  "mrs",
  "ms",
  "dr",
  "st",
  "jr",
  "sr",
  "vs",
  "no",
  "mt",
  "ft",
  "co",
  "inc",
  "ltd",
  "gen",
  "col",
  "lt",
  "sgt",
  "capt",
  "prof",
  "rev",
  "fr",
  "ave",
  "jan",
  "feb",
  "aug",
  "sept",
  "oct",
  "nov",
  "dec",
  "approx",
  "est",
  "etc",
}


def fewshot_exemplars(
  path: str = datasets.NQ_OPEN_EFFICIENTQA, n: int = N_EXEMPLARS, exclude_questions=()
) -> list[tuple[str, str]]:
  """The first `n` EfficientQA questions with a short (<= 3 words) first answer, skipping any question
  whose normalised text is in `exclude_questions` (one EfficientQA question duplicates an NQ dev one)."""
  excluded = {labelling.normalize_answer(q) for q in exclude_questions}
  out = []
  for item in datasets.load_nq_open(path, prefix="efficientqa"):
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
    return {
      "style": self.style,
      "exemplars": self.exemplars if self.style == "fewshot" else [],
      "template": self.render("{question}", raw=True),
    }


def prompt_format(qa_cfg, tokenizer, exclude_questions=()) -> PromptFormat:
  style = qa_cfg.prompt_style
  if style == "auto":
    style = "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"
  if style not in config_lib.PROMPT_STYLES:
    raise DataError(f"config.qa.prompt_style={style!r}: use one of {config_lib.PROMPT_STYLES}")
  if style == "chat" and not getattr(tokenizer, "chat_template", None):
    raise DataError("config.qa.prompt_style='chat' but the tokenizer has no chat template; use 'fewshot'")
  ex = []
  if style == "fewshot":
    ex = fewshot_exemplars(qa_cfg.fewshot_file, exclude_questions=exclude_questions)
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


def stop_ids(model) -> list[int]:
  tok = model.tokenizer
  ids = set(int(i) for i in (getattr(tok, "all_special_ids", None) or []))
  for attr in ("eos_id", "pad_id"):
    v = getattr(model, attr, None)
    if v is not None:
      ids.add(int(v))
  return sorted(ids)


# ---- model glue ------------------------------------------------------------------------------


def generated_ids(gen) -> list[int]:
  for attr in ("answer_ids", "token_ids", "generated_ids", "ids", "tokens"):
    if hasattr(gen, attr):
      return [int(t) for t in getattr(gen, attr)]
  if isinstance(gen, dict):
    for attr in ("answer_ids", "token_ids", "generated_ids", "ids"):
      if attr in gen:
        return [int(t) for t in gen[attr]]
  raise TypeError(f"cannot read generated token ids from {type(gen).__name__}")


def generated_prompt_ids(gen, model, prompt: str) -> list[int]:
  for attr in ("prompt_ids",):
    if hasattr(gen, attr):
      return [int(t) for t in getattr(gen, attr)]
    if isinstance(gen, dict) and attr in gen:
      return [int(t) for t in gen[attr]]
  return [int(t) for t in model.encode(prompt)]


def encode_continuation(tokenizer, text: str) -> list[int]:
  return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
