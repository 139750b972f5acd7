"""Tools that read finished runs: the run report and the layer diagnosis."""
