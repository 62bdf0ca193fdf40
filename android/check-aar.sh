#!/usr/bin/env bash
# Checks an AAR of pinhole (Gradle's pinhole-release.aar or assemble-aar.sh's):
#
#   - the entries an AAR needs: AndroidManifest.xml, classes.jar, proguard.txt, R.txt;
#     nothing outside them, META-INF/ and jni/<abi>/ for the four Android ABIs;
#   - the manifest: package dev.pinhole, exactly the permissions INTERNET,
#     ACCESS_NETWORK_STATE and CHANGE_WIFI_MULTICAST_STATE;
#   - proguard.txt keeps JNA's classes and the bindings (the R8 crash of gobley#139);
#   - classes.jar holds the bindings' classes (dev/pinhole/...) in UniFFI's Android flavour
#     (they read Build.VERSION.SDK_INT and use SystemCleaner), the package's own Kotlin (the Flow adapters, the
#     NetworkMonitor and its AndroidNetworkSource, the AppLifecycle and its
#     AndroidLifecycleSource), and no android.* class (stubs);
#   - every jni/<abi>/*.so: an ELF of that ABI's machine, 16 KB aligned with a SONAME
#     (bindings/check-elf.sh). With --require-abis, all four ABIs must be there.
#
# Usage: check-aar.sh [--require-abis] FILE.aar   Exit status 1 on the first failure.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

require_abis=
if [ "${1:-}" = --require-abis ]; then
    require_abis=1
    shift
fi
[ $# -eq 1 ] || { echo "usage: $0 [--require-abis] FILE.aar" >&2; exit 2; }
aar=$1
fail() {
    echo "check-aar: $aar: $*" >&2
    exit 1
}
[ -f "$aar" ] || fail "no such file"
entries=$(unzip -Z1 "$aar") || fail "not a zip file"

for e in AndroidManifest.xml classes.jar proguard.txt R.txt; do
    grep -qx "$e" <<<"$entries" || fail "no $e"
done
stray=$(grep -vE '^(AndroidManifest\.xml|classes\.jar|proguard\.txt|R\.txt|META-INF/.*|jni/|jni/(arm64-v8a|armeabi-v7a|x86_64|x86)/([^/]+\.so)?)$' <<<"$entries" || true)
[ -z "$stray" ] || fail "unexpected entries: $(tr '\n' ' ' <<<"$stray")"

manifest=$(unzip -p "$aar" AndroidManifest.xml)
grep -q 'package="dev.pinhole"' <<<"$manifest" || fail "the manifest's package is not dev.pinhole"
perms=$(grep -o 'uses-permission android:name="[^"]*"' <<<"$manifest" | sed 's/.*name="\(.*\)"/\1/' | sort | tr '\n' ' ')
want="android.permission.ACCESS_NETWORK_STATE android.permission.CHANGE_WIFI_MULTICAST_STATE android.permission.INTERNET "
[ "$perms" = "$want" ] || fail "permissions are [$perms], want exactly [$want]"

rules=$(unzip -p "$aar" proguard.txt)
for rule in '-keep class com.sun.jna.** { *; }' '-keep class * extends com.sun.jna.Structure { *; }' \
    '-keep class dev.pinhole.** { *; }'; do
    grep -qF -- "$rule" <<<"$rules" || fail "proguard.txt lacks: $rule"
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unzip -q "$aar" -d "$tmp"
classes=$(unzip -Z1 "$tmp/classes.jar") || fail "classes.jar is not a jar"
grep -q '^dev/pinhole/.*\.class$' <<<"$classes" || fail "classes.jar holds no dev/pinhole classes"
for c in dev/pinhole/FlowsKt dev/pinhole/NetcheckUpdate dev/pinhole/TurnUpdate dev/pinhole/NetworkMonitor \
    dev/pinhole/NetworkFacts dev/pinhole/NetworkSource dev/pinhole/AndroidNetworkSource \
    dev/pinhole/PortMapper dev/pinhole/NetworkInfo dev/pinhole/AppLifecycle dev/pinhole/LifecycleSource \
    dev/pinhole/AndroidLifecycleSource dev/pinhole/KeepalivePolicy; do
    grep -qx "$c.class" <<<"$classes" || fail "classes.jar lacks $c"
done
! grep -q '^android/' <<<"$classes" || fail "classes.jar holds android.* classes (stubs?)"
(cd "$tmp" && unzip -q classes.jar -d classes)
# The Android flavour reads Build.VERSION.SDK_INT at run time and uses SystemCleaner.
if ! grep -rqaF "android/os/Build\$VERSION" "$tmp/classes/dev/pinhole" ||
    ! grep -rqaF 'android/system/SystemCleaner' "$tmp/classes/dev/pinhole"; then
    fail "the bindings in classes.jar are not UniFFI's Android flavour (no SDK_INT check, no SystemCleaner)"
fi
grep -rqa 'android/net/ConnectivityManager' "$tmp/classes/dev/pinhole/AndroidNetworkSource.class" ||
    fail "AndroidNetworkSource does not use ConnectivityManager"
grep -rqaF "android/app/Application\$ActivityLifecycleCallbacks" "$tmp/classes/dev/pinhole/AndroidLifecycleSource.class" ||
    fail "AndroidLifecycleSource does not use Application.ActivityLifecycleCallbacks"

declare -A machine=([arm64-v8a]=AArch64 [armeabi-v7a]=ARM [x86_64]=X86-64 [x86]=80386)
libs=()
for abi in arm64-v8a armeabi-v7a x86_64 x86; do
    so=$tmp/jni/$abi/libpinhole_ffi.so
    if [ ! -f "$so" ]; then
        [ -z "$require_abis" ] || fail "no jni/$abi/libpinhole_ffi.so"
        continue
    fi
    readelf -h "$so" | grep -q "Machine:.*${machine[$abi]}" || fail "jni/$abi/libpinhole_ffi.so is not for ${machine[$abi]}"
    libs+=("$so")
done
[ ${#libs[@]} -eq 0 ] || "$ROOT/bindings/check-elf.sh" "${libs[@]}" >/dev/null || fail "a native library fails bindings/check-elf.sh"
echo "check-aar: $aar: layout, manifest, R8 rules and classes ok; ${#libs[@]} native libraries"
