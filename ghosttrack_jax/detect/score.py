"""Scoring a new question: P(hallucinated) from a saved detector, with the tracks behind it."""

import numpy as np

from ghosttrack_jax import lm
from ghosttrack_jax.answer import prompts
from ghosttrack_jax.answer import stage as answer_stage
from ghosttrack_jax.detect.detector import Detector
from ghosttrack_jax.errors import DataError, StoreMismatchError
from ghosttrack_jax.sae import trained
from ghosttrack_jax.track import features


def refuse_degenerate(detector: Detector) -> None:
  """DataError for a detector the detect stage saved as a constant (every training answer in one class,
  constant features, or a failed fit): it would give every question the same probability."""
  m = detector.manifest
  if not m["classifiers"][detector.classifier].get("degenerate"):
    return
  n, n1 = m.get("n_train"), m.get("n_hallucinated")
  why = (
    f"all {n} of its training answers are in one class ({n1} hallucinated)"
    if n1 in (0, n)
    else "its features were constant or its fit failed"
  )
  raise DataError(
    f"the {detector.classifier} detector of {m.get('dataset')} cannot score a question: {why}, so it gives "
    "every answer the same probability (the report says no detector could be evaluated). Answer more "
    "questions (config.qa.n_questions) so that both classes occur, and rerun from the answer stage"
  )


def score_question(
  config,
  workdir: str,
  question: str,
  answer: str | None = None,
  classifier: str = "logistic",
  model=None,
  saes=None,
  detector: Detector | None = None,
  dataset: str | None = None,
) -> dict:
  """P(hallucinated) for one question and answer, with the tracks behind it.

  Without `answer`, the model answers the question itself (greedy, the configured prompt, and the answer
  stage's own post-processing, flags and exclusions: `answer.stage.answer_record`). An empty answer is not
  scored; one the stage would keep out of both classes (a non-answer, or an answer cut by the token
  budget) is scored with `excluded_reason` and a note saying the detector never saw such answers. With
  `answer`, the text is teacher-forced after the same prompt (given-text scoring). One teacher-forced pass through `track.features.Featurizer` gives the 26 metrics
  and the tracks; the saved detector (trained on `dataset`, default `config.qa.dataset`) scores them.

  Returns a JSON-ready dict: question, answer, mode, probability, threshold, decision, classifier,
  metrics (name -> value), per_layer (entropy/competition/dominance/density/list length per layer),
  tracks (birth, death, act, fid per track), answer_scalars (NLL, entropy), detector provenance.
  """
  if not question or not question.strip():
    raise DataError("the question is empty: give the text to score (--question)")
  if detector is None:
    detector = Detector.for_config(config, workdir, classifier, dataset)
  refuse_degenerate(detector)
  if model is None:
    model = lm.load_model(config.model)
  if saes is None:
    saes = trained.load_trained_saes(config, workdir)
  for key, want in (
    ("n_layers", int(model.n_layers)),
    ("top_k", int(config.tracking.top_k)),
    ("pooling", config.tracking.pooling),
  ):
    if detector.manifest.get(key) != want:
      raise StoreMismatchError(
        f"the detector has {key}={detector.manifest.get(key)!r} but this config "
        f"has {want!r}: score with the config the pipeline ran with, or rerun "
        "the track and detect stages"
      )
  sae_hash = features.sae_fingerprint(saes)
  if detector.manifest.get("sae_manifest_hash") not in (None, sae_hash):
    raise StoreMismatchError(
      "the detector was trained on features of other SAEs "
      f"({detector.manifest.get('sae_manifest_hash')} != {sae_hash}); rerun track/detect"
    )
  fmt = prompts.prompt_format(config.qa, model.tokenizer)
  item = fmt.question_item(question)
  prompt = fmt.render(item)
  if answer is None:
    gen = model.generate(
      [prompt], max_new_tokens=config.qa.max_new_tokens, batch_size=1, stop_at_newline=True
    )[0]
    rec, reason = answer_stage.answer_record(
      config, model, fmt, item, prompts.generated_prompt_ids(gen, model, prompt), prompts.generated_ids(gen)
    )
    prompt_ids, ans_ids, flags, mode = rec["prompt_ids"], rec["answer_ids"], rec["flags"], "own_answer"
  else:
    prompt_ids = [int(t) for t in model.encode(prompt)]
    ans_ids = prompts.encode_continuation(model.tokenizer, fmt.answer_prefix() + answer.strip())
    flags, mode = [], "given_text"
    reason = "empty answer" if not model.tokenizer.decode(ans_ids).strip() else None
  text = model.tokenizer.decode(ans_ids).strip()
  if reason == "empty answer":
    return {
      "question": question,
      "answer": text,
      "mode": mode,
      "probability": None,
      "flags": flags + (["empty"] if "empty" not in flags else []),
      "note": "empty answer: nothing to score",
    }
  cfg = config.copy_and_resolve_references()
  with cfg.unlocked():
    cfg.evaluate.ablations = False  # only the configured tracker is needed here
  featurizer = features.Featurizer(
    model, saes, cfg, birth_thresholds=detector.manifest.get("birth_thresholds")
  )
  ex = {"id": "query", "prompt_ids": prompt_ids, "answer_ids": ans_ids}
  batch = features.make_batch([ex], np.array([0]), 1, model.pad_id, int(model.max_positions))
  out = featurizer(batch)
  x = np.asarray(out["X__ghosttrack"][0], np.float64)
  prob = float(detector.predict_proba(x[None])[0])
  m = int(out["n_tracks"][0])
  per_layer = {k: np.asarray(out["layer_" + k][0]).tolist() for k in features.PER_LAYER_STATS}
  per_layer["list_length"] = np.asarray(out["layer_list_length"][0]).tolist()
  sc = np.asarray(out["scalars"][0])
  caveat = {}
  if reason:
    caveat = {
      "excluded_reason": reason,
      "note": f"{reason}: the answer stage keeps such answers out of both classes, so the detector never "
      "saw one like it; read the probability with care",
    }
  return {
    "question": question,
    "answer": text,
    "mode": mode,
    "flags": flags,
    **caveat,
    "probability": prob,
    "threshold": detector.threshold,
    "decision": "hallucinated" if prob >= detector.threshold else "correct",
    "classifier": detector.classifier,
    "metrics": dict(zip(detector.feature_names, x.tolist())),
    "per_layer": per_layer,
    "layers": detector.manifest.get("layers"),
    "tracks": {
      "birth": out["trk_birth"][0, :m].tolist(),
      "death": out["trk_death"][0, :m].tolist(),
      "act": np.round(out["trk_act"][0, :m], 5).tolist(),
      "fid": out["trk_fid"][0, :m].tolist(),
    },
    "answer_scalars": {"mean_nll": float(sc[0]), "max_nll": float(sc[1]), "mean_entropy": float(sc[2])},
    "detector": {
      "dataset": detector.manifest.get("dataset"),
      "mode": detector.manifest.get("mode"),
      "n_train": detector.manifest.get("n_train"),
      "model": detector.manifest.get("model"),
    },
  }
