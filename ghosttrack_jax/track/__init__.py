"""Stage 4, `track`: SAE features tracked across layers per answer, the 26 metrics and baselines."""
