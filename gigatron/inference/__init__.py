"""Using trained models: generation with caches, speculative decoding, validation loss, MatFormer
submodel extraction and evaluation, diffusion sampling and text-image alignment."""
