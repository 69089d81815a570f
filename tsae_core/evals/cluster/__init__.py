"""Clustering learned features: `config` (the `cluster:` section), `run` (descriptors, clusters and
their scores), `report` (the clusters' top-activating contexts, as text)."""
