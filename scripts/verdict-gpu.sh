#!/usr/bin/env bash
# The verdict at GPU size, in one command on a machine with an NVIDIA GPU: set up (a CUDA build of torch),
# run the hard synthetic regime's verdict params (and Gemma 3 270M's where its model packages install),
# then write the reports into docs/results/.
#     scripts/verdict-gpu.sh                 # both verdicts
#     scripts/verdict-gpu.sh synthetic-hard  # one
# TORCH_SPEC chooses the torch build (default: the CUDA wheels of PyPI's torch 2.13.0).
set -euo pipefail
cd "$(dirname "$0")/.."
export TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
which=("${@:-synthetic-hard gemma-3-270m}")
make setup
for name in ${which[@]}; do
  params="params/verdict-${name}-gpu.yaml"
  if grep -qs '^ *kind: *gguf' "$params"; then make models; fi
  # exit status 3 (an SAE the params do not expect to be unhealthy) still leaves every result for the report
  .venv/bin/tsae run "$params" || [ $? -eq 3 ]
  .venv/bin/tsae report "runs/verdict-${name}-gpu"
done
