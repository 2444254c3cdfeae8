"""Stage 6, `evaluate`: out-of-fold scores turned into metrics with question-bootstrap intervals."""
