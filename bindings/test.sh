#!/usr/bin/env bash
# Tests the foreign-language side of pinhole-ffi:
#
#   header   the committed C header equals a fresh cbindgen run
#   c        test.c built with gcc -Wall -Wextra -Werror through pkg-config, run under
#            valgrind (no errors, no leaks), and linked statically
#   kotlin   the generated Kotlin (JVM flavour) with the package's Kotlin (android/src/main/
#            kotlin: Flow adapters, NetworkMonitor and AppLifecycle logic) on the host JVM (JNA), test
#            programs bindings/kotlin/Test.kt, AdaptersTest.kt and PeerTest.kt; no
#            java.time in the API
#   swift    the generated Swift and the package's hand-written Swift (ios/Sources/Pinhole:
#            AsyncSequence adapters, PathMonitor, close()) in a SwiftPM package, `swift test`
#            in a trixie chroot
#   mobile   the library for aarch64/x86_64 Android, iOS (device, arm64 and x86_64
#            simulators) and macOS (arm64, x86_64): a staticlib build each (which
#            includes everything cargo check checks); no crate that compiles C is allowed
#
#   size     the stripped release cdylib within the 2.75 MB budget
#   the part named shellcheck: every script under bindings/, android/ and ios/ linted
#   elf      every .so built here: LOAD segments aligned to 16 KB, a SONAME
#            (bindings/check-elf.sh, first shown to reject a 4 KB-aligned library)
#   android  the AAR laid out by android/assemble-aar.sh (the Android flavour of the
#            bindings and the package's Kotlin, AndroidNetworkSource included, compiled
#            against bindings/kotlin/android-stubs), checked by android/check-aar.sh
#   ios      ios/build-xcframework.sh --dry-run's XCFramework tree checked (three slices, the
#            simulator's and macOS's joined by llvm-lipo), and the package it
#            lays out beside it (Package.swift, Sources/Pinhole: the hand-written Swift the
#            swift part tests, and the generated Pinhole.swift); ios/Package.swift evaluated
#            by SwiftPM (chroot) with a local XCFramework and with the release URL, and the
#            sources of its target Pinhole as SwiftPM resolves them
#
# Usage: bindings/test.sh [part...]   (default: all, in that order)
#        PINHOLE_SWIFT_FILTER=REGEX bindings/test.sh swift   (only the XCTest tests matching
#        REGEX, e.g. AdapterTests or AdapterTests.testPathLogic; swift test --filter)
#
# bindings/setup.sh installs the tools first (idempotent: quick when they are there; the
# chroot and kotlinc live outside the clone, under PINHOLE_TOOLS=/opt/pinhole-tools). The
# C, Kotlin and Swift tests run against a library built with the ffi crate's feature
# `server` (the embedded STUN server, which they also test; the mobile and size parts build
# the library as it ships, without it). They talk to a `pinhole serve` started here on 127.0.0.1/127.0.0.2
# and to a `pinhole serve --turn` on 127.0.0.1 (TURN over UDP, long-term and REST
# credentials, relaying on 127.0.0.1); the Kotlin and Swift PeerConnection tests also meet
# through a `pinhole signal` on 127.0.0.1; the port-mapping tests point at 127.0.0.9, where no
# gateway listens (the C test also runs a NAT-PMP gateway of its own on 127.0.0.77:5351 and
# a UDP proxy in front of the TURN server, both on loopback). Nothing contacts
# this machine's real gateway or any public server.
#
# With CI=true nothing may be skipped: a tool that cannot be set up fails the run. Without
# it, a part whose tools are missing is skipped with a loud SKIPPED line.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TARGET=$CARGO_TARGET_DIR
TOOLS=${PINHOLE_TOOLS:-/opt/pinhole-tools}
CHROOT=$TOOLS/swift-trixie
KOTLIN_HOME=$TOOLS/kotlin/node_modules/kotlin-compiler
BUILD=$ROOT/bindings/build
MOBILE_TARGETS=(aarch64-linux-android x86_64-linux-android aarch64-apple-ios)
# The other Apple targets of the XCFramework: rustup's prebuilt standard libraries for them
# are not reachable from here, so their standard library is built from rust-src.
BUILD_STD_TARGETS=(aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)

step() { printf '\n--> bindings: %s\n' "$*"; }
skipped=()
results=()

# A part that cannot run: fatal under CI, a loud skip otherwise.
cannot() {
    local part=$1
    shift
    if [ "${CI:-}" = true ]; then
        echo "bindings: $part cannot run: $* (CI=true: failing)" >&2
        exit 1
    fi
    echo "SKIPPED bindings $part: $*" >&2
    skipped+=("$part")
    return 1
}

setup() {
    local part=$1
    if ! bindings/setup.sh "$part"; then
        cannot "$part" "bindings/setup.sh $part failed"
        return 1
    fi
}

# ---- pinhole serve on loopback ----

serve_pid=
turn_pid=
signal_pid=
mounted=()
cleanup() {
    local m
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        m=${mounted[$i]}
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    mounted=()
    if [ -n "$serve_pid" ]; then
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
        serve_pid=
    fi
    if [ -n "$turn_pid" ]; then
        kill "$turn_pid" 2>/dev/null || true
        wait "$turn_pid" 2>/dev/null || true
        turn_pid=
    fi
    if [ -n "$signal_pid" ]; then
        kill "$signal_pid" 2>/dev/null || true
        wait "$signal_pid" 2>/dev/null || true
        signal_pid=
    fi
}
trap cleanup EXIT INT TERM

