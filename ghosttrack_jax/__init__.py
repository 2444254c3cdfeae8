"""ghosttrack_jax: hallucination detection by tracking SAE features across layers (JAX/Flax)."""

__version__ = "0.1.0"
