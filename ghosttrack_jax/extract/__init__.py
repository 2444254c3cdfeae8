"""Stage 1, `extract`: the corpus packed into token windows, one model pass per batch, every layer's
residual stream written to the activation store (`store.py`, the store's one owner)."""
