#!/usr/bin/env bash
# Installs what the bindings tests need, idempotently: each step checks first and does
# nothing when its tool is already there, so a second run takes about a second.
#
#   - Debian packages: debootstrap, libjna-java (JNA for the Kotlin test), valgrind, pkg-config,
#     binutils (readelf), zip/unzip and the shellcheck linter
#   - cbindgen (cargo install --locked, pinned: the committed header depends on its version)
#   - rustup targets for the mobile static libraries, rust-src for the Apple targets built
#     with build-std, and llvm-lipo (llvm-14)
#   - kotlinc from the npm package kotlin-compiler (pinned), under $PINHOLE_TOOLS/kotlin
#   - a Debian trixie chroot with swiftlang, under $PINHOLE_TOOLS/swift-trixie
#
# Everything lives outside the clone: PINHOLE_TOOLS defaults to /opt/pinhole-tools.
# Usage: setup.sh [all|c|shellcheck|elf|android|kotlin|swift|mobile]...   (default: all). Needs root for apt and
# the chroot.
set -euo pipefail

TOOLS=${PINHOLE_TOOLS:-/opt/pinhole-tools}
CBINDGEN_VERSION=0.29.4
KOTLIN_VERSION=2.4.20
# Targets with a prebuilt standard library from rustup. The other Apple targets (both iOS
# simulators, both macOS) build their standard library from rust-src (-Zbuild-std).
MOBILE_TARGETS=(aarch64-linux-android x86_64-linux-android aarch64-apple-ios)
CHROOT=$TOOLS/swift-trixie

say() { printf '  setup: %s\n' "$*"; }

apt_updated=
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    say "apt-get install ${missing[*]}"
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup_c() {
    apt_install valgrind pkg-config gcc
    if [ "$(cbindgen --version 2>/dev/null)" != "cbindgen $CBINDGEN_VERSION" ]; then
        say "cargo install cbindgen $CBINDGEN_VERSION"
        cargo install --locked --quiet --force cbindgen --version "$CBINDGEN_VERSION"
    fi
}

setup_shellcheck() {
    apt_install shellcheck
}

# readelf and gcc for bindings/check-elf.sh and its probes; zip for the AAR.
setup_elf() {
    apt_install binutils gcc
}

setup_android() {
    apt_install zip unzip binutils gcc
    setup_kotlin
}

setup_kotlin() {
    apt_install libjna-java default-jre-headless
    local dir=$TOOLS/kotlin
    if [ ! -x "$dir/node_modules/kotlin-compiler/bin/kotlinc" ] ||
        [ "$(cat "$dir/.version" 2>/dev/null)" != "$KOTLIN_VERSION" ]; then
        say "npm install kotlin-compiler@$KOTLIN_VERSION"
        mkdir -p "$dir"
        npm install --silent --no-audit --no-fund --prefix "$dir" "kotlin-compiler@$KOTLIN_VERSION" >/dev/null
        chmod +x "$dir"/node_modules/kotlin-compiler/bin/*
        echo "$KOTLIN_VERSION" >"$dir/.version"
    fi
}

setup_swift() {
    [ -f "$CHROOT/.pinhole-ready" ] && return 0
    apt_install debootstrap
    # The host's own Debian mirror (the one apt uses), so that the chroot reaches it too.
    local mirror
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    say "debootstrap trixie into $CHROOT from $mirror (about a minute and 2.6 GB)"
    rm -rf "$CHROOT"
    mkdir -p "$CHROOT"
    debootstrap --variant=minbase trixie "$CHROOT" "$mirror" >"$TOOLS/debootstrap.log" 2>&1 ||
        { tail -20 "$TOOLS/debootstrap.log"; return 1; }
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    # swift finds its libraries through /proc/self/exe: keep /proc mounted for the check.
    mount --bind /proc "$CHROOT/proc"
    mount --bind /dev "$CHROOT/dev"
    local rc=0
    chroot "$CHROOT" /bin/sh -c 'apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends swiftlang libc6-dev >/dev/null &&
        swift --version' >"$TOOLS/swift-version.txt" 2>&1 || rc=$?
    umount "$CHROOT/dev" || umount -l "$CHROOT/dev"
    umount "$CHROOT/proc" || umount -l "$CHROOT/proc"
    if [ $rc -ne 0 ]; then
        tail -20 "$TOOLS/swift-version.txt"
        return $rc
    fi
    grep '^Swift version' "$TOOLS/swift-version.txt" >"$CHROOT/.pinhole-ready"
    say "$(head -1 "$CHROOT/.pinhole-ready")"
}

setup_mobile() {
    local installed
    installed=$(rustup target list --installed)
    for t in "${MOBILE_TARGETS[@]}"; do
        grep -qx "$t" <<<"$installed" || rustup target add "$t"
    done
    rustup component list --installed | grep -q '^rust-src' || rustup component add rust-src
    # llvm-lipo makes the XCFramework's fat simulator and macOS libraries (part ios).
    apt_install llvm-14
}

[ $# -gt 0 ] || set -- all
mkdir -p "$TOOLS"
for what in "$@"; do
    case $what in
    all) setup_c; setup_shellcheck; setup_elf; setup_android; setup_kotlin; setup_mobile; setup_swift ;;
    shellcheck) setup_shellcheck ;;
    elf) setup_elf ;;
    android) setup_android ;;
    c) setup_c ;;
    kotlin) setup_kotlin ;;
    swift) setup_swift ;;
    mobile) setup_mobile ;;
    *) echo "setup.sh: unknown part $what" >&2; exit 2 ;;
    esac
done
