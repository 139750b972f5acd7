"""Contracts and files every layer reads and writes: recipes, run layout, manifests, shard format, atomic writes."""
