#!/usr/bin/env bash
# Lays out pinhole's AAR the way the Android Gradle plugin packs build.gradle.kts's module,
# without the Android SDK, and zips it:
#
#   AndroidManifest.xml   src/main/AndroidManifest.xml with package="dev.pinhole" (the
#                         namespace, as AGP writes it)
#   classes.jar           the compiled Kotlin (given: --classes JAR): the Android flavour
#                         of the generated bindings and the package's own sources
#                         (src/main/kotlin: Flow adapters, NetworkMonitor,
#                         AndroidNetworkSource, AppLifecycle, AndroidLifecycleSource), as
#                         Gradle compiles them
#   proguard.txt          consumer-rules.pro (AGP's name for the consumer rules)
#   R.txt                 empty: the module has no resources
#   jni/<abi>/*.so        every library found in --jnilibs DIR/<abi>/ for the four ABIs
#   META-INF/com/android/build/gradle/aar-metadata.properties
#
# Usage: assemble-aar.sh --classes JAR [--jnilibs DIR] --out FILE.aar
# (--jnilibs defaults to src/main/jniLibs, where build-native.sh puts the libraries).
# bindings/test.sh runs it with the Android flavour of the generated Kotlin and the
# package's sources compiled against minimal stubs of the Android classes they use (no
# android.jar is reachable here) and, on this machine, no Android library (no NDK): the
# script says so. android/check-aar.sh checks the result.
set -euo pipefail
ANDROID_DIR=$(cd "$(dirname "$0")" && pwd)
ABIS=(arm64-v8a armeabi-v7a x86_64 x86)
NAMESPACE=dev.pinhole

classes=''
jnilibs=$ANDROID_DIR/src/main/jniLibs
out=''
while [ $# -gt 0 ]; do
    case $1 in
    --classes) classes=$2; shift 2 ;;
    --jnilibs) jnilibs=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "usage: $0 --classes JAR [--jnilibs DIR] --out FILE.aar" >&2; exit 2 ;;
    esac
done
if [ -z "$classes" ] || [ -z "$out" ]; then
    echo "usage: $0 --classes JAR [--jnilibs DIR] --out FILE.aar" >&2
    exit 2
fi
[ -f "$classes" ] || { echo "assemble-aar.sh: no $classes" >&2; exit 1; }
# Paths relative to the caller's directory.
case $out in /*) ;; *) out=$PWD/$out ;; esac
case $jnilibs in /*) ;; *) jnilibs=$PWD/$jnilibs ;; esac
classes=$(realpath "$classes")
cd "$ANDROID_DIR"

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
sed "s|<manifest |<manifest package=\"$NAMESPACE\" |" src/main/AndroidManifest.xml >"$tree/AndroidManifest.xml"
cp "$classes" "$tree/classes.jar"
cp consumer-rules.pro "$tree/proguard.txt"
: >"$tree/R.txt"
mkdir -p "$tree/META-INF/com/android/build/gradle"
cat >"$tree/META-INF/com/android/build/gradle/aar-metadata.properties" <<'PROPS'
aarFormatVersion=1.0
aarMetadataVersion=1.0
minCompileSdk=1
minAndroidGradlePluginVersion=1.0.0
coreLibraryDesugaringEnabled=false
PROPS

found=0
for abi in "${ABIS[@]}"; do
    for so in "$jnilibs/$abi"/*.so; do
        [ -f "$so" ] || continue
        mkdir -p "$tree/jni/$abi"
        cp "$so" "$tree/jni/$abi/"
        found=$((found + 1))
    done
done
if [ $found -eq 0 ]; then
    echo "assemble-aar.sh: no Android library in $jnilibs: jni/ is empty (build them with android/build-native.sh, which needs the NDK)"
fi

rm -f "$out"
mkdir -p "$(dirname "$out")"
parts=(AndroidManifest.xml classes.jar proguard.txt R.txt META-INF)
[ $found -eq 0 ] || parts+=(jni)
(cd "$tree" && zip -qrX "$out" "${parts[@]}")
echo "assemble-aar.sh: $out ($found native libraries)"
