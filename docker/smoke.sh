#!/usr/bin/env bash
# End-to-end smoke test of the containers on this machine (not part of the default tests).
#
#   sudo bash docker/smoke.sh      (as root: it may start dockerd and install packages)
#
# It needs a Docker client, a Docker daemon (a running one, or dockerd to start), docker
# compose (the plugin or docker-compose) and, when the base image is not there, debootstrap.
# As root on Debian/Ubuntu it installs what is missing with apt-get (docker.io,
# docker-compose, debootstrap); otherwise it names in one line what is missing and stops.
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
# Its logs (apt-get, dockerd, debootstrap, the containers') are deleted when it passes and
# kept when it fails: the last line names their folder.
#
# Settings: BASE_IMAGE (default harness-smoke-base:bookworm), HARNESS_IMAGE (harness:smoke),
# SMOKE_CACHE (where the debootstrap tree is kept, default ~/.cache/harness-smoke),
# SMOKE_LOGS (the logs' folder, default $SMOKE_CACHE/logs/<date>-<pid>),
# SMOKE_TIMEOUT (seconds for each stage, default 900).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${BASE_IMAGE:-harness-smoke-base:bookworm}
HARNESS_IMAGE=${HARNESS_IMAGE:-harness:smoke}
SMOKE_CACHE=${SMOKE_CACHE:-$HOME/.cache/harness-smoke}
SMOKE_TIMEOUT=${SMOKE_TIMEOUT:-900}
LOGS=${SMOKE_LOGS:-$SMOKE_CACHE/logs/$(date +%Y%m%d-%H%M%S)-$$}
PROJECT=harness-smoke-$$
WORK=$(mktemp -d /tmp/harness-smoke.XXXXXX)
STARTED_DOCKERD=""
PASSED=""
COMPOSE=()
export DOCKER_BUILDKIT=0  # the classic builder honours --network host without buildx
mkdir -p "$LOGS" 2>/dev/null || LOGS=$(mktemp -d /tmp/harness-smoke-logs.XXXXXX)

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }
compose() { "${COMPOSE[@]}" "$@"; }

cleanup() {
  local code=$?
  set +e
  if [ -f "$WORK/host-network.yml" ] && [ ${#COMPOSE[@]} -gt 0 ]; then
    [ -n "$PASSED" ] || compose logs --no-color >"$LOGS/containers.log" 2>&1
    compose down -v --remove-orphans >/dev/null 2>&1
  fi
  if [ -n "${SMOKE_CLEAN_IMAGES:-}" ]; then docker rmi "$HARNESS_IMAGE" >/dev/null 2>&1; fi
  if [ -n "$STARTED_DOCKERD" ]; then kill "$STARTED_DOCKERD"; wait "$STARTED_DOCKERD" 2>/dev/null; fi
  rm -rf "$WORK"
  if [ -n "$PASSED" ]; then rm -rf "$LOGS"; else echo "smoke logs kept in $LOGS" >&2; fi
  return $code
}
trap cleanup EXIT

# --- the tools: present, installed with apt-get when root, or named in one line
daemon_up() { docker info >/dev/null 2>&1; }
has_compose() { docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null; }
base_needed() { ! { command -v docker >/dev/null && daemon_up \
                    && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; } \
                && [ ! -x "$SMOKE_CACHE/rootfs/usr/bin/python3" ]; }
missing_tools() {
  local missing=()
  command -v docker >/dev/null || missing+=("docker (apt package docker.io)")
  if ! daemon_up; then
    if [ "$(id -u)" != 0 ]; then missing+=("a running Docker daemon (or root to start dockerd)")
    elif ! command -v dockerd >/dev/null; then missing+=("dockerd (docker.io)"); fi
  fi
  has_compose || missing+=("docker compose (docker-compose)")
  if base_needed && ! command -v debootstrap >/dev/null; then missing+=("debootstrap"); fi
  local out="" m
  for m in "${missing[@]}"; do out+="${out:+, }$m"; done
  echo "$out"
}
missing=$(missing_tools)
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "installing with apt-get: $missing"
  packages=()
  [[ "$missing" == *docker.io* ]] && packages+=(docker.io)
  [[ "$missing" == *docker-compose* ]] && packages+=(docker-compose)
  [[ "$missing" == *debootstrap* ]] && packages+=(debootstrap)
  { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      "${packages[@]}"; } >"$LOGS/apt.log" 2>&1 || fail "apt-get install ${packages[*]} failed (see $LOGS/apt.log)"
  missing=$(missing_tools)
fi
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] && fail "missing: $missing; install them (no apt-get here)"
  fail "missing: $missing; run as root to have them installed with apt-get"
fi

if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-p "$PROJECT" -f docker-compose.yml -f "$WORK/host-network.yml" --profile cpu)

