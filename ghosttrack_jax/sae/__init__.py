"""Sparse autoencoders: shared machinery (common), architectures (jumprelu, topk, relu_l1) behind an
explicit registry, sparse COO ops with C++ CPU kernels (sparse, kernels), and SAELens export (export)."""
