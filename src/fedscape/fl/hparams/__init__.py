"""Torch-free declarations of every algorithm: its hyperparameters (with the source of each default),
the models it can train and where its strategy lives; one module per algorithm family, found by
`fedscape.fl.hparams.registry`."""
