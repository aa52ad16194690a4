"""The torch-free base layer: runs, result paths, config validation, file writing, logging, heterogeneity settings.

Imports no other fedscape layer and none of torch, pandas or matplotlib, so that planning a workflow
(`snakemake -n`) and every light job start fast.
"""
