"""The study behind docs/RESULTS.md: the offline default's store and SAEs, more questions, R = 5 repeats.

  python -m ghosttrack_jax.main --config=configs/smollm2_135m_study.py --workdir=runs/smollm2_135m
  python -m ghosttrack_jax.main --config=configs/smollm2_135m_study.py:squad --workdir=runs/smollm2_135m

Run in the default's workdir, it reuses the finished extract and train stages (same model, corpus and
SAE settings) and answers, tracks, detects and evaluates again, into outputs of its own
(`wikidata_study`, `squad`):
  ""       wikidata, at most 60 questions per relation (2,326 questions): enough relations reach 30
           answers in each class for the per-relation table; 5 repeats of the 5-fold split.
  "squad"  SQuAD v1.1 dev, open-book (the paragraph before the question), 1,000 questions, 5 repeats;
           reported in its own table (contextual hallucination: an answer absent from the passage).

Both keep every comparison row of the default (samples, unsupervised scores, probes, controls) but not the
tracker ablations and sweeps, and only the primary and the parity classifier (logistic regression, random
forest): the default's run already compares those, and five repeats of them on three times the answers
would take hours on 2 CPU cores.

Measured on the 2-core CPU machine (docs/RESULTS.md): the wikidata study's answer stage 23 min and track
3 min, its detect over an hour even at R = 1 (the probes' layer choice on 2,251 answers); SQuAD's answer
stage 27 min per 300 questions (prompts of ~400 tokens, 10 samples each). As committed (R = 5, 10
relation folds, 1,000 SQuAD questions) both are runs for a GPU node or a long CPU job; on a small machine
`--config.evaluate.n_repeats=1 --config.evaluate.relation_folds=2 --config.qa.n_questions=300` gives a
first look.
"""

import importlib.util
import os

PRESETS = ("", "squad")


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "smollm2_135m.py")
  spec = importlib.util.spec_from_file_location("smollm2_135m_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  if (arg or "") not in PRESETS:
    raise ValueError(f"configs/smollm2_135m_study.py has the presets {PRESETS}, not {arg!r}")
  c = _default()
  c.evaluate.n_repeats = 5
  c.evaluate.ablations = False  # the default's run compares the tracker variants
  c.evaluate.classifiers = ("logistic", "random_forest")  # primary and parity
  if arg == "squad":
    c.qa.dataset = "squad"
    c.qa.n_questions = 1000
    c.qa.prompt_style = "fewshot"  # three solved passage/question/answer triples: short answers
    c.qa.max_new_tokens = 16
  else:
    c.qa.per_relation_cap = 60
    c.qa.n_questions = 0
    c.qa.run_name = "wikidata_study"  # beside the default's wikidata outputs in the same workdir
  return c
