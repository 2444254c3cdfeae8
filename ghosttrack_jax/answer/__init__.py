"""Stage 3, `answer`: the model answers questions; answers are labelled and split into folds."""
