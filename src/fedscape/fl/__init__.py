"""Federated training: algorithms (hyperparameters and strategies), the engine and its client trainers."""
