#!/usr/bin/env bash
# A private Docker engine for building and running the image where no other engine (and no
# registry with base images) is at hand, e.g. CI. As root:
#   scripts/docker-local.sh start        start our own dockerd (if not running), print its socket
#   scripts/docker-local.sh bases        import the stand-in base images (built once, cached)
#   scripts/docker-local.sh build [TAG]  start + bases + build the image (default tag below)
#   scripts/docker-local.sh stop         stop the dockerd this script started
#   scripts/docker-local.sh env          print `export DOCKER_HOST=...` for this engine
#
# dockerd runs with vfs storage and no iptables or bridge (works inside a VM or container
# without kernel modules); containers use --network host. Everything lives under one cache
# directory ($SL_DOCKER_CACHE, default .cache/docker in the checkout, gitignored), kept between
# runs: the debootstrap roots of the stand-in bases are the slow part (about 45 s each).
#
# The stand-ins: no registry serves `python:3.11-slim-bookworm` or `php:8.2-cli-bookworm`
# here, so each is a Debian bookworm minbase root (debootstrap) imported under that tag. They
# carry the host's CA bundle, because pip reaches the package index through a proxy whose CA
# only the host trusts.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
cache="${SL_DOCKER_CACHE:-$repo/.cache/docker}"
sock="$cache/run/docker.sock"
pidfile="$cache/run/dockerd.pid"
image_tag="${SL_DOCKER_IMAGE:-supervisor-listeners-example:local}"
mirror="${SL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
export DOCKER_HOST="unix://$sock"

die() { echo "docker-local: $*" >&2; exit 1; }
say() { echo "docker-local: $*" >&2; }

running() { [ -S "$sock" ] && docker version >/dev/null 2>&1; }

start() {
  if running; then say "dockerd already running on $sock"; echo "running"; return 0; fi
  [ "$(id -u)" -eq 0 ] || die "dockerd needs root (run as root, or use your own Docker engine)"
  command -v dockerd >/dev/null || die "dockerd is missing: install docker.io (scripts/system-deps.sh)"
  command -v docker >/dev/null || die "docker (the client) is missing: install docker.io"
  mkdir -p "$cache/run" "$cache/data" "$cache/exec"
  rm -f "$sock"
  # setsid: the engine outlives the shell that started it, and a Ctrl-C there does not reach it
  setsid dockerd --storage-driver=vfs --iptables=false --ip-masq=false --bridge=none \
    --host "unix://$sock" --data-root "$cache/data" --exec-root "$cache/exec" \
    --pidfile "$pidfile" >"$cache/run/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 1 120); do
    if running; then say "dockerd started on $sock (log: $cache/run/dockerd.log)"; echo "started"; return 0; fi
    if ! kill -0 $! 2>/dev/null; then break; fi
    sleep 0.5
  done
  tail -n 5 "$cache/run/dockerd.log" >&2 || true
  die "dockerd did not start (log: $cache/run/dockerd.log)"
}

stop() {
  [ -f "$pidfile" ] || { say "no dockerd of ours is running"; return 0; }
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && die "dockerd $pid did not stop within 30 s"
  fi
  rm -f "$pidfile" "$sock"
  say "dockerd stopped"
}

# rootfs NAME PACKAGES: a cached tarball of a bookworm minbase root with PACKAGES installed.
rootfs() {
  local name="$1" packages="$2" version="$3"
  local tarball="$cache/bases/$name.tar"
  local key="bookworm minbase $packages $version"
  if [ -f "$tarball" ] && [ "$(cat "$tarball.key" 2>/dev/null)" = "$key" ]; then
    echo "$tarball"; return 0
  fi
  command -v debootstrap >/dev/null || die "debootstrap is missing: install it (scripts/system-deps.sh)"
  local root="$cache/bases/$name.root"
  rm -rf "$root"
  mkdir -p "$root"
  say "debootstrap $name ($packages), about a minute"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" \
    >"$cache/bases/$name.log" 2>&1 || { tail -n 5 "$cache/bases/$name.log" >&2; die "debootstrap failed"; }
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  echo "$root"
}

import_base() {
  local tag="$1" name="$2" packages="$3" setup="$4" version="${5:-v1}" env="${6:-}"
  local key="bookworm minbase $packages $version"
  if docker image inspect "$tag" >/dev/null 2>&1 &&
    [ "$(docker image inspect -f '{{index .Config.Labels "sl.stand-in"}}' "$tag")" = "$key" ]; then
    return 0
  fi
  local tarball="$cache/bases/$name.tar"
  if ! { [ -f "$tarball" ] && [ "$(cat "$tarball.key" 2>/dev/null)" = "$key" ]; }; then
    local root
    root="$(rootfs "$name" "$packages" "$version")"
    (cd "$root" && eval "$setup")
    tar -C "$root" -cf "$tarball" .
    echo "$key" >"$tarball.key"
    rm -rf "$root"
  fi
  say "importing $tag"
  docker import --change "LABEL sl.stand-in=\"$key\"" --change 'CMD ["bash"]' \
    --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 $env" \
    "$tarball" "$tag" >/dev/null
}

bases() {
  mkdir -p "$cache/bases"
  # The two roots are made side by side (each is mostly waiting on the mirror and dpkg):
  # a cold start takes one debootstrap's time instead of two.
  local pids=()
  # python:3.11-slim-bookworm: pip and python on PATH and installing into the system, as there
  import_base python:3.11-slim-bookworm python-3.11-slim-bookworm \
    python3,python3-pip,python3-venv \
    'rm -f usr/lib/python3*/EXTERNALLY-MANAGED; ln -sf /usr/bin/pip3 usr/bin/pip; ln -sf /usr/bin/python3 usr/bin/python' &
  pids+=($!)
  # php:8.2-cli-bookworm: PHP and no Python, as there (where php is /usr/local/bin/php). A
  # Dockerfile on it installs packages with apt, and Debian's ca-certificates then rewrites the
  # bundle without the host's proxy CA: keep a copy aside and point pip and Python's ssl at it.
  import_base php:8.2-cli-bookworm php-8.2-cli-bookworm php8.2-cli \
    'mkdir -p usr/local/bin usr/local/share/host-ca; ln -sf /usr/bin/php8.2 usr/local/bin/php;
     cp /etc/ssl/certs/ca-certificates.crt usr/local/share/host-ca/ca-certificates.crt' \
    v2 'PIP_CERT=/usr/local/share/host-ca/ca-certificates.crt SSL_CERT_FILE=/usr/local/share/host-ca/ca-certificates.crt' &
  pids+=($!)
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ "$failed" -eq 0 ] || die "a stand-in base image could not be made (logs in $cache/bases/)"
}

build() {
  local tag="${1:-$image_tag}"
  start >/dev/null
  bases
  say "building $tag"
  docker build --network host -t "$tag" "$repo" >&2
  docker image prune -f >/dev/null 2>&1 || true
  echo "$tag"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  bases) start >/dev/null; bases ;;
  build) shift; build "$@" ;;
  env) echo "export DOCKER_HOST=unix://$sock" ;;
  *) die "usage: $0 start|bases|build [TAG]|stop|env" ;;
esac
