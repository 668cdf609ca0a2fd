"""VideoMLA: causal video diffusion with a Multi-Head Latent Attention KV cache."""
from .import_guard import guard_kernels_name

__version__ = "0.1.0"

guard_kernels_name()  # before anything imports transformers (import_guard.py says why)
