"""Sparse autoencoders: the Architecture base class and shared loss terms (common), one architecture per
file (jumprelu, topk, batchtopk, relu_l1) behind an explicit registry, sparse COO ops with C++ CPU
kernels (sparse, kernels), SAELens export (export) and the trained SAEs of later stages (trained)."""
