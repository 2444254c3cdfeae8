"""Prompts and answer post-processing of the `answer` stage (also used to score a new question).

Prompt, fixed per (model, dataset) and recorded in the manifest (`PromptFormat` says how each style
renders). Stem (wikidata): the model completes "The country of Novosibirsk is" after
`config.qa.n_exemplars` solved stems of the same relation, set aside from the questions. It is the form
a language model completes best, instruct or base: SmolLM2-135M-Instruct answers 41% of a capped
wikidata sample this way with a median answer of one word, against 29.5% for the chat question form,
whose answers are sentences. Few-shot (base models): the instruction line, 5 fixed exemplars from the
NQ-open EfficientQA dev file as "Q: ...\nA: ...\n\n" (SQuAD: passage, question and answer triples
from an article no question is drawn from), then "Q: {question}\nA:". Chat (instruct models): the
tokenizer's chat template with one user message "Answer with a short phrase only: {question}" (after
the passage, where there is one) and the generation prompt. `config.qa.prompt_style` = "stem" |
"fewshot" | "chat" | "auto" (stem for wikidata, else chat iff the tokenizer has a chat template).

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
from ghosttrack_jax.lm import model as lm_model

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


SQUAD_INSTRUCTION = "Answer each question with a short phrase from the passage."
CHAT_CONTEXT = "{context}\n\n"

_QUESTION_FORM = re.compile(r"^what is the (.+?) of (.+?)\??$", re.IGNORECASE)


def _question_case(q: str) -> str:
  q = q[:1].upper() + q[1:]
  return q if q.endswith("?") else q + "?"


@dataclasses.dataclass
class PromptFormat:
  """Renders the fixed prompt for a question.

  style "stem": the wikidata stem completed after `exemplars[relation]` (solved stems of the same
    relation, one per line, "The country of Porto Velho is Brazil."), nothing else;
  style "fewshot": the instruction, then the exemplars as "Q: ...\nA: ...\n\n" (NQ-open pairs), or for
    items with a passage as "Passage: ...\nQ: ...\nA: ...\n\n" (SQuAD triples), then the question;
  style "chat": the chat template with the exemplars as user/assistant turns, then one user message
    (the passage, a blank line, then CHAT_INSTRUCTION), and the generation prompt.
  Exemplars of the fewshot and chat styles are (question, answer) or (passage, question, answer).
  """

  style: str
  exemplars: object  # stem: {relation: [(stem, gold)]}; fewshot and chat: [(q, a)] or [(context, q, a)]
  tokenizer: object = None

  def render(self, item, raw: bool = False) -> str:
    """The prompt of a `datasets.QAItem`; few-shot questions are capitalised and end in "?" unless `raw`.
    Control-token text in the question or passage is marked to be encoded as text (LanguageModel.encode)."""
    q = self._user_text(item.question.strip())
    qq = q if raw else _question_case(q)
    context = self._user_text(item.context) if item.context is not None else None
    if self.style == "stem":
      stem = self._user_text(item.meta.get("stem") or stem_of(item.question.strip()))
      shots = self.exemplars.get(item.relation) or self.mixed_exemplars()
      return "".join(f"{s} {a}.\n" for s, a in shots) + stem
    if self.style == "fewshot":
      if context is not None and self.exemplars and len(self.exemplars[0]) == 3:
        shots = "".join(f"Passage: {c}\nQ: {eq}\nA: {ea}\n\n" for c, eq, ea in self.exemplars)
        return f"{SQUAD_INSTRUCTION}\n\n{shots}Passage: {context}\nQ: {qq}\nA:"
      shots = "".join(f"Q: {eq}\nA: {ea}\n\n" for eq, ea, *_ in self.exemplars)
      passage = f"Passage: {context}\n" if context else ""
      return f"{FEWSHOT_INSTRUCTION}\n\n{shots}{passage}Q: {qq}\nA:"
    messages = []
    for *ctx, eq, ea in self.exemplars:  # a user's file supplies these too: protected like the question
      turn = _chat_turn(self._user_text(eq), self._user_text(ctx[0]) if ctx else None)
      messages += [{"role": "user", "content": turn}, {"role": "assistant", "content": self._user_text(ea)}]
    messages.append({"role": "user", "content": _chat_turn(q, context)})
    return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

  def _user_text(self, text: str) -> str:
    return lm_model.protect_control_text(text, self.tokenizer) if self.tokenizer is not None else text

  def render_question(self, question: str, context: str | None = None) -> str:
    """The prompt of a free-standing question (the scoring API): a wikidata-style question
    "What is the <relation> of <subject>?" or a stem "The <relation> of <subject> is" in stem style."""
    return self.render(self.question_item(question, context))

  def question_item(self, question: str, context: str | None = None):
    """A free-standing question as the QAItem the answer stage would have made of it (no gold)."""
    meta = {}
    if self.style == "stem":
      stem = stem_of(question)
      m = re.match(r"^The (.+?) of ", stem)
      rel = next(
        (r for r in sorted(self.exemplars, key=len, reverse=True) if stem.startswith(f"The {r} of ")), ""
      )
      meta = {"stem": stem, "relation": rel or (m.group(1) if m else "")}
    return datasets.QAItem("query", question.strip(), (), meta=meta, context=context)

  def prompt_exemplar_answers(self, item) -> list[str]:
    """The exemplar answers shown in `item`'s prompt (to flag answers that copy one)."""
    if self.style == "stem":
      return [a for _, a in (self.exemplars.get(item.relation) or self.mixed_exemplars())]
    return [e[-1] for e in self.exemplars]

  def exemplar_pairs(self, item) -> list[tuple[str, str]]:
    """(question, answer) of each exemplar in `item`'s prompt, stems in question form (P(True)'s shots)."""
    if self.style == "stem":
      return [(question_of(s), a) for s, a in (self.exemplars.get(item.relation) or self.mixed_exemplars())]
    return [(e[-2], e[-1]) for e in self.exemplars]

  def mixed_exemplars(self) -> list:
    """For a stem whose relation has no exemplars: the first exemplar of the largest relations."""
    return [self.exemplars[r][0] for r in ("country", "official language", "capital") if r in self.exemplars]

  def answer_prefix(self) -> str:
    """What goes between the prompt and a given (teacher-forced) answer text."""
    return " " if self.style in ("fewshot", "stem") else ""

  def describe(self) -> dict:
    if self.style == "stem":
      template = "<exemplar stems of the relation, each '<stem> <gold>.' on its own line>\n{stem}"
      exemplars = {r: [list(e) for e in v] for r, v in self.exemplars.items()}
    else:
      template = self.render(datasets.QAItem("template", "{question}", ()), raw=True)
      exemplars = [list(e) for e in self.exemplars]
    return {"style": self.style, "exemplars": exemplars, "template": template}


