#!/usr/bin/env bash
# The fast-response study on real CIFAR-10: train the variants, derive the sparse and pruned
# ones, export each (Keras, ONNX, TFLite float32/float16/dynamic/int8) and benchmark them.
#   bash benchmarks/fast_response.sh /path/to/cifar-10-python.tar.gz [results-dir]
# Writes <results-dir>/runs/fr-*/ (metrics, exports) and <results-dir>/bench/fr-*.json.
set -euo pipefail
ARCHIVE=${1:?usage: fast_response.sh ARCHIVE [RESULTS]}
RESULTS=${2:-results/reference}
h() { echo "+ harness $*" >&2; harness --archive "$ARCHIVE" --results "$RESULTS" "$@"; }

h train --preset selu-fast --name fr-selu
h train --preset bn-elu-fast --name fr-bn-elu
h train --preset bn-elu-fast --activation relu --name fr-bn-relu
h train --preset bn-elu-fast --activation relu --l1 1e-5 --name fr-bn-relu-l1
h sparsify fr-bn-relu-l1 --target-sparsity 0.8 --name fr-l1-sparse80
h prune fr-bn-relu --sparsity 0.8 --epochs 4 --name fr-pruned80
h prune-units fr-bn-relu --keep 0.25 --epochs 8 --name fr-units25
h prune-units fr-bn-relu --keep 0.1 --epochs 8 --name fr-units10
# Distilled from the CNN reference (ResNet-8, 73% test; trained here if missing, 20 min).
[ -f "$RESULTS/runs/resnet8/model.keras" ] || python benchmarks/frontier.py --archive "$ARCHIVE" \
    --preset resnet8 --budget-min 15 --results "$RESULTS" --out "$RESULTS/frontier"
h train --preset bn-elu-fast --teacher resnet8 --name fr-bn-elu-distilled
h train --preset bn-elu-fast --units 32 --name fr-bn-elu-u32
h train --preset bn-elu-fast --units 32 --teacher resnet8 --name fr-bn-elu-u32-distilled
# Structured pruning of the 5 x 100 BN + ELU net to 64 units, fine-tuned distilling from the CNN.
h prune-units fr-bn-elu --keep 0.64 --epochs 15 --teacher resnet8 --name fr-units64
# The edge model: 2 x 64 (64 units cost no more than 32 in XNNPACK), flips, distilled.
h train --preset bn-elu-fast --layers 2 --units 64 --augment flip --epochs 100 \
    --teacher resnet8 --name fr-edge
h bench fr-selu fr-bn-elu fr-bn-relu fr-l1-sparse80 fr-pruned80 fr-units25 fr-units10 \
    fr-bn-elu-distilled fr-bn-elu-u32 fr-bn-elu-u32-distilled fr-units64 fr-edge \
    resnet8 --export all
