#!/usr/bin/env bash
# Install the Debian packages the test suite runs for real (Prometheus, Alertmanager, promtool,
# node_exporter for the benchmark, Chromium for the status page, msmtp as a real sendmail,
# gdb's gcore for httpok's -g/-d, docker.io and debootstrap to build and run the image),
# if any is missing; PHP's CLI (php8.2-cli) for the example stack's PHP workers and their tests.
# `system-deps.sh php` installs only what the example stack needs (what `make run` calls).
# Uses sudo when not root. Stops the services the packages start: tests run their own.
set -euo pipefail
need=()
command -v php >/dev/null || need+=(php8.2-cli)
if [ "${1:-}" != "php" ]; then
  command -v promtool >/dev/null || need+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
  command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
  command -v chromium >/dev/null || need+=(chromium)
  command -v msmtp >/dev/null || need+=(msmtp)
  command -v gcore >/dev/null || need+=(gdb)
  # the image's e2e test (scripts/docker-local.sh): a private dockerd and the stand-in base roots
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
fi
[ "${#need[@]}" -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
for svc in prometheus prometheus-alertmanager prometheus-node-exporter; do
  if command -v systemctl >/dev/null; then $sudo systemctl stop "$svc" 2>/dev/null || true; fi
  $sudo pkill -f "^/usr/bin/$svc" 2>/dev/null || true
done
