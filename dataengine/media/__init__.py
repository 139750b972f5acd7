"""Pixels: video decode and write, clip arithmetic (frame counts, buckets, the latents' geometry), compositing."""
