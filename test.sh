#!/usr/bin/env bash
# Runs every pinhole test: formatting, clippy, the whole cargo test suite (unit tests,
# CLI end-to-end tests on loopback, NAT lab tests) and the fuzz corpus replay.
#
# It installs what it needs when missing, and does nothing when it is already there:
#   - rustfmt and clippy (rustup components)
#   - cargo-fuzz (cargo install --locked); the fuzz targets build on the stable toolchain
#     with RUSTC_BOOTSTRAP=1, because sanitizer flags are unstable
#   - the Debian packages of the NAT lab and the interop tests (tests/lab-deps.sh; root):
#     iproute2, nftables, conntrack, iptables, coturn, miniupnpd, miniupnpc, natpmpc, openssl,
#     gir1.2-nice-0.1 + python3-gi (the libnice interop peer),
#     and pkg-config + libssl-dev for the TURN benchmark's openssl-sys dev-dependency
#
#   - the bindings' tools (bindings/setup.sh, called by bindings/test.sh; root): cbindgen,
#     valgrind, JNA, kotlinc (npm), a Debian trixie chroot with Swift, the mobile targets,
#     shellcheck, binutils and zip (the packages' checks);
#     kotlinc and the chroot live outside the clone, under /opt/pinhole-tools
#
# With CI=true, a lab, interop or bindings test that cannot run fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")"

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "toolchain components"
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

step "Debian packages (NAT lab, coturn, miniupnpd, openssl)"
tests/lab-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo check: sans-IO core alone, without TLS, and the feature combinations"
cargo check -p pinhole --no-default-features
cargo check -p pinhole
# The mobile library's: the driver without the development servers.
cargo check -p pinhole --no-default-features --features driver
# The servers' sans-IO machines without the driver (the fuzz targets' build).
cargo check -p pinhole --no-default-features --features server
# The ffi crate's embedded STUN server, which the workspace's clippy run leaves out.
cargo clippy -p pinhole-ffi --all-targets --features server -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "bindings: C header, C (valgrind), Kotlin, Swift, mobile targets, ELF, AAR, XCFramework (bindings/test.sh)"
bindings/test.sh

step "fuzz corpus replay"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(ls fuzz/fuzz_targets | sed 's/\.rs$//'); do
    if RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "fuzz/corpus/$target" -- -runs=0 >"$log" 2>&1; then
        echo "$target: $(grep -E '^Done' "$log" || echo replayed)"
    else
        cat "$log"
        echo "fuzz replay of $target failed"
        exit 1
    fi
done

step "all tests passed in $(( $(date +%s) - started )) s"
