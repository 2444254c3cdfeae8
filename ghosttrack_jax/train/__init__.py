"""Stage 2, `train`: one SAE per layer, layers stacked and trained together; held-out quality."""
