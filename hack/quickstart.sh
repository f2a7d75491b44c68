#!/usr/bin/env bash
# The main job on the embedded default: set up, train the example checkpoints on digits (seconds),
# and run the two-model A/B test locally. Prints the results table and the verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/setup.sh
python examples/train_digits.py
abtest run examples/abtest-digits.yaml --out abtest-results/digits-resnet-vs-vit
