"""Image and latent datasets: ADM preprocessing, latent shards, latent statistics."""