# Free UDP ports: $1 of them, each free on 127.0.0.1 and 127.0.0.2.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
found = []
while len(found) < int(sys.argv[1]):
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    port = a.getsockname()[1]
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        b.bind(("127.0.0.2", port))
        if port not in found:
            found.append(port)
    except OSError:
        pass
    a.close(); b.close()
print(" ".join(map(str, found)))
EOF
}

STUN_URI=
SILENT_URI=
start_serve() {
    [ -n "$serve_pid" ] && return 0
    local log=$BUILD/serve.log p1 p2 p3
    mkdir -p "$BUILD"
    for _ in 1 2 3 4 5; do
        read -r p1 p2 p3 <<<"$(free_ports 3)"
        : >"$log"
        "$TARGET/debug/pinhole" serve --primary "127.0.0.1:$p1" --alternate "127.0.0.2:$p2" >"$log" 2>&1 &
        serve_pid=$!
        for _ in $(seq 50); do
            [ "$(grep -c '^listening' "$log")" -eq 4 ] && break
            kill -0 "$serve_pid" 2>/dev/null || break
            sleep 0.1
        done
        if [ "$(grep -c '^listening' "$log")" -eq 4 ]; then
            STUN_URI=stun:127.0.0.1:$p1
            # Nothing listens there: probes to it go unanswered.
            SILENT_URI=stun:127.0.0.1:$p3
            echo "pinhole serve on 127.0.0.1:$p1 / 127.0.0.2:$p2 (pid $serve_pid)"
            return 0
        fi
        kill "$serve_pid" 2>/dev/null || true
        wait "$serve_pid" 2>/dev/null || true
        serve_pid=
    done
    cat "$log"
    echo "bindings: cannot start pinhole serve" >&2
    exit 1
}

# The TURN server's credentials: test values, for loopback only.
TURN_URI=
TURN_USER=pinhole
TURN_PASSWORD=loopback-only-password
TURN_SECRET=loopback-only-rest-secret
start_turn() {
    [ -n "$turn_pid" ] && return 0
    local log=$BUILD/serve-turn.log p
    mkdir -p "$BUILD"
    for _ in 1 2 3 4 5; do
        read -r p <<<"$(free_ports 1)"
        : >"$log"
        # The tests' peers are on loopback, which the server refuses unless told.
        "$TARGET/debug/pinhole" serve --turn --primary "127.0.0.1:$p" --allow-loopback-peers \
            --user "$TURN_USER:$TURN_PASSWORD" --secret "$TURN_SECRET" >"$log" 2>&1 &
        turn_pid=$!
        for _ in $(seq 50); do
            grep -q '^listening' "$log" && break
            kill -0 "$turn_pid" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q '^listening' "$log"; then
            TURN_URI=turn:127.0.0.1:$p
            echo "pinhole serve --turn on 127.0.0.1:$p (pid $turn_pid)"
            return 0
        fi
        kill "$turn_pid" 2>/dev/null || true
        wait "$turn_pid" 2>/dev/null || true
        turn_pid=
    done
    cat "$log"
    echo "bindings: cannot start pinhole serve --turn" >&2
    exit 1
}

# `pinhole signal` (the rendezvous of the PeerConnection tests) on 127.0.0.1.
SIGNAL_URL=
start_signal() {
    [ -n "$signal_pid" ] && return 0
    local log=$BUILD/signal.log p
    mkdir -p "$BUILD"
    for _ in 1 2 3 4 5; do
        p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        : >"$log"
        "$TARGET/debug/pinhole" signal --listen "127.0.0.1:$p" >"$log" 2>&1 &
        signal_pid=$!
        for _ in $(seq 50); do
            grep -q '^signalling on' "$log" && break
            kill -0 "$signal_pid" 2>/dev/null || break
            sleep 0.1
        done
        if grep -q '^signalling on' "$log"; then
            SIGNAL_URL=http://127.0.0.1:$p
            echo "pinhole signal on $SIGNAL_URL (pid $signal_pid)"
            return 0
        fi
        kill "$signal_pid" 2>/dev/null || true
        wait "$signal_pid" 2>/dev/null || true
        signal_pid=
    done
    cat "$log"
    echo "bindings: cannot start pinhole signal" >&2
    exit 1
}

