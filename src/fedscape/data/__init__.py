"""Datasets and their client partitions: what every client holds."""
