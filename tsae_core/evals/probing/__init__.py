"""SAEBench-style sparse probing: `config` (the `probing:` section), `labelled_sets` (the texts and
their classes), `data` (contexts, tasks and pooled codes), `run` (the probes and the JSON file per SAE)."""
