#!/usr/bin/env bash
# Installs the Debian packages the NAT lab needs, only when something is missing.
# Idempotent and quick when everything is present. Never leaves coturn or miniupnpd
# running in the root network namespace: service starts are blocked while installing,
# and the packaged services are stopped and disabled afterwards.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2
  [nft]=nftables
  [conntrack]=conntrack
  [iptables-nft]=iptables
  [turnserver]=coturn
  [miniupnpd]=miniupnpd
  [upnpc]=miniupnpc
  [natpmpc]=natpmpc
  [python3]=python3
  [openssl]=openssl
  [pkg-config]=pkg-config
  # The browser peer of tests/tests/lab_chromium.rs (tests/chromium/browser_peer.py).
  [chromium]=chromium
)
missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ] && [ ! -x "/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done
# OpenSSL headers: turn-client-proto (a dev-dependency of the TURN relay benchmark, built
# by clippy --all-targets) compiles openssl-sys.
if [ ! -e /usr/include/openssl/ssl.h ]; then
  missing+=(libssl-dev)
fi
# libnice through Python GI: the interop peer of tests/tests/lab_libnice.rs
# (tests/libnice/nice_peer.py).
if ! compgen -G '/usr/lib/*/girepository-1.0/Nice-0.1.typelib' >/dev/null; then
  missing+=(gir1.2-nice-0.1)
fi
if [ ! -e /usr/lib/python3/dist-packages/gi/__init__.py ]; then
  missing+=(python3-gi)
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "lab-deps.sh: missing packages ${missing[*]} and not root; install them by hand" >&2
  exit 1
fi

echo "lab-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Block service starts from maintainer scripts (invoke-rc.d honours policy-rc.d).
policy=/usr/sbin/policy-rc.d
had_policy=0
if [ -e "$policy" ]; then had_policy=1; cp -p "$policy" "$policy.lab-deps-saved"; fi
printf '#!/bin/sh\nexit 101\n' >"$policy"
chmod 0755 "$policy"
restore_policy() {
  if [ "$had_policy" -eq 1 ]; then mv -f "$policy.lab-deps-saved" "$policy"; else rm -f "$policy"; fi
}
trap restore_policy EXIT

apt_install() {
  apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}
if ! apt_install "${missing[@]}" >/tmp/lab-deps-apt.log 2>&1; then
  apt-get update -q >>/tmp/lab-deps-apt.log 2>&1
  apt_install "${missing[@]}" >>/tmp/lab-deps-apt.log 2>&1 || {
    cat /tmp/lab-deps-apt.log >&2
    exit 1
  }
fi

# Belt and braces: whatever got started anyway is stopped and disabled.
for svc in coturn miniupnpd; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  if [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
  fi
  if command -v update-rc.d >/dev/null 2>&1; then update-rc.d "$svc" disable >/dev/null 2>&1 || true; fi
done
echo "lab-deps.sh: done" >&2
