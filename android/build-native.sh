#!/usr/bin/env bash
# Builds pinhole's native library for the AAR and generates its Kotlin sources. Run it on a
# machine with the Android NDK (ANDROID_NDK_HOME or ANDROID_NDK_ROOT set) before the Gradle
# build, or let Gradle run it (PINHOLE_BUILD_NATIVE=1 ./gradlew assembleRelease):
#
#   1. cargo-ndk (installed with `cargo install --locked cargo-ndk` when missing) builds the
#      release cdylib of pinhole-ffi for arm64-v8a, armeabi-v7a, x86_64 and x86 into
#      src/main/jniLibs/<abi>/libpinhole_ffi.so, at API level 24 (the module's minSdk); the
#      rustup targets are added when missing. ffi/build.rs links each with 16 KB pages and
#      SONAME libpinhole_ffi.so; ../bindings/check-elf.sh checks every one.
#   2. uniffi-bindgen generates the Android flavour of the Kotlin bindings (android = true,
#      android_cleaner = true: android.system.SystemCleaner on API 33+) from the arm64
#      library into build/generated/uniffi, which build.gradle.kts adds as a source folder.
#
# Not run by bindings/test.sh: this machine has no NDK. Usage: build-native.sh [--dry-run]
# (--dry-run prints the commands without running them).
set -euo pipefail
cd "$(dirname "$0")"
ANDROID_DIR=$PWD
ROOT=$(cd .. && pwd)
API=24
# Android ABI name, then Rust target.
ABIS=(
    "arm64-v8a aarch64-linux-android"
    "armeabi-v7a armv7-linux-androideabi"
    "x86_64 x86_64-linux-android"
    "x86 i686-linux-android"
)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
JNILIBS=$ANDROID_DIR/src/main/jniLibs
GENERATED=$ANDROID_DIR/build/generated/uniffi

dry=
[ "${1:-}" = --dry-run ] && dry=1
run() {
    echo "+ $*"
    [ -n "$dry" ] || "$@"
}

if [ -z "$dry" ]; then
    if [ -z "${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}" ]; then
        echo "build-native.sh: set ANDROID_NDK_HOME to the Android NDK (r27 or later)" >&2
        exit 1
    fi
    command -v cargo-ndk >/dev/null || cargo install --locked cargo-ndk
fi

ndk_args=()
for pair in "${ABIS[@]}"; do
    read -r abi target <<<"$pair"
    if [ -z "$dry" ] && ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
    ndk_args+=(-t "$abi")
done

# cargo-ndk puts each ABI's library into $JNILIBS/<abi>/.
(cd "$ROOT" && run cargo ndk --platform "$API" "${ndk_args[@]}" -o "$JNILIBS" \
    build --release -p pinhole-ffi)

libs=()
for pair in "${ABIS[@]}"; do
    read -r abi _ <<<"$pair"
    libs+=("$JNILIBS/$abi/libpinhole_ffi.so")
done
run "$ROOT/bindings/check-elf.sh" "${libs[@]}"

(cd "$ROOT" && run cargo build --release -p uniffi-bindgen)
# The package's settings (ffi/uniffi.toml) with the Android flavour's merged over them
# (uniffi-android.toml; UniFFI 0.32 ignores an old-style flat --config file, with a warning,
# and would generate the JVM flavour).
run rm -rf "$GENERATED"
run "$TARGET_DIR/release/uniffi-bindgen" generate --library "$JNILIBS/arm64-v8a/libpinhole_ffi.so" \
    --language kotlin --config "$ANDROID_DIR/uniffi-android.toml" --no-format --out-dir "$GENERATED"
echo "build-native.sh: ${#libs[@]} libraries in $JNILIBS, Kotlin in $GENERATED"
