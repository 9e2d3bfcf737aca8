#!/usr/bin/env bash
# System tools for the deployment tests (tests/test_deploy_*.py), installed only when missing:
#   podman, buildah, runc   build and run the image (runc: crun fails on these machines' cgroups)
#   catatonit               the infra process of the pods `podman kube play` starts
#   debootstrap             a local Debian base image, since base images cannot be pulled here
#   docker-compose          `docker-compose config -q` validates docker-compose.yml offline
# hadolint and kubernetes-validate come with the development extras (pyproject.toml).
# Safe to run again: it does nothing when everything is there. Debian and Ubuntu only.
set -euo pipefail

log() { printf '\033[1m[inscale]\033[0m %s\n' "$*" >&2; }

missing=()
for tool in podman buildah runc catatonit debootstrap docker-compose; do
    # debootstrap lives in /usr/sbin, which a non-login PATH may lack.
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    log "not a Debian-like system: install ${missing[*]} yourself (the container tests skip without them)"
    exit 1
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
log "installing Debian packages for the container tests: ${missing[*]}"
if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -print -quit 2>/dev/null)" ]; then
    $sudo apt-get update -qq
fi
install() { DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
install "${missing[@]}" || { $sudo apt-get update -qq && install "${missing[@]}"; }