def _chat_turn(question: str, context: str | None) -> str:
  return (CHAT_CONTEXT.format(context=context) if context else "") + CHAT_INSTRUCTION.format(
    question=question
  )


def question_of(stem: str) -> str:
  """ "The capital of France is" -> "What is the capital of France?" (other texts unchanged)."""
  m = re.match(r"^The (.+?) of (.+) is$", " ".join(stem.split()))
  return f"What is the {m.group(1)} of {m.group(2)}?" if m else stem


def brief(text: str, limit: int = 80) -> str:
  """A user text quoted in a message: at most `limit` characters and its length (a long question is not
  repeated whole in the log)."""
  return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def stem_of(question: str) -> str:
  """The stem of a wikidata-style question ("What is the capital of France?" -> "The capital of France
  is"); a text that is already a stem ("The capital of France is") is returned unchanged."""
  q = " ".join(question.split())
  m = _QUESTION_FORM.match(q)
  if m:
    return f"The {m.group(1)} of {m.group(2)} is"
  if q.startswith("The ") and q.endswith(" is"):
    return q
  raise DataError(
    f"prompt style 'stem' completes wikidata stems; {brief(question)} is neither 'What is the <relation> of "
    "<subject>?' nor 'The <relation> of <subject> is'. Score other questions with "
    "--config.qa.prompt_style=chat (or fewshot for a base model)"
  )


def resolve_style(qa_cfg, tokenizer) -> str:
  """The prompt style `config.qa.prompt_style` stands for ("auto" resolved per dataset and tokenizer)."""
  style = qa_cfg.prompt_style
  if style == "auto":
    if qa_cfg.dataset == "wikidata":
      return "stem"
    return "chat" if getattr(tokenizer, "chat_template", None) else "fewshot"
  return style


def prompt_format(qa_cfg, tokenizer, exclude_questions=()) -> PromptFormat:
  style = resolve_style(qa_cfg, tokenizer)
  if style not in config_lib.PROMPT_STYLES:
    raise DataError(f"config.qa.prompt_style={style!r}: use one of {config_lib.PROMPT_STYLES}")
  if style == "chat" and not getattr(tokenizer, "chat_template", None):
    raise DataError("config.qa.prompt_style='chat' but the tokenizer has no chat template; use 'fewshot'")
  if style == "stem":
    if qa_cfg.dataset != "wikidata":
      raise DataError(f"config.qa.prompt_style='stem' completes wikidata stems, not {qa_cfg.dataset!r}")
    ex, _ = datasets.wikidata_pools(qa_cfg.wikidata_file, qa_cfg.n_exemplars, qa_cfg.sample_seed)
    return PromptFormat(style, ex, tokenizer)
  ex = []
  if qa_cfg.dataset == "jsonl":
    shots, _ = datasets.jsonl_pools(qa_cfg.path, qa_cfg.n_exemplars, qa_cfg.sample_seed)
    ex = [(it.context, it.question, it.gold[0]) if it.context else (it.question, it.gold[0]) for it in shots]
  elif style == "fewshot" and qa_cfg.dataset == "squad":
    ex, _ = datasets.squad_pools(qa_cfg.squad_file, qa_cfg.n_exemplars, qa_cfg.sample_seed)
  elif style == "fewshot":
    ex = fewshot_exemplars(qa_cfg.fewshot_file, exclude_questions=exclude_questions)
  elif style == "chat" and qa_cfg.dataset == "nq_open":
    ex = fewshot_exemplars(qa_cfg.fewshot_file, qa_cfg.n_exemplars, exclude_questions)
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


def postprocess(gen_ids, tokenizer, stop_ids, cut_first_sentence: bool = True, max_new_tokens: int = 0):
  """Splits generated ids into (moved_to_prompt, answer_ids, flags); see the module docstring.

  The flag "max_new_tokens" (the answer may be cut short) is set only when the generation used the
  whole budget `max_new_tokens` (0: unknown, any unterminated answer); a generation that ended earlier
  stopped at a special token the generator strips.
  """
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
    if not max_new_tokens or len(gen_ids) >= max_new_tokens:
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
  """The ids of a given answer text; control-token text in it is encoded as text."""
  return lm_model.encode_text(
    tokenizer, lm_model.protect_control_text(text, tokenizer), add_special_tokens=False
  )
