#!/usr/bin/env bash
# Make a Debian 12 (bookworm) base image from Debian's own packages, for building Cairn's images where
# Docker Hub cannot be reached (the Dockerfiles install Python from Debian, so a bare Debian is enough):
#   bash docker/make-base.sh cairn-local/debian:bookworm [MIRROR]
#   docker build --build-arg BASE_IMAGE=cairn-local/debian:bookworm ...
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine; about a minute.
# MIRROR defaults to the Debian mirror this machine's apt uses. The machine's own extra CA certificates
# (/usr/local/share/ca-certificates/*.crt: public certificates, for an HTTPS proxy in front of PyPI) are
# put where Debian's ca-certificates package picks them up; nothing else of this machine enters the image.
set -euo pipefail
name="${1:-}"
if [ -z "$name" ] || [ "$#" -gt 2 ]; then echo "usage: bash docker/make-base.sh NAME:TAG [MIRROR]" >&2; exit 2; fi
if [ "$(id -u)" != 0 ]; then echo "error: debootstrap needs root" >&2; exit 1; fi
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
docker info >/dev/null 2>&1 || { echo "error: no Docker engine answers (start dockerd)" >&2; exit 1; }

mirror="${2:-}"
if [ -z "$mirror" ]; then
  # the first Debian mirror of apt's sources (deb822 .sources or one-line .list), else the public one
  mirror="$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    | grep -v -e security -e '\[.*\]' | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+//' | awk '{print $1}' \
    | grep -E '^https?://.*/debian/?$' | head -n 1 || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
fi

rootfs="$(mktemp -d /tmp/cairn-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror"
if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
  echo "error: debootstrap failed; last lines of its log:" >&2; tail -n 5 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1
fi
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
# like Docker Hub's Debian images: apt keeps no downloaded packages
printf 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"; };\nAPT::Keep-Downloaded-Packages "false";\n' \
  > "$rootfs/etc/apt/apt.conf.d/docker-clean"
mkdir -p "$rootfs/usr/local/share/ca-certificates"
for cert in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$cert" ] && cp "$cert" "$rootfs/usr/local/share/ca-certificates/"
done
tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "made $name"
