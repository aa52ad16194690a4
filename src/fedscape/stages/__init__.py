"""The stages that make a run: client partition, initial model, federated training."""
