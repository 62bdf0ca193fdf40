#!/usr/bin/env bash
# Builds Pinhole.xcframework (the static library of pinhole-ffi with the UniFFI C header and
# its module map) for the Swift package in this folder, and, with --release VERSION, zips it
# and writes the release URL and checksum into Package.swift.
#
# On macOS with Xcode (xcodebuild, lipo) and rustup:
#   1. cargo build --release -p pinhole-ffi for aarch64-apple-ios, aarch64-apple-ios-sim,
#      x86_64-apple-ios, aarch64-apple-darwin and x86_64-apple-darwin, with
#      IPHONEOS_DEPLOYMENT_TARGET / MACOSX_DEPLOYMENT_TARGET set (below);
#   2. lipo: the two simulator slices into one library, the two macOS slices into another;
#   3. uniffi-bindgen: Pinhole.swift (into Sources/Pinhole) and PinholeFFI.h + a module map
#      (module PinholeFFI) into the Headers of every slice;
#   4. xcodebuild -create-xcframework -library ... -headers ... -output Pinhole.xcframework;
#   5. with --release VERSION: Pinhole.xcframework.zip, its SHA-256 (what
#      `swift package compute-checksum` prints) and the release URL into Package.swift.
#
# --dry-run (any OS; bindings/test.sh runs it on Linux): prints the commands of 1, 2, 4 and 5
# instead of running them, and lays out the XCFramework tree itself (Info.plist, one folder
# per slice with its library, Headers/PinholeFFI.h and Headers/module.modulemap) from the
# static libraries already built under $CARGO_TARGET_DIR (a slice whose library is missing
# is left out, and said so; Rust builds all five as static libraries on Linux, without the
# SDKs). With PINHOLE_LIPO=llvm-lipo-14 (say) the dry run joins the simulator and macOS
# libraries with it for real, as step 2 would on macOS. --out DIR puts the tree elsewhere
# (default: this folder), with the
# package beside it (Package.swift; Sources/Pinhole: the hand-written Swift of this folder and
# the generated Pinhole.swift), laid out as a release publishes it.
#
# Usage: build-xcframework.sh [--dry-run] [--out DIR] [--release VERSION]
#        [--generated DIR (PinholeFFI.h and Pinhole.swift, already generated)]
set -euo pipefail
IOS_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$IOS_DIR/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export IPHONEOS_DEPLOYMENT_TARGET=${IPHONEOS_DEPLOYMENT_TARGET:-13.0}
export MACOSX_DEPLOYMENT_TARGET=${MACOSX_DEPLOYMENT_TARGET:-10.15}
PROFILE=${PINHOLE_XCF_PROFILE:-release}
REPO_URL=https://github.com/pinhole-dev/pinhole

dry='' out=$IOS_DIR release='' generated=''
while [ $# -gt 0 ]; do
    case $1 in
    --dry-run) dry=1; shift ;;
    --out) out=$2; shift 2 ;;
    --release) release=$2; shift 2 ;;
    --generated) generated=$2; shift 2 ;;
    *) echo "usage: $0 [--dry-run] [--out DIR] [--release VERSION] [--generated DIR]" >&2; exit 2 ;;
    esac
done
XCF=$out/Pinhole.xcframework

run() {
    echo "+ $*"
    [ -n "$dry" ] || "$@"
}

if [ -z "$dry" ] && [ "$(uname -s)" != Darwin ]; then
    echo "build-xcframework.sh: needs macOS with Xcode; use --dry-run elsewhere" >&2
    exit 1
fi

# 1. The static libraries.
TARGETS=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
for t in "${TARGETS[@]}"; do
    run cargo build --release -p pinhole-ffi --target "$t" --manifest-path "$ROOT/Cargo.toml"
done
lib() { echo "$TARGET_DIR/$1/$PROFILE/libpinhole_ffi.a"; }

# 2. Fat libraries for the simulator and macOS.
FAT=$TARGET_DIR/xcframework
run mkdir -p "$FAT/ios-simulator" "$FAT/macos"
run lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$FAT/ios-simulator/libpinhole_ffi.a"
run lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$FAT/macos/libpinhole_ffi.a"
if [ -n "$dry" ] && [ -n "${PINHOLE_LIPO:-}" ]; then
    # The same with a lipo that runs here (llvm-lipo), from the libraries that exist.
    rm -f "$FAT/ios-simulator/libpinhole_ffi.a" "$FAT/macos/libpinhole_ffi.a"
    mkdir -p "$FAT/ios-simulator" "$FAT/macos"
    if [ -s "$(lib aarch64-apple-ios-sim)" ] && [ -s "$(lib x86_64-apple-ios)" ]; then
        "$PINHOLE_LIPO" -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" \
            -output "$FAT/ios-simulator/libpinhole_ffi.a"
    fi
    if [ -s "$(lib aarch64-apple-darwin)" ] && [ -s "$(lib x86_64-apple-darwin)" ]; then
        "$PINHOLE_LIPO" -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" \
            -output "$FAT/macos/libpinhole_ffi.a"
    fi
fi

# 3. The Swift sources and the C header with its module map.
if [ -z "$generated" ]; then
    generated=$TARGET_DIR/xcframework/generated
    run cargo build --release -p uniffi-bindgen --manifest-path "$ROOT/Cargo.toml"
    run "$TARGET_DIR/release/uniffi-bindgen" generate --library "$(lib aarch64-apple-ios)" \
        --language swift --no-format --out-dir "$generated"
