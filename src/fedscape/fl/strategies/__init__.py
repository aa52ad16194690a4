"""The algorithms' behaviour: a `Strategy` per algorithm family, built by name in `registry`."""
