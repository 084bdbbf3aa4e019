#!/usr/bin/env bash
# End-to-end smoke test of the containers on this machine (not part of the default tests).
#
#   bash docker/smoke.sh
#
# It builds the image on a local base (BASE_IMAGE; made with debootstrap when it does not
# exist, since no image registry may be reachable), trains a tiny run with the compose
# `train-cpu` service on a synthetic archive, runs a KerasTuner chief (`tune`) with two
# workers (`tune-worker-cpu`, scaled to 2), and checks that the run directory and the
# tuning results land on the host. Everything goes over host networking on 127.0.0.1.
#
# It starts nothing it did not start itself, and stops what it started: a Docker daemon
# only if none answers, and its own compose project (containers, network, volume). The
# images it built are kept, so a second run is fast (SMOKE_CLEAN_IMAGES=1 removes them).
#
# Settings: BASE_IMAGE (default harness-smoke-base:bookworm), HARNESS_IMAGE (harness:smoke),
# SMOKE_CACHE (where the debootstrap tree is kept, default ~/.cache/harness-smoke),
# SMOKE_TIMEOUT (seconds for each stage, default 900).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-harness-smoke-base:bookworm}
HARNESS_IMAGE=${HARNESS_IMAGE:-harness:smoke}
SMOKE_CACHE=${SMOKE_CACHE:-$HOME/.cache/harness-smoke}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-900}
PROJECT=harness-smoke-$$
WORK=$(mktemp -d /tmp/harness-smoke.XXXXXX)
STARTED_DOCKERD=""
export DOCKER_BUILDKIT=0  # the classic builder honours --network host without buildx

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-p "$PROJECT" -f docker-compose.yml -f "$WORK/host-network.yml" --profile cpu)
compose() { "${COMPOSE[@]}" "$@"; }

cleanup() {
  set +e
  if [ -f "$WORK/host-network.yml" ]; then compose down -v --remove-orphans >/dev/null 2>&1; fi
  if [ -n "${SMOKE_CLEAN_IMAGES:-}" ]; then docker rmi "$HARNESS_IMAGE" >/dev/null 2>&1; fi
  if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- a Docker daemon: use the running one, or start one for this script only
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (host networking only)"
  dockerd --bridge=none --iptables=false --ip-forward=false >"$WORK/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || fail "dockerd did not start (see $WORK/dockerd.log)"
fi

# --- a base image with python3, venv and pip, made locally when it is not there
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "making $BASE_IMAGE with debootstrap"
  if [ ! -x "$SMOKE_CACHE/rootfs/usr/bin/python3" ]; then
    mkdir -p "$SMOKE_CACHE"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$SMOKE_CACHE/rootfs" >"$WORK/debootstrap.log" 2>&1 \
      || fail "debootstrap failed (see $WORK/debootstrap.log)"
  fi
  # The host's CA bundle, so pip inside trusts whatever the host's network trusts.
  cp /etc/ssl/certs/ca-certificates.crt "$SMOKE_CACHE/rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$SMOKE_CACHE/rootfs" -c . | docker import - "$BASE_IMAGE" >/dev/null
fi

# --- compose settings for this machine: host networking, the local images, a free port
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$WORK/host-network.yml" <<EOF
services:
  train-cpu: {network_mode: host, build: {context: ., dockerfile: docker/Dockerfile, network: host}}
  tune: {network_mode: host}
  tune-worker-cpu: {network_mode: host}
EOF
mkdir -p "$WORK/results" "$WORK/archive"
chown 1000:1000 "$WORK/results" "$WORK/archive"
export BASE_IMAGE HARNESS_IMAGE HARNESS_RESULTS_DIR="$WORK/results" HARNESS_ARCHIVE_DIR="$WORK/archive" \
       HARNESS_ARCHIVE=/archive/cifar.tar.gz HARNESS_CHIEF_HOST=127.0.0.1 HARNESS_CHIEF_BIND=127.0.0.1 \
       HARNESS_CHIEF_PORT="$PORT" HARNESS_TUNE_NAME=smoke HARNESS_TUNE_TRIALS=3 HARNESS_TUNE_EPOCHS=2 \
       HARNESS_PRESET=bn-elu

say "building $HARNESS_IMAGE on $BASE_IMAGE"
t0=$(date +%s)
timeout "$SMOKE_TIMEOUT" "${COMPOSE[@]}" build train-cpu
build_s=$(( $(date +%s) - t0 ))
size=$(docker image inspect -f '{{.Size}}' "$HARNESS_IMAGE")

say "a tiny synthetic CIFAR-10 archive in the official format (written by the image)"
docker run --rm --network host -u 1000 -v "$WORK/archive:/archive" --entrypoint python "$HARNESS_IMAGE" \
  -c 'from harness.synthetic import write_archive; write_archive("/archive/cifar.tar.gz", per_batch=100)'
cat >"$WORK/archive/smoke.yaml" <<'EOF'
preset: selu
layers: 2
units: 32
epochs: 2
batch-size: 64
name: smoke
EOF

say "train (compose service train-cpu, tiny config)"
timeout "$SMOKE_TIMEOUT" "${COMPOSE[@]}" run --rm train-cpu train --config /archive/smoke.yaml
[ -f "$WORK/results/runs/smoke/metrics.json" ] || fail "no run directory on the host"
grep -q '"status": "completed"' "$WORK/results/runs/smoke/metrics.json" || fail "run not completed"
[ -f "$WORK/results/runs/smoke/model.keras" ] || fail "no model.keras on the host"

say "tune: a chief and 2 workers"
compose up -d --scale tune-worker-cpu=2 tune tune-worker-cpu
chief=$(compose ps -q tune)
code=$(timeout "$SMOKE_TIMEOUT" docker wait "$chief") || { compose logs; fail "the search did not finish"; }
compose logs tune | tail -n 12
[ "$code" = "0" ] || { compose logs; fail "the chief exited with $code"; }
root="$WORK/results/tuning/smoke"
for f in trials.csv trials.json best_hyperparameters.json best/metrics.json best/model.keras; do
  [ -f "$root/$f" ] || fail "missing $root/$f"
done
workers=$(python3 -c 'import json, sys; print(len({t["worker"] for t in json.load(open(sys.argv[1]))}))' "$root/trials.json")
trials=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$root/trials.json")

say "SMOKE PASSED"
echo "image $HARNESS_IMAGE on $BASE_IMAGE: built in ${build_s} s, $(( size / 1000000 )) MB"
echo "train: results/runs/smoke on the host; tune: $trials trials by $workers worker(s) on the host"
