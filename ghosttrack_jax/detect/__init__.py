"""Stage 5, `detect`: cross-validated detectors on the saved folds, final detectors, scoring API."""