# The library's SONAME (libpinhole_ffi.so.<ABI>, ffi/build.rs) is what programs linked
# against it look for at run time: a symlink by that name beside the library, as an
# installation's ldconfig would make.
soname_link() {
    local so=$1 soname
    soname=$(readelf --dynamic --wide "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
    [ -n "$soname" ] || { echo "bindings: $so has no SONAME" >&2; exit 1; }
    [ "$soname" = "$(basename "$so")" ] || ln -sfn "$(basename "$so")" "$(dirname "$so")/$soname"
}

built=
build() {
    [ -n "$built" ] && return 0
    step "build the host library, the CLI and uniffi-bindgen; generate the sources"
    # The library alone, so that it has exactly its own feature set (the CLI would add
    # tokio's signal handling to the build), then the tools. With the embedded STUN
    # server, which the tests exercise.
    export PINHOLE_FFI_FEATURES=server
    cargo build --quiet -p pinhole-ffi --features "$PINHOLE_FFI_FEATURES"
    cargo build --quiet -p pinhole-cli -p uniffi-bindgen
    bindings/generate.sh bindings
    bindings/generate.sh pc
    soname_link "$TARGET/debug/libpinhole_ffi.so"
    built=1
}

# ---- the parts ----

part_header() {
    step "C header up to date"
    setup c || return 0
    local fresh
    fresh=$(mktemp --suffix=.h)
    bindings/generate.sh header "$fresh"
    if ! diff -u ffi/include/pinhole.h "$fresh"; then
        rm -f "$fresh"
        echo "bindings: ffi/include/pinhole.h is stale: run bindings/generate.sh header" >&2
        exit 1
    fi
    rm -f "$fresh"
    echo "ffi/include/pinhole.h is up to date"
    results+=("header: up to date")
}

part_c() {
    step "C: gcc -Wall -Wextra -Werror, valgrind"
    setup c || return 0
    build
    start_serve
    start_turn
    local turn_args=("$TURN_URI" "$TURN_USER" "$TURN_PASSWORD" "$TURN_SECRET")
    local out=$TARGET/bindings-c
    mkdir -p "$out"
    export PKG_CONFIG_PATH=$BUILD
    # shellcheck disable=SC2046
    gcc -std=c11 -Wall -Wextra -Werror -pedantic -O1 -g bindings/c/test.c -o "$out/test" \
        $(pkg-config --cflags --libs pinhole) -lpthread -Wl,-rpath,"$TARGET/debug"
    # The header also compiles as C++.
    # shellcheck disable=SC2046
    echo '#include "pinhole.h"' | g++ -x c++ -fsyntax-only -Wall -Wextra -Werror \
        $(pkg-config --cflags pinhole) -
    valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect,possible \
        --errors-for-leak-kinds=definite,indirect,possible --error-exitcode=99 \
        --log-file="$out/valgrind.log" "$out/test" "$STUN_URI" "$SILENT_URI" "${turn_args[@]}" |
        tee "$out/test.log"
    if [ -s "$out/valgrind.log" ]; then
        cat "$out/valgrind.log"
        echo "bindings: valgrind reported errors or leaks" >&2
        exit 1
    fi
    echo "valgrind: no errors, no leaks"
    # The static library links with the system libraries of pkg-config --static.
    local private
    private=$(pkg-config --static --libs-only-l pinhole | sed 's/-lpinhole_ffi//')
    # shellcheck disable=SC2046,SC2086
    gcc -std=c11 -Wall -Wextra -Werror -O1 bindings/c/test.c -o "$out/test-static" \
        $(pkg-config --cflags pinhole) "$TARGET/debug/libpinhole_ffi.a" $private
    "$out/test-static" "$STUN_URI" "$SILENT_URI" "${turn_args[@]}" >"$out/test-static.log"
    tail -1 "$out/test-static.log" | sed 's/^/static: /'
    results+=("c: $(tail -1 "$out/test.log"); valgrind clean; static: $(tail -1 "$out/test-static.log")")
}

# The package's own Kotlin (android/src/main/kotlin: Flow adapters, NetworkMonitor, AppLifecycle), shipped
# in the AAR beside the generated bindings. The files named Android*.kt use the Android API:
# the JVM build leaves them out; the Android build compiles them against
# bindings/kotlin/android-stubs (Java sources kotlinc only resolves against, never builds).
PACKAGE_KT=android/src/main/kotlin/dev/pinhole
package_kt() { find "$PACKAGE_KT" -name '*.kt' ! -name 'Android*.kt' | sort; }
android_kt() { find "$PACKAGE_KT" -name 'Android*.kt' | sort; }

# The generated Kotlin (JVM flavour) and the package's JVM sources, compiled together, for
# the test program; reused while the sources and kotlinc are unchanged.
KOTLIN_BINDINGS_JAR=
kotlin_bindings_jar() {
    [ -n "$KOTLIN_BINDINGS_JAR" ] && return 0
    build
    local out=$TARGET/bindings-kotlin key
    local cp=/usr/share/java/jna.jar:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar
    local sources
    mapfile -t sources < <(package_kt)
    mkdir -p "$out"
    # The durations of the API are integers (Android API 24 has no java.time).
    if grep -n 'java\.time' "$BUILD/generated/dev/pinhole/pinhole.kt"; then
        echo "bindings: the generated Kotlin uses java.time (needs Android API 26)" >&2
        exit 1
    fi
    key=$(cat "$BUILD/generated/dev/pinhole/pinhole.kt" "${sources[@]}" "$TOOLS/kotlin/.version" | sha256sum | cut -c1-16)
    if [ ! -f "$out/pinhole-$key.jar" ]; then
        rm -f "$out"/pinhole-*.jar
        "$KOTLIN_HOME/bin/kotlinc" -nowarn -cp "$cp" -d "$out/pinhole-$key.jar" \
            "$BUILD/generated/dev/pinhole/pinhole.kt" "${sources[@]}"
    fi
    KOTLIN_BINDINGS_JAR=$out/pinhole-$key.jar
}

part_kotlin() {
    step "Kotlin on the JVM"
    setup kotlin || return 0
    build
    start_serve
    start_turn
    start_signal
    local lib=$KOTLIN_HOME/lib jna=/usr/share/java/jna.jar
    local cp=$jna:$lib/kotlinx-coroutines-core-jvm.jar
    local out=$TARGET/bindings-kotlin
    kotlin_bindings_jar
    # kotlinc takes minutes here: reuse the jar while its inputs are unchanged.
    local key tests=(bindings/kotlin/Test.kt bindings/kotlin/AdaptersTest.kt bindings/kotlin/PeerTest.kt)
    key=$(cat "${tests[@]}" "$KOTLIN_BINDINGS_JAR" | sha256sum | cut -c1-16)
    if [ ! -f "$out/test-$key.jar" ]; then
        rm -f "$out"/test-*.jar
        "$KOTLIN_HOME/bin/kotlinc" -nowarn -cp "$cp:$KOTLIN_BINDINGS_JAR" -d "$out/test-$key.jar" \
            "${tests[@]}"
    fi
    java -Djna.library.path="$TARGET/debug" \
        -cp "$out/test-$key.jar:$KOTLIN_BINDINGS_JAR:$cp:$lib/kotlin-stdlib.jar" \
        dev.pinhole.TestKt "$STUN_URI" "$SILENT_URI" "$TURN_URI" "$TURN_USER" "$TURN_PASSWORD" \
        "$TURN_SECRET" "$SIGNAL_URL" | tee "$out/test.log"
    results+=("kotlin: $(tail -1 "$out/test.log")")
}

# The AAR's classes.jar as Gradle builds it: UniFFI's Android flavour of the bindings
# (android = true, android_cleaner = true, as android/build-native.sh generates it) and every
# package source, the Android-only ones included, compiled against the android-stubs (no
# android.jar is reachable here). Built from the host library (with the test feature
# `server`, so StunServer is in it; the shipped AAR's library has none).
ANDROID_CLASSES_JAR=
android_classes_jar() {
    [ -n "$ANDROID_CLASSES_JAR" ] && return 0
    build
    local out=$TARGET/bindings-android-classes key gen=$BUILD/generated-android
    local cp=/usr/share/java/jna.jar:$KOTLIN_HOME/lib/kotlinx-coroutines-core-jvm.jar
    local sources stubs
    rm -rf "$gen"
    "$TARGET/debug/uniffi-bindgen" generate --no-format --library "$TARGET/debug/libpinhole_ffi.so" \
        --language kotlin --config android/uniffi-android.toml --out-dir "$gen" >/dev/null
    # The flavours differ (the Android one uses android.os.Build and SystemCleaner).
    grep -q 'android\.os\.Build' "$gen/dev/pinhole/pinhole.kt" ||
        { echo "bindings: the Android flavour of the Kotlin is not Android's" >&2; exit 1; }
    mapfile -t sources < <(package_kt; android_kt)
    mapfile -t stubs < <(find bindings/kotlin/android-stubs -name '*.java' | sort)
    mkdir -p "$out"
    key=$(cat "$gen/dev/pinhole/pinhole.kt" "${sources[@]}" "${stubs[@]}" "$TOOLS/kotlin/.version" | sha256sum | cut -c1-16)
    if [ ! -f "$out/classes-$key.jar" ]; then
        rm -f "$out"/classes-*.jar
        "$KOTLIN_HOME/bin/kotlinc" -nowarn -cp "$cp" -d "$out/classes-$key.jar" \
            "$gen/dev/pinhole/pinhole.kt" "${sources[@]}" "${stubs[@]}"
    fi
    if unzip -Z1 "$out/classes-$key.jar" | grep '^android/'; then
        echo "bindings: a stub class got into the AAR's classes" >&2
        exit 1
    fi
    ANDROID_CLASSES_JAR=$out/classes-$key.jar
}

# The hand-written Swift sources of the package (ios/Sources/Pinhole, without the generated
# Pinhole.swift), one file name a line.
swift_sources() {
    find ios/Sources/Pinhole -maxdepth 1 -name '*.swift' ! -name Pinhole.swift -printf '%f\n' | sort
}

part_swift() {
    step "Swift in the trixie chroot"
    setup swift || return 0
    build
    start_serve
    start_turn
    start_signal
    # A copy of the package with the generated sources; its .build stays for next time.
    local pkg=$BUILD/swift
    mkdir -p "$pkg/Sources/Pinhole" "$pkg/Sources/PinholeFFI" "$pkg/Tests"
    cp bindings/swift/Package.swift "$pkg/"
    cp bindings/swift/Sources/PinholeFFI/module.modulemap "$pkg/Sources/PinholeFFI/"
    rm -rf "$pkg/Tests/PinholeTests" "$pkg/Stubs"
    cp -r bindings/swift/Tests/PinholeTests "$pkg/Tests/"
    cp -r bindings/swift/Stubs "$pkg/"
    cmp -s "$BUILD/generated/Pinhole.swift" "$pkg/Sources/Pinhole/Pinhole.swift" ||
        cp "$BUILD/generated/Pinhole.swift" "$pkg/Sources/Pinhole/"
    # The package's hand-written Swift (the AsyncSequence adapters, PathMonitor, close()),
    # which lives in ios/Sources/Pinhole beside the generated Pinhole.swift; its
    # NWPathMonitor adapter compiles against the Network stand-in of bindings/swift/Stubs.
    local f
    for f in "$pkg/Sources/Pinhole"/*.swift; do
        [ "$(basename "$f")" = Pinhole.swift ] || [ -f "ios/Sources/Pinhole/$(basename "$f")" ] || rm -f "$f"
    done
    for f in $(swift_sources); do
        cmp -s "ios/Sources/Pinhole/$f" "$pkg/Sources/Pinhole/$f" || cp "ios/Sources/Pinhole/$f" "$pkg/Sources/Pinhole/"
    done
    cmp -s "$BUILD/generated/PinholeFFI.h" "$pkg/Sources/PinholeFFI/PinholeFFI.h" ||
        cp "$BUILD/generated/PinholeFFI.h" "$pkg/Sources/PinholeFFI/"
    mkdir -p "$CHROOT/pinhole/pkg" "$CHROOT/pinhole/lib"
    local m
    for m in proc dev; do
        mount --bind "/$m" "$CHROOT/$m"
        mounted+=("$CHROOT/$m")
    done
    mount --bind "$pkg" "$CHROOT/pinhole/pkg"
    mounted+=("$CHROOT/pinhole/pkg")
    mount --bind "$TARGET/debug" "$CHROOT/pinhole/lib"
    mounted+=("$CHROOT/pinhole/lib")
    local rc=0
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
        LD_LIBRARY_PATH=/pinhole/lib \
        PINHOLE_TEST_STUN="$STUN_URI" PINHOLE_TEST_SILENT="$SILENT_URI" \
        PINHOLE_TEST_TURN="$TURN_URI" PINHOLE_TEST_TURN_USER="$TURN_USER" \
        PINHOLE_TEST_TURN_PASSWORD="$TURN_PASSWORD" PINHOLE_TEST_TURN_SECRET="$TURN_SECRET" \
        PINHOLE_TEST_SIGNAL="$SIGNAL_URL" \
        swift test --disable-swift-testing --package-path /pinhole/pkg -Xlinker -L/pinhole/lib \
        ${PINHOLE_SWIFT_FILTER:+--filter "$PINHOLE_SWIFT_FILTER"} \
        >"$BUILD/swift-test.log" 2>&1 || rc=$?
    grep -vE '^(\[[0-9]+/[0-9]+\]|Building|Compiling|Write|Emitting)' "$BUILD/swift-test.log" || true
    cleanup_mounts
    [ $rc -eq 0 ] || { echo "bindings: swift test failed" >&2; exit 1; }
    results+=("swift: $(grep -E 'Executed [0-9]+ tests' "$BUILD/swift-test.log" | tail -1 | sed 's/^ *//')")
}

cleanup_mounts() {
    local m
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        m=${mounted[$i]}
        umount "$m" 2>/dev/null || umount -l "$m"
    done
    mounted=()
}

part_mobile() {
    step "mobile targets: staticlib builds (Android, iOS device and simulators, macOS)"
    setup mobile || return 0
    # No debug info: these builds only prove that the library compiles and archives. Their
    # own target directory, so that the different setting never invalidates (and rebuilds)
    # the host's artifacts, nor theirs.
    local host_target=$CARGO_TARGET_DIR
    export CARGO_PROFILE_DEV_DEBUG=0 CARGO_TARGET_DIR=$TARGET/mobile
    local t
    for t in "${MOBILE_TARGETS[@]}" "${BUILD_STD_TARGETS[@]}"; do
        # Crates that compile C fail on these targets without their SDKs: none allowed.
        local c_crates
        c_crates=$(cargo tree --quiet -p pinhole-ffi --target "$t" -e normal,build --prefix none |
            grep -E '^(cc|ring|aws-lc-rs|aws-lc-sys|zstd-sys|openssl-sys) v' | sort -u || true)
        if [ -n "$c_crates" ]; then
            echo "bindings: $t pulls in crates that compile C: $c_crates" >&2
            exit 1
        fi
        local a=$CARGO_TARGET_DIR/$t/debug/libpinhole_ffi.a how=staticlib
        if [[ " ${BUILD_STD_TARGETS[*]} " == *" $t "* ]]; then
            # RUSTC_BOOTSTRAP changes every unit's fingerprint: its own directory. The
            # library is then put where the others are (the ios part takes them there).
            RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$TARGET/mobile-build-std \
                cargo rustc --quiet -Zbuild-std -p pinhole-ffi --lib --target "$t" \
                --crate-type staticlib
            mkdir -p "$(dirname "$a")"
            cp "$TARGET/mobile-build-std/$t/debug/libpinhole_ffi.a" "$a"
            how="staticlib (build-std)"
        else
            # The staticlib build type-checks everything `cargo check` would.
            cargo rustc --quiet -p pinhole-ffi --lib --target "$t" --crate-type staticlib
        fi
        [ -s "$a" ] || { echo "bindings: no $a" >&2; exit 1; }
        echo "$t: $how ok ($(du -h "$a" | cut -f1))"
    done
    unset CARGO_PROFILE_DEV_DEBUG
    export CARGO_TARGET_DIR=$host_target
    results+=("mobile: staticlib ok for ${MOBILE_TARGETS[*]} ${BUILD_STD_TARGETS[*]} (the last four with build-std)")
}

# The size of the stripped release cdylib for the host (TLS off, as the ffi crate builds
# it), against the 2.75 MB budget, read strictly: 2,750,000 bytes (2 MB until the peer
# connection joined the library, 2.5 MB until ICE-TCP: see the README's Packaging notes).
part_size() {
    step "size of the stripped release cdylib"
    cargo build --quiet --release -p pinhole-ffi
    local so=$TARGET/release/libpinhole_ffi.so bytes
    bytes=$(stat -c %s "$so")
    echo "$so: $bytes bytes ($((bytes / 1024)) KiB)"
    if [ "$bytes" -gt 2750000 ]; then
        echo "bindings: over the 2.75 MB budget" >&2
        exit 1
    fi
    results+=("size: stripped release cdylib $bytes bytes (budget 2,750,000)")
}

# The ELF hygiene of every shared library built here (bindings/check-elf.sh: LOAD segments
# aligned to 16 KB, a SONAME), after the checker itself is shown to reject a library
# aligned to 4 KB and one without a SONAME. The libraries: the debug cdylib of the tests
# and the release cdylib of the size part (built there; built here only when run alone).
# No Android .so can be linked here (no NDK): android/build-native.sh runs the same check
# on its output.
part_elf() {
    step "ELF: 16 KB LOAD alignment and SONAME (bindings/check-elf.sh)"
    setup elf || return 0
    local out=$TARGET/bindings-elf
    mkdir -p "$out"
    echo 'int pinhole_elf_probe(void) { return 1; }' >"$out/probe.c"
    gcc -shared -fPIC -Wl,-z,max-page-size=4096 -Wl,-z,common-page-size=4096 \
        -Wl,-soname,libprobe4k.so.0 "$out/probe.c" -o "$out/libprobe4k.so"
    gcc -shared -fPIC -Wl,-z,max-page-size=16384 "$out/probe.c" -o "$out/libprobenosoname.so"
    gcc -shared -fPIC -Wl,-z,max-page-size=16384 -Wl,-soname,libprobe.so.0 \
        "$out/probe.c" -o "$out/libprobe.so"
    local bad
    for bad in libprobe4k.so libprobenosoname.so; do
        if bindings/check-elf.sh "$out/$bad" 2>"$out/$bad.log"; then
            echo "bindings: check-elf.sh accepted $bad" >&2
            exit 1
        fi
        sed 's/^/rejected as it should: /' "$out/$bad.log"
    done
    bindings/check-elf.sh "$out/libprobe.so" >/dev/null
    # Both no-ops after the size part and build (in the default order).
    cargo build --quiet --release -p pinhole-ffi
    build
    local libs
    mapfile -t libs < <(find "$TARGET/debug" "$TARGET/release" -maxdepth 1 -type f -name '*.so' | sort)
    bindings/check-elf.sh "${libs[@]}"
    # The SONAME carries the ABI version stated in pinhole.h: the major version, or
    # 0.minor before 1.0 (ffi/build.rs).
    local version abi so soname
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
    abi=${version%%.*}
    [ "$abi" != 0 ] || abi=0.$(cut -d. -f2 <<<"$version")
    for so in "$TARGET/debug/libpinhole_ffi.so" "$TARGET/release/libpinhole_ffi.so"; do
        soname=$(readelf --dynamic --wide "$so" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
        if [ "$soname" != "libpinhole_ffi.so.$abi" ]; then
            echo "bindings: $so: SONAME $soname, want libpinhole_ffi.so.$abi (version $version)" >&2
            exit 1
        fi
    done
    echo "SONAME libpinhole_ffi.so.$abi for version $version"
    results+=("elf: ${#libs[@]} libraries aligned to 16 KB with a SONAME; 4 KB and SONAME-less probes rejected")
}

# The AAR as android/assemble-aar.sh lays it out (AGP's layout) from the compiled Kotlin
# (android_classes_jar: the Android flavour of the bindings and the package's sources,
# against stubs: android.jar is in no reachable registry), the manifest, the R8 rules and
# the Android libraries built here (none: no NDK), checked by android/check-aar.sh; which
# is first shown to reject an AAR without proguard.txt, one asking for an extra permission,
# one whose jni/x86 library is for another machine (gcc-built stand-ins, not pinhole), and
# one with the JVM flavour of the bindings.
part_android() {
    step "Android: AAR layout (android/assemble-aar.sh, android/check-aar.sh)"
    setup android || return 0
    android_classes_jar
    local out=$TARGET/bindings-android
    rm -rf "$out"
    mkdir -p "$out/jni/x86"
    android/assemble-aar.sh --classes "$ANDROID_CLASSES_JAR" --out "$out/pinhole-release.aar"
    android/check-aar.sh "$out/pinhole-release.aar"
    # The checker rejects what it must.
    local bad=$out/bad
    mkdir -p "$bad"
    (cd "$bad" && unzip -q ../pinhole-release.aar && zip -qd ../pinhole-release.aar proguard.txt \
        -O ../no-rules.aar >/dev/null)
    sed -i 's|</manifest>|<uses-permission android:name="android.permission.ACCESS_FINE_LOCATION" />\n</manifest>|' \
        "$bad/AndroidManifest.xml"
    (cd "$bad" && zip -qr ../extra-permission.aar .)
    echo 'int probe(void) { return 0; }' >"$out/probe.c"
    gcc -shared -fPIC -Wl,-z,max-page-size=16384 -Wl,-soname,libpinhole_ffi.so \
        "$out/probe.c" -o "$out/jni/x86/libpinhole_ffi.so"
    android/assemble-aar.sh --classes "$ANDROID_CLASSES_JAR" --jnilibs "$out/jni" \
        --out "$out/wrong-machine.aar" >/dev/null
    # The JVM flavour of the bindings (what build-native.sh generated while it passed an
    # old-style --config that UniFFI 0.32 ignores).
    # With the package's classes, the Android*.kt ones too, so that only the flavour differs.
    kotlin_bindings_jar
    mkdir -p "$out/jvm"
    cp "$KOTLIN_BINDINGS_JAR" "$out/jvm/classes.jar"
    (cd "$out/jvm" && unzip -q "$ANDROID_CLASSES_JAR" 'dev/pinhole/Android*' &&
        zip -q classes.jar dev/pinhole/Android*)
    android/assemble-aar.sh --classes "$out/jvm/classes.jar" --out "$out/jvm-flavour.aar" >/dev/null
    local aar
    for aar in no-rules extra-permission wrong-machine jvm-flavour; do
        if android/check-aar.sh "$out/$aar.aar" 2>"$out/$aar.log"; then
            echo "bindings: android/check-aar.sh accepted $aar.aar" >&2
            exit 1
        fi
        sed 's/^/rejected as it should: /' "$out/$aar.log"
    done
    grep -q "Android flavour" "$out/jvm-flavour.log" ||
        { echo "bindings: jvm-flavour.aar was rejected for another reason" >&2; exit 1; }
    results+=("android: AAR layout checked ($(unzip -Z1 "$out/pinhole-release.aar" | grep -c .) entries; no Android .so: no NDK here); bad AARs rejected")
}

# Every script of the packages and the bindings, linted by shellcheck.
part_shellcheck() {
    step "shellcheck"
    setup shellcheck || return 0
    local scripts
    mapfile -t scripts < <(find bindings android ios -maxdepth 2 -name '*.sh' -type f 2>/dev/null | sort)
    shellcheck "${scripts[@]}"
    echo "shellcheck: ${#scripts[@]} scripts clean"
    results+=("shellcheck: ${#scripts[@]} scripts clean")
}

# The XCFramework as ios/build-xcframework.sh --dry-run lays it out from the five Apple
# static libraries of the mobile part (debug), the simulator's two and macOS's two joined by
# llvm-lipo as Xcode's lipo would (PINHOLE_LIPO), checked (Info.plist; each slice: the
# architectures it declares, each an ar archive of Mach-O 64 objects, in a fat file where it
# has two; headers and module map); the package laid out
# beside it (Package.swift, and in Sources/Pinhole the hand-written Swift of
# ios/Sources/Pinhole, byte for byte what the swift part tests, and the generated
# Pinhole.swift); and ios/Package.swift evaluated by SwiftPM in the chroot, with the local
# XCFramework beside it (a path binary target) and without (the release URL and checksum),
# and its target Pinhole's sources as SwiftPM resolves them (`describe`). SwiftPM cannot
# build the package on Linux (an XCFramework is an Apple binary target): the swift part
# compiles the same sources over the system library instead.
part_ios() {
    step "iOS: XCFramework dry run, Package.swift"
    local out=$TARGET/bindings-ios t
    build
    for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin \
        x86_64-apple-darwin; do
        if [ ! -s "$TARGET/mobile/$t/debug/libpinhole_ffi.a" ]; then
            part_mobile
            break
        fi
    done
    setup mobile || return 0
    rm -rf "$out"
    mkdir -p "$out/pkg"
    CARGO_TARGET_DIR=$TARGET/mobile PINHOLE_XCF_PROFILE=debug PINHOLE_LIPO=llvm-lipo-14 \
        ios/build-xcframework.sh --dry-run \
        --generated "$BUILD/generated" --out "$out/pkg" --release 0.0.0 >"$out/dry-run.log"
    grep -v '^+ ' "$out/dry-run.log"
    python3 - "$out/pkg/Pinhole.xcframework" <<'PY'
import os, plistlib, sys
xcf = sys.argv[1]
with open(os.path.join(xcf, "Info.plist"), "rb") as f:
    info = plistlib.load(f)
assert info["CFBundlePackageType"] == "XFWK", info
libs = {l["LibraryIdentifier"]: l for l in info["AvailableLibraries"]}
want = {"ios-arm64": ["arm64"], "ios-arm64_x86_64-simulator": ["arm64", "x86_64"],
        "macos-arm64_x86_64": ["arm64", "x86_64"]}
assert sorted(libs) == sorted(want), libs
# Mach-O CPU types (mach/machine.h): arm64, x86_64.
CPU = {0x0100000C: "arm64", 0x01000007: "x86_64"}

def archive_objects(data, ident):
    """Counts the Mach-O 64 objects of an ar archive (60-byte member headers)."""
    assert data.startswith(b"!<arch>\n"), ident + ": not an ar archive"
    pos, macho, cpus = 8, 0, set()
    while pos + 60 <= len(data):
        hdr = data[pos:pos + 60]
        size = int(hdr[48:58].decode().strip())
        name = hdr[:16].decode(errors="replace").strip()
        body = pos + 60
        if name.startswith("#1/"):  # BSD long name stored before the body
            body += int(name[3:])
        if data[body:body + 4] == b"\xcf\xfa\xed\xfe":
            macho += 1
            cpus.add(CPU.get(int.from_bytes(data[body + 4:body + 8], "little")))
        pos += 60 + size + (size & 1)
    assert macho > 0, ident + ": no Mach-O 64 object"
    return macho, cpus

for ident, l in libs.items():
    d = os.path.join(xcf, ident)
    assert l["SupportedArchitectures"] == want[ident], (ident, l)
    with open(os.path.join(d, l["LibraryPath"]), "rb") as f:
        data = f.read()
    if data[:4] == b"\xca\xfe\xba\xbe":
        # A fat file (big-endian header): one archive per architecture.
        n = int.from_bytes(data[4:8], "big")
        archs, macho = [], 0
        for i in range(n):
            cpu, _, off, size, _ = (int.from_bytes(data[8 + 20 * i + 4 * k:12 + 20 * i + 4 * k],
                                                   "big") for k in range(5))
            m, cpus = archive_objects(data[off:off + size], ident)
            assert cpus == {CPU[cpu]}, (ident, cpus, CPU.get(cpu))
            archs.append(CPU[cpu])
            macho += m
        assert sorted(archs) == want[ident], (ident, archs)
    else:
        macho, cpus = archive_objects(data, ident)
        assert sorted(cpus) == want[ident], (ident, cpus)
    h = os.path.join(d, l["HeadersPath"])
    mm = open(os.path.join(h, "module.modulemap")).read()
    assert "module PinholeFFI" in mm and 'header "PinholeFFI.h"' in mm, mm
    assert os.path.getsize(os.path.join(h, "PinholeFFI.h")) > 0
    print(f"xcframework: {ident}: {macho} Mach-O objects, Headers with module.modulemap")
PY
    # The package the dry run laid out beside the XCFramework: Package.swift, and in
    # Sources/Pinhole exactly the hand-written Swift of ios/Sources/Pinhole (the sources the
    # swift part compiles and tests) and the generated Pinhole.swift.
    cmp ios/Package.swift "$out/pkg/Package.swift"
    local f laid want
    laid=$(cd "$out/pkg/Sources/Pinhole" && ls -- *.swift)
    want=$( (swift_sources; echo Pinhole.swift) | sort)
    if [ "$laid" != "$want" ]; then
        echo "bindings: the dry run laid out Sources/Pinhole as: $laid; want: $want" >&2
        exit 1
    fi
    for f in $(swift_sources); do
        cmp "ios/Sources/Pinhole/$f" "$out/pkg/Sources/Pinhole/$f"
    done
    cmp "$BUILD/generated/Pinhole.swift" "$out/pkg/Sources/Pinhole/Pinhole.swift"
    echo "package: Package.swift, Sources/Pinhole: $(echo "$want" | tr '\n' ' ')"
    setup swift || return 0
    mkdir -p "$CHROOT/pinhole/ios" "$CHROOT/proc"
    mount --bind /proc "$CHROOT/proc"
    mounted+=("$CHROOT/proc")
    mount --bind "$out/pkg" "$CHROOT/pinhole/ios"
    mounted+=("$CHROOT/pinhole/ios")
    local dump=(chroot "$CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root
        swift package --manifest-cache none --package-path /pinhole/ios dump-package)
    "${dump[@]}" >"$out/local.json"
    # What SwiftPM makes of the package's target Pinhole: its sources.
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root \
        swift package --package-path /pinhole/ios describe --type json >"$out/describe.json"
    mv "$out/pkg/Pinhole.xcframework" "$out/Pinhole.xcframework"
    "${dump[@]}" >"$out/release.json"
    cleanup_mounts
    python3 - "$out/local.json" "$out/release.json" "$out/describe.json" "$want" <<'PY'
import json, sys
def ffi(path):
    d = json.load(open(path))
    [t] = [t for t in d["targets"] if t["name"] == "PinholeFFI"]
    assert t["type"] == "binary", t
    assert {p["platformName"] for p in d["platforms"]} == {"ios", "macos"}, d["platforms"]
    return t
local, release = ffi(sys.argv[1]), ffi(sys.argv[2])
assert local.get("path") == "Pinhole.xcframework" and not local.get("url"), local
assert release.get("url", "").endswith("/Pinhole.xcframework.zip") and len(release["checksum"]) == 64, release
print("Package.swift: a local binary target with Pinhole.xcframework present, the release URL otherwise")
d = json.load(open(sys.argv[3]))
[t] = [t for t in d["targets"] if t["name"] == "Pinhole"]
want = sys.argv[4].split()
assert sorted(t["sources"]) == want, (t["sources"], want)
assert "PinholeFFI" in t.get("target_dependencies", []), t
print("Package.swift: target Pinhole builds " + ", ".join(want) + " over PinholeFFI")
PY
    rm -rf "$out/Pinhole.xcframework" # a copy of the 30 MB debug library
    results+=("ios: XCFramework dry run checked (ios-arm64, ios-arm64_x86_64-simulator and macos-arm64_x86_64 slices, lipo'd by llvm-lipo); package sources ($(echo "$want" | wc -l) files) laid out and resolved by SwiftPM; Package.swift evaluated both ways")
}

[ $# -gt 0 ] || set -- header shellcheck c kotlin swift mobile size elf android ios
for part in "$@"; do
    case $part in
    header | c | kotlin | swift | mobile | size | elf | android | ios | shellcheck) "part_$part" ;;
    *) echo "bindings/test.sh: unknown part $part" >&2; exit 2 ;;
    esac
done
cleanup

echo
for r in "${results[@]}"; do echo "bindings: $r"; done
if [ ${#skipped[@]} -gt 0 ]; then
    echo "bindings: SKIPPED ${skipped[*]}"
fi