fi
headers=$TARGET_DIR/xcframework/Headers
write_headers() {
    rm -rf "$headers"
    mkdir -p "$headers"
    cp "$generated/PinholeFFI.h" "$headers/"
    cat >"$headers/module.modulemap" <<'MAP'
module PinholeFFI {
    header "PinholeFFI.h"
    export *
}
MAP
}
if [ -n "$dry" ] && [ ! -f "$generated/PinholeFFI.h" ]; then
    echo "build-xcframework.sh: no $generated/PinholeFFI.h (generate it first, or pass --generated)" >&2
    exit 1
fi
if [ -f "$generated/PinholeFFI.h" ]; then
    write_headers
    if [ -z "$dry" ]; then
        mkdir -p "$IOS_DIR/Sources/Pinhole"
        cp "$generated/Pinhole.swift" "$IOS_DIR/Sources/Pinhole/"
    fi
fi
# With --out elsewhere: the whole package there, as a release publishes it (Package.swift;
# Sources/Pinhole: the hand-written Swift of this folder and the generated Pinhole.swift;
# Pinhole.xcframework, below).
mkdir -p "$out"
if [ "$(cd "$out" && pwd)" != "$IOS_DIR" ]; then
    mkdir -p "$out/Sources/Pinhole"
    rm -f "$out/Sources/Pinhole"/*.swift
    cp "$IOS_DIR/Package.swift" "$out/"
    for f in "$IOS_DIR/Sources/Pinhole"/*.swift; do
        [ "$(basename "$f")" = Pinhole.swift ] || cp "$f" "$out/Sources/Pinhole/"
    done
    if [ -f "$generated/Pinhole.swift" ]; then
        cp "$generated/Pinhole.swift" "$out/Sources/Pinhole/"
    fi
    echo "build-xcframework.sh: package laid out in $out: Package.swift, Sources/Pinhole:" \
        "$(cd "$out/Sources/Pinhole" && echo ./*.swift | sed 's|\./||g')"
fi

# 4. The XCFramework.
if [ -z "$dry" ]; then
    rm -rf "$XCF"
    xcodebuild -create-xcframework \
        -library "$(lib aarch64-apple-ios)" -headers "$headers" \
        -library "$FAT/ios-simulator/libpinhole_ffi.a" -headers "$headers" \
        -library "$FAT/macos/libpinhole_ffi.a" -headers "$headers" \
        -output "$XCF"
else
    echo "+ xcodebuild -create-xcframework -library $(lib aarch64-apple-ios) -headers $headers" \
        "-library $FAT/ios-simulator/libpinhole_ffi.a -headers $headers" \
        "-library $FAT/macos/libpinhole_ffi.a -headers $headers -output $XCF"
    # What xcodebuild lays out, from the libraries that exist here.
    rm -rf "$XCF"
    mkdir -p "$XCF"
    entries=''
    # identifier, platform, variant ('' for devices), architectures, library
    for slice in "ios-arm64 ios - arm64 $(lib aarch64-apple-ios)" \
        "ios-arm64_x86_64-simulator ios simulator arm64,x86_64 $FAT/ios-simulator/libpinhole_ffi.a" \
        "macos-arm64_x86_64 macos - arm64,x86_64 $FAT/macos/libpinhole_ffi.a"; do
        read -r id platform variant archs path <<<"$slice"
        if [ ! -s "$path" ]; then
            echo "build-xcframework.sh: dry run: no $path: slice $id left out"
            continue
        fi
        mkdir -p "$XCF/$id/Headers"
        cp "$path" "$XCF/$id/libpinhole_ffi.a"
        cp "$headers"/* "$XCF/$id/Headers/"
        arch_xml=''
        for a in ${archs//,/ }; do arch_xml+="<string>$a</string>"; done
        variant_xml=''
        [ "$variant" = - ] || variant_xml="<key>SupportedPlatformVariant</key><string>$variant</string>"
        entries+="<dict><key>BinaryPath</key><string>libpinhole_ffi.a</string>"
        entries+="<key>HeadersPath</key><string>Headers</string>"
        entries+="<key>LibraryIdentifier</key><string>$id</string>"
        entries+="<key>LibraryPath</key><string>libpinhole_ffi.a</string>"
        entries+="<key>SupportedArchitectures</key><array>$arch_xml</array>"
        entries+="<key>SupportedPlatform</key><string>$platform</string>$variant_xml</dict>"
        echo "build-xcframework.sh: dry run: slice $id from $path"
    done
    cat >"$XCF/Info.plist" <<PLIST
<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict><key>AvailableLibraries</key><array>$entries</array>
<key>CFBundlePackageType</key><string>XFWK</string>
<key>XCFrameworkFormatVersion</key><string>1.0</string></dict>
</plist>
PLIST
fi

# 5. The release archive and its checksum, into Package.swift.
if [ -n "$release" ]; then
    zip=$out/Pinhole.xcframework.zip
    run rm -f "$zip"
    echo "+ (cd $out && zip -qry Pinhole.xcframework.zip Pinhole.xcframework)"
    [ -n "$dry" ] || (cd "$out" && zip -qry Pinhole.xcframework.zip Pinhole.xcframework)
    url=$REPO_URL/releases/download/v$release/Pinhole.xcframework.zip
    if [ -n "$dry" ]; then
        echo "+ sha256 of $zip into $IOS_DIR/Package.swift with $url"
    else
        sum=$(shasum -a 256 "$zip" | cut -d' ' -f1)
        sed -i '' -e "s|^let releaseURL = .*|let releaseURL = \"$url\"|" \
            -e "s|^let releaseChecksum = .*|let releaseChecksum = \"$sum\"|" "$IOS_DIR/Package.swift"
        echo "build-xcframework.sh: $zip ($sum); Package.swift points at $url"
    fi
fi
echo "build-xcframework.sh: $XCF"
