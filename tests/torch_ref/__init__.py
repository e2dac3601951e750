"""PyTorch renderings of the original networks and training iterations (test references)."""
