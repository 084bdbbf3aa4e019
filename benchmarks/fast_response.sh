#!/usr/bin/env bash
# The fast-response study on real CIFAR-10: re-make the trained variants from their committed
# configurations, derive the sparse and pruned ones, export each (Keras, ONNX, TFLite
# float32/float16/dynamic/int8) and benchmark them.
#   bash benchmarks/fast_response.sh /path/to/cifar-10-python.tar.gz [results-dir]
# Writes <results-dir>/runs/fr-*/ (metrics, exports) and <results-dir>/bench/fr-*.json.
#
# Each trained run is re-made from results/reference/runs/<run>/config.json (the whole
# recipe; its preset key is only a label), so the script does not depend on today's presets.
# A run whose model.keras is already in <results-dir> is kept; one without it is trained
# again (--overwrite replaces a record left without its model, as in a fresh checkout of
# results/reference, where models are not committed).
set -euo pipefail
ARCHIVE=${1:?usage: fast_response.sh ARCHIVE [RESULTS]}
RESULTS=${2:-results/reference}
CONFIGS=$(cd "$(dirname "$0")/.." && pwd)/results/reference/runs
h() { echo "+ harness $*" >&2; harness --archive "$ARCHIVE" --results "$RESULTS" "$@"; }
# t RUN: train RUN from its committed config.json unless its model is there.
t() {
  [ -f "$RESULTS/runs/$1/model.keras" ] && return 0
  h train --config "$CONFIGS/$1/config.json" --overwrite
}

t fr-selu
t fr-bn-elu
t fr-bn-relu
t fr-bn-relu-l1
h sparsify fr-bn-relu-l1 --target-sparsity 0.8 --name fr-l1-sparse80
h prune fr-bn-relu --sparsity 0.8 --epochs 4 --name fr-pruned80
h prune-units fr-bn-relu --keep 0.25 --epochs 8 --name fr-units25
h prune-units fr-bn-relu --keep 0.1 --epochs 8 --name fr-units10
# The teacher of the distilled runs: the CNN reference (ResNet-8, 9 epochs, about 15 min).
t resnet8
t fr-bn-elu-distilled
t fr-bn-elu-u32
t fr-bn-elu-u32-distilled
# Structured pruning of the 5 x 100 BN + ELU net to 64 units, fine-tuned distilling from the CNN.
h prune-units fr-bn-elu --keep 0.64 --epochs 15 --teacher resnet8 --name fr-units64
# The edge model: 2 x 64 (64 units cost no more than 32 in XNNPACK), flips, distilled.
t fr-edge
h bench fr-selu fr-bn-elu fr-bn-relu fr-l1-sparse80 fr-pruned80 fr-units25 fr-units10 \
    fr-bn-elu-distilled fr-bn-elu-u32 fr-bn-elu-u32-distilled fr-units64 fr-edge \
    resnet8 --export all
