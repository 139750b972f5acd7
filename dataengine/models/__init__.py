"""One model each (judge, VLM and VAE encoders, person detector, segmenter, dedup embedder), no Ray."""
