"""VideoMLA: causal video diffusion with a Multi-Head Latent Attention KV cache."""
__version__ = "0.1.0"
