#!/usr/bin/env bash
# Real monitoring parts from Debian bookworm's packages, cached like the control plane (hack/cluster.sh):
# `prometheus` (2.42, ships promtool) and `prometheus-alertmanager` (0.25, ships amtool).
#
#   hack/monitoring.sh install   download the .deb files, extract the binaries into the cache (no-op when cached)
#   hack/monitoring.sh bin       print the cache's bin directory
#   hack/monitoring.sh rules     render the chart's alerts, `promtool check rules` them and run every
#                                unit-test file tests/rules/*.test.yaml with `promtool test rules`
#
# No service is started and the packages are only unpacked (dpkg-deb -x), so the binaries run from
# ~/.cache/breakglass/monitoring/bin. One exception to "nothing system-wide": Debian's alertmanager reads
# its default notification template from /usr/share/prometheus/alertmanager/ (a Debian patch, no flag
# moves it) and exits without it; install copies the package's *.tmpl files there when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${BREAKGLASS_CACHE:-$HOME/.cache/breakglass}/monitoring"
BIN="$CACHE/bin"
# Debian bookworm's versions; when the mirror has moved on (a point release), its candidate is taken.
PROMETHEUS_DEB="prometheus=2.42.0+ds-5+deb12u1"
ALERTMANAGER_DEB="prometheus-alertmanager=0.25.0-1+b4"
BINARIES=(prometheus promtool alertmanager amtool)
AM_SHARE=/usr/share/prometheus/alertmanager

die() { echo "monitoring.sh: error: $*" >&2; exit 1; }
log() { echo "monitoring.sh: $*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cached() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$BIN/$b" ] || return 1; done
  [ -f "$CACHE/share/alertmanager/default.tmpl" ]
}

# The cached templates where Debian's alertmanager looks for them (only when missing).
install_templates() {
  [ -f "$AM_SHARE/default.tmpl" ] && return 0
  as_root mkdir -p "$AM_SHARE" && as_root cp "$CACHE/share/alertmanager/"*.tmpl "$AM_SHARE/" \
    || die "could not copy alertmanager's templates into $AM_SHARE"
  log "installed alertmanager's notification templates into $AM_SHARE"
}

# download_deb DIR PKG=VERSION: the .deb into DIR, by apt-get download (pinned version, then the
# candidate), else from the mirror's pool URL that apt itself names (--print-uris), checksum verified.
download_deb() {
  local dir=$1 pinned=$2 pkg=${2%%=*}
  (cd "$dir" && { apt-get download -qq "$pinned" || apt-get download -qq "$pkg"; }) >/dev/null 2>&1 && return 0
  log "apt-get download $pkg failed; fetching the pool URL apt names"
  local line url file sum
  line=$(apt-get download --print-uris "$pkg" 2>/dev/null | sed -n 1p)
  [ -n "$line" ] || return 1
  # 'URL' FILE SIZE SHA256:HEX
  url=$(echo "$line" | awk '{print $1}' | tr -d "'")
  file=$(echo "$line" | awk '{print $2}')
  sum=$(echo "$line" | awk '{print $4}' | sed 's/^SHA256://')
  curl -fsSL --retry 3 -o "$dir/$file" "$url" || return 1
  if [ -n "$sum" ]; then
    echo "$sum  $dir/$file" | sha256sum -c --quiet - || { rm -f "$dir/$file"; return 1; }
  fi
}

cmd_install() {
  cached && { install_templates; return 0; }
  command -v apt-get >/dev/null || die "apt-get not found: this script needs a Debian bookworm machine"
  command -v dpkg-deb >/dev/null || die "dpkg-deb not found"
  # apt only knows packages after an update (a fresh machine has no lists).
  if ! apt-cache show prometheus >/dev/null 2>&1 || ! apt-cache show prometheus-alertmanager >/dev/null 2>&1; then
    log "apt-get update (no package list knows prometheus yet)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  fi
  local t0 work
  t0=$(date +%s)
  mkdir -p "$CACHE"
  work=$(mktemp -d "$CACHE/work.XXXXXX")
  chmod 755 "$work"  # apt-get download as root drops to the _apt user, which must write here
  log "downloading Debian bookworm's prometheus and prometheus-alertmanager packages"
  download_deb "$work" "$PROMETHEUS_DEB" || { rm -rf "$work"; die "could not download the prometheus package"; }
  download_deb "$work" "$ALERTMANAGER_DEB" || { rm -rf "$work"; die "could not download the prometheus-alertmanager package"; }
  local deb
  for deb in "$work"/*.deb; do
    dpkg-deb -x "$deb" "$work/root" || { rm -rf "$work"; die "dpkg-deb -x $deb failed"; }
    log "unpacked $(basename "$deb")"
  done
  mkdir -p "$BIN.tmp"
  cp "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$BIN.tmp/"
  # The Debian package names the alertmanager binary prometheus-alertmanager.
  cp "$work/root/usr/bin/prometheus-alertmanager" "$BIN.tmp/alertmanager"
  cp "$work/root/usr/bin/amtool" "$BIN.tmp/amtool"
  chmod 755 "$BIN.tmp"/*
  rm -rf "$BIN"; mv "$BIN.tmp" "$BIN"
  rm -rf "$CACHE/share"; mkdir -p "$CACHE/share/alertmanager"
  cp "$work/root/usr/share/prometheus/alertmanager/"*.tmpl "$CACHE/share/alertmanager/"
  rm -rf "$work"
  cached || die "binaries missing after install in $BIN"
  install_templates
  log "installed into $BIN in $(($(date +%s) - t0))s: $("$BIN/promtool" --version 2>&1 | sed -n 1p); $("$BIN/alertmanager" --version 2>&1 | sed -n 1p)"
}

cmd_rules() {
  cmd_install
  local py="$ROOT/.venv/bin/python"
  [ -x "$py" ] || py=python3
  local dir
  dir=$(mktemp -d /tmp/breakglass-rules.XXXXXX)
  # The unit-test files name their rule file relative to themselves: test them next to the render.
  "$py" "$ROOT/tests/rules/render.py" "$dir/alerts.rules.yaml" --check \
    || { rm -rf "$dir"; die "rendering or checking the chart's rules failed (see above)"; }
  cp "$ROOT"/tests/rules/*.test.yaml "$dir/"
  local rc=0
  "$BIN/promtool" check rules "$dir/alerts.rules.yaml" || rc=$?
  if [ $rc -eq 0 ]; then
    (cd "$dir" && "$BIN/promtool" test rules ./*.test.yaml) || rc=$?
  fi
  rm -rf "$dir"
  [ $rc -eq 0 ] || die "promtool found problems in the chart's alerts (see above)"
}

case "${1:-}" in
  install) cmd_install ;;
  bin) echo "$BIN" ;;
  rules) cmd_rules ;;
  *) echo "usage: $0 install|bin|rules" >&2; exit 2 ;;
esac
