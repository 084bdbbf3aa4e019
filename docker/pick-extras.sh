#!/bin/sh
# Prints the pip extras of harness that this image needs: "cuda" (JAX's CUDA 12 plugin) on a
# base with CUDA 12, nothing on a CPU base. Without the plugin JAX, the backend of most
# presets, would train on the CPU beside an idle GPU.
#
#   JAX_CUDA=auto   (default) detect CUDA in the base: $CUDA_VERSION (nvidia/cuda images),
#                   CUDA wheels in its Python (tensorflow[and-cuda]), /usr/local/cuda
#   JAX_CUDA=cuda   always install the plugin;  JAX_CUDA=none   never
#
# A base with a CUDA other than 12 stops the build rather than giving a CPU-only JAX.
set -eu

case "${JAX_CUDA:-auto}" in
  none) exit 0 ;;
  cuda) echo cuda; exit 0 ;;
  auto) ;;
  *) echo "JAX_CUDA=${JAX_CUDA}: expected auto, cuda or none" >&2; exit 2 ;;
esac

major=""
if [ -n "${CUDA_VERSION:-}" ]; then
  major=${CUDA_VERSION%%.*}
else
  major=$(python3 - <<'EOF' 2>/dev/null || true
from importlib import metadata
for major in ("13", "12", "11"):
    try:
        metadata.version(f"nvidia-cuda-runtime-cu{major}")
        print(major)
        break
    except metadata.PackageNotFoundError:
        pass
EOF
)
  if [ -z "$major" ] && [ -f /usr/local/cuda/version.json ]; then
    major=$(sed -n 's/.*"cuda" *: *{[^}]*"version" *: *"\([0-9]*\)\..*/\1/p' \
            /usr/local/cuda/version.json | head -n 1)
  fi
  if [ -z "$major" ] && [ -f /usr/local/cuda/version.txt ]; then
    major=$(sed -n 's/^CUDA Version \([0-9]*\)\..*/\1/p' /usr/local/cuda/version.txt)
  fi
fi

case "$major" in
  "") ;;  # a CPU base
  12) echo cuda ;;
  *) echo "the base image has CUDA $major; harness[cuda] is for CUDA 12" \
          "(build with --build-arg JAX_CUDA=none for a CPU-only JAX)" >&2; exit 1 ;;
esac
