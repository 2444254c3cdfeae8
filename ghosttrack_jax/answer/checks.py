"""Question-file problems that the `answer` stage would meet late, found before any stage runs
(`answer.stage.preflight`, called by the pipeline before extraction and training):

  * fewer distinct questions (question groups, `folds.group_ids`) than `config.evaluate.n_folds`;
  * in own-answer mode, a prompt that with `config.qa.max_new_tokens` does not fit the model's positions
    (the rule of `lm.generation`), named by file, line and id.

The prompt check needs the model's tokenizer and its position count, not its weights; where those cannot
be had without the model (a hub id offline), it is left to the stage.
"""

import logging

from ghosttrack_jax import config_lib
from ghosttrack_jax.answer import datasets, prompts
from ghosttrack_jax.answer import folds as folds_lib
from ghosttrack_jax.errors import ConfigError, DataError, ModelLoadError
from ghosttrack_jax.lm import generation, loading, shapes
from ghosttrack_jax.lm import model as lm_model

_SHOWN = 5  # problems listed in one message


def _where(item, files: list[str]) -> str:
  line = item.meta.get("line")
  return f"{files[0]} line {line} (id {item.qid})" if line else f"{', '.join(files)}: id {item.qid}"


def check_questions(config, items) -> None:
  """DataError naming the file (and the line and id) of the first problems of `items`, the questions
  the answer stage will ask; see the module docstring."""
  files = [f for f in datasets.data_files(config.qa.dataset, config.qa) if f != config.qa.fewshot_file]
  n_groups = len(set(folds_lib.group_ids([it.question for it in items]).tolist()))
  if n_groups < config.evaluate.n_folds:
    raise DataError(
      f"{', '.join(files)}: {n_groups} distinct question(s) cannot fill config.evaluate.n_folds="
      f"{config.evaluate.n_folds} folds (questions with the same text share a fold); add questions or "
      "lower --config.evaluate.n_folds"
    )
  if config.qa.dataset not in config_lib.OWN_ANSWER_SETS:
    return  # given text: a long prompt is cut from the left when the features are computed
  try:
    positions = shapes.architecture(config.model).n_positions
    tokenizer = loading.load_tokenizer(config.model)
  except (ConfigError, ModelLoadError) as e:
    logging.info("question check: prompt lengths are checked when the model is loaded (%s)", e)
    return
  exclude = [it.question for it in items] if config.qa.dataset in ("nq_open", "jsonl") else []
  fmt = prompts.prompt_format(config.qa, tokenizer, exclude_questions=exclude)
  budget = int(config.qa.max_new_tokens)
  long = []
  for it in items:
    n = len(lm_model.encode_text(tokenizer, fmt.render(it)))
    if generation.bucket_length(n) + budget > positions:
      long.append(f"{_where(it, files)}: {n} tokens")
  if long:
    raise DataError(
      f"{len(long)} prompt(s) too long for the model's {positions} positions with config.qa.max_new_tokens="
      f"{budget} (prompts are padded to a multiple of 16 or 64 tokens): {'; '.join(long[:_SHOWN])}"
      + (f"; and {len(long) - _SHOWN} more" if len(long) > _SHOWN else "")
      + ". Shorten those questions (or their context), or lower config.qa.max_new_tokens"
    )