# --- a Docker daemon: use the running one, or start one for this script only (as root)
if ! daemon_up; then
  [ "$(id -u)" = 0 ] || fail "no Docker daemon answers, and starting dockerd needs root"
  say "starting dockerd (host networking only)"
  dockerd --bridge=none --iptables=false --ip-forward=false >"$LOGS/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  for _ in $(seq 60); do
    daemon_up && break
    kill -0 "$STARTED_DOCKERD" 2>/dev/null || break  # it exited: no use waiting
    sleep 1
  done
  if ! daemon_up; then
    tail -n 5 "$LOGS/dockerd.log" >&2
    fail "dockerd did not start (see $LOGS/dockerd.log)"
  fi
fi

# --- a base image with python3, venv and pip, made locally when it is not there
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "making $BASE_IMAGE with debootstrap"
  if [ ! -x "$SMOKE_CACHE/rootfs/usr/bin/python3" ]; then
    mkdir -p "$SMOKE_CACHE"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      bookworm "$SMOKE_CACHE/rootfs" >"$LOGS/debootstrap.log" 2>&1 \
      || fail "debootstrap failed (see $LOGS/debootstrap.log)"
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
  -c 'from harness.data.synthetic import write_archive; write_archive("/archive/cifar.tar.gz", per_batch=100)'
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
device=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])).get("device") or {}
print(d.get("backend"), d.get("kind"), d.get("count"))' "$WORK/results/runs/smoke/metrics.json")
[[ "$device" == *" cpu 1" ]] || fail "metrics.json records device '$device', expected the CPU"

say "the GPU image's requirements: harness[cuda] brings JAX's CUDA 12 plugin (pip dry run)"
# No GPU base image can be pulled here: the CUDA 12 base is simulated by its CUDA_VERSION.
docker run --rm --network host -u 0 -e CUDA_VERSION=12.5.1 --entrypoint sh "$HARNESS_IMAGE" -c \
  'cd /src && extras=$(sh docker/pick-extras.sh) && echo "extras: $extras" >&2 &&
   pip install --dry-run --quiet --report - ".[$extras]"' >"$LOGS/cuda-dry-run.json" \
  2>"$LOGS/cuda-dry-run.log" || fail "the dry run of .[cuda] failed (see $LOGS/cuda-dry-run.log)"
plugin=$(python3 -c 'import json, sys
names = {i["metadata"]["name"]: i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
print(" ".join(f"{n}=={v}" for n, v in sorted(names.items()) if n.startswith(("jax-cuda12", "jaxlib"))))' \
  "$LOGS/cuda-dry-run.json")
[[ "$plugin" == *jax-cuda12-plugin* ]] || fail "harness[cuda] does not bring jax-cuda12-plugin ($plugin)"
echo "harness[cuda] would add: $plugin"

say "tune: a chief and 2 workers"
compose up -d --scale tune-worker-cpu=2 tune tune-worker-cpu
chief=$(compose ps -q tune)
code=$(timeout "$SMOKE_TIMEOUT" docker wait "$chief") || fail "the search did not finish"
compose logs tune | tail -n 12
[ "$code" = "0" ] || fail "the chief exited with $code"
root="$WORK/results/tuning/smoke"
for f in trials.csv trials.json best_hyperparameters.json best/metrics.json best/model.keras; do
  [ -f "$root/$f" ] || fail "missing $root/$f"
done
workers=$(python3 -c 'import json, sys; print(len({t["worker"] for t in json.load(open(sys.argv[1]))}))' "$root/trials.json")
trials=$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))))' "$root/trials.json")

PASSED=1
say "SMOKE PASSED"
echo "image $HARNESS_IMAGE on $BASE_IMAGE: built in ${build_s} s, $(( size / 1000000 )) MB"
echo "train: results/runs/smoke on the host, device $device; tune: $trials trials by $workers worker(s) on the host"
echo "GPU image: harness[cuda] adds $plugin"
