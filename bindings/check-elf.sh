#!/usr/bin/env bash
# Checks ELF shared libraries for what pinhole's packages need:
#
#   - every LOAD segment aligned to at least 16 KB (p_align a multiple of 16384): Android 15+
#     devices with 16 KB pages do not load a library aligned to 4 KB, and Google Play
#     requires 16 KB alignment of apps targeting Android 15+;
#   - a SONAME (DT_SONAME in the dynamic section) that names the library: the file name
#     itself or the file name followed by a version (libpinhole_ffi.so.0.1).
#
# Usage: bindings/check-elf.sh LIB.so...   Exit status 1 when any library fails (each
# failure is printed), 2 on usage errors. Needs readelf (binutils).
set -euo pipefail

if [ $# -eq 0 ]; then
    echo "usage: $0 LIB.so..." >&2
    exit 2
fi
command -v readelf >/dev/null || { echo "check-elf: readelf (binutils) is missing" >&2; exit 2; }

failed=0
fail() {
    echo "check-elf: $1: $2" >&2
    failed=1
}

for lib in "$@"; do
    if [ ! -f "$lib" ]; then
        fail "$lib" "no such file"
        continue
    fi
    if ! headers=$(LC_ALL=C readelf --program-headers --wide "$lib" 2>&1); then
        fail "$lib" "not an ELF file: $headers"
        continue
    fi
    # The LOAD lines' last field is p_align (hex).
    aligns=$(awk '$1 == "LOAD" { print $NF }' <<<"$headers")
    if [ -z "$aligns" ]; then
        fail "$lib" "no LOAD segment"
        continue
    fi
    ok=1
    for a in $aligns; do
        if (((a) < 16384 || (a) % 16384 != 0)); then
            fail "$lib" "a LOAD segment is aligned to $((a)) bytes, not 16 KB (link with -z max-page-size=16384)"
            ok=0
            break
        fi
    done
    soname=$(LC_ALL=C readelf --dynamic --wide "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]$/\1/p')
    base=$(basename "$lib")
    base=${base%%.so*}.so
    if [ -z "$soname" ]; then
        fail "$lib" "no SONAME (link with -Wl,-soname,$base.<ABI>)"
        ok=0
    elif [[ $soname != "$base" && ! $soname =~ ^${base//./\\.}\.[0-9]+(\.[0-9]+)*$ ]]; then
        fail "$lib" "SONAME $soname does not name the library $base"
        ok=0
    fi
    if [ $ok -eq 1 ]; then
        echo "check-elf: $lib: LOAD aligned to $(sort -u <<<"$aligns" | tr '\n' ' ')SONAME $soname"
    fi
done
exit $failed
