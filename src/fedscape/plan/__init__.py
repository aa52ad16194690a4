"""Torch-free planning: one module per stage, each with `check(config, runs)` (the problems of its config
section that a schema cannot express) and `targets(config, runs)` (its final outputs), plus the per-job
settings and input paths its rule file asks for. `workflow` puts them together."""
