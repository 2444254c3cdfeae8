"""The report stage writes an interactive dashboard per case study and links it from report.html."""

import os


def test_case_study_dashboards_exist_and_are_linked(tiny_run):  # session fixture of tests/conftest.py
  config, workdir = tiny_run
  evaluation = os.path.join(workdir, "results", config.model.name, "evaluation")
  html = open(os.path.join(evaluation, "report.html"), encoding="utf-8").read()
  folder = os.path.join(evaluation, "dashboards", config.qa.dataset)
  pages = sorted(os.listdir(folder))
  assert pages, "no dashboards written"
  for page in pages:
    assert f'href="dashboards/{config.qa.dataset}/{page}"' in html
    text = open(os.path.join(folder, page), encoding="utf-8").read()
    assert text.lstrip().lower().startswith("<!doctype html") and "layer" in text
