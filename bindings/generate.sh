#!/usr/bin/env bash
# Generates what the foreign languages use, from the Rust sources. Never edit the output.
#
#   generate.sh header [FILE]   cbindgen: the C header (default ffi/include/pinhole.h, which
#                               is committed; test.sh regenerates it elsewhere and diffs)
#   generate.sh bindings        builds the host library (debug, unstripped: uniffi-bindgen
#                               reads its metadata) and generates the Kotlin and Swift
#                               sources into bindings/build/generated (not committed);
#                               with the ffi crate's features in PINHOLE_FFI_FEATURES
#                               (bindings/test.sh: `server`, the embedded STUN server)
#   generate.sh pc [PREFIX]     pinhole.pc from ffi/pinhole.pc.in; without PREFIX, one that
#                               points into this tree (for the tests)
#   generate.sh                 all three
#
# Honours CARGO_TARGET_DIR (default: target/ at the top of the workspace).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=$ROOT/bindings/build
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

header() {
    local out=${1:-ffi/include/pinhole.h}
    cbindgen --quiet --config ffi/cbindgen.toml --crate pinhole-ffi --output "$out" ffi
}

bindings() {
    cargo build --quiet -p pinhole-ffi --features "${PINHOLE_FFI_FEATURES:-}"
    cargo build --quiet -p uniffi-bindgen
    rm -rf "$OUT/generated"
    mkdir -p "$OUT/generated"
    "$TARGET/debug/uniffi-bindgen" generate --no-format \
        --library "$TARGET/debug/libpinhole_ffi.so" \
        --language kotlin --language swift \
        --out-dir "$OUT/generated" >/dev/null
    echo "generated: $(cd "$OUT/generated" && find . -type f | sort | tr '\n' ' ')"
}

pc() {
    local prefix=${1:-} libdir includedir
    if [ -n "$prefix" ]; then
        libdir=$prefix/lib
        includedir=$prefix/include
    else
        prefix=$ROOT
        libdir=$TARGET/debug
        includedir=$ROOT/ffi/include
    fi
    mkdir -p "$OUT"
    sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
        -e "s|@VERSION@|$VERSION|" ffi/pinhole.pc.in >"$OUT/pinhole.pc"
}

case ${1:-all} in
header) header "${2:-}" ;;
bindings) bindings ;;
pc) pc "${2:-}" ;;
all) header; bindings; pc ;;
*) echo "usage: $0 [header [FILE]|bindings|pc [PREFIX]]" >&2; exit 2 ;;
esac
