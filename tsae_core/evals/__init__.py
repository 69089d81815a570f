"""The evaluations: one module or folder per params section, each with its configuration beside it.

    core.py           the `eval:` stage: the core metrics of every SAE (SAEBench's core protocol, the
                      temporal and ground-truth statistics) into `eval/<sae>.json`
    files.py          what every evaluation's JSON file shares: its key, the kept-result check, the
                      SAEBench identity block
    coactivation.py   which latents fire together (read by the core metrics and by clustering)
    probing/          SAEBench-style sparse probing (`config`, `labelled_sets`, `data`, `run`)
    unlearning/       the offline analogue of SAEBench's unlearning eval (`config`, ..., `run`)
    autointerp/       automated interpretability with an LLM or oracle judge
    cluster/          grouping learned features by their temporal and co-activation descriptors

A folder's `__init__` imports nothing, so its `config` can be read by `tsae_core.config` without
loading the evaluation itself.
"""
