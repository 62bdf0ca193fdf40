//! Link arguments of the shared library (the cdylib) on ELF targets.
//!
//! Only for this crate's cdylib (`cargo:rustc-cdylib-link-arg`), never through a global
//! `.cargo/config.toml`, which would reach every crate and binary of the workspace.
//!
//! - **16 KB pages**: `-z max-page-size=16384` and `-z common-page-size=16384`, so that
//!   every LOAD segment is aligned to 16 KB. Android 15+ devices may run with 16 KB pages
//!   and Google Play requires it of apps targeting Android 15 (a library aligned to 4 KB does
//!   not load there); on Linux it costs nothing but a little padding. Checked by
//!   `bindings/check-elf.sh`.
//! - **SONAME carrying the ABI version**: Linux `libpinhole_ffi.so.<ABI>`, where `<ABI>` is
//!   the Cargo compatibility prefix of the crate version (the major version, or `0.<minor>`
//!   before 1.0: what Cargo treats as breaking is what breaks the C ABI), e.g.
//!   `libpinhole_ffi.so.0.1` for 0.1.x. On Android the SONAME is the file name,
//!   `libpinhole_ffi.so`: an APK ships only `lib*.so` files, so a versioned SONAME would
//!   name a file that never exists on the device.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "linux" && os != "android" {
        return;
    }
    for arg in ["max-page-size=16384", "common-page-size=16384"] {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,{arg}");
    }
    let soname = if os == "android" {
        "libpinhole_ffi.so".to_owned()
    } else {
        format!("libpinhole_ffi.so.{}", abi_version())
    };
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
}

/// The ABI version: the major version, or `0.<minor>` before 1.0.
fn abi_version() -> String {
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_default();
    let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_default();
    if major == "0" {
        format!("0.{minor}")
    } else {
        major
    }
}
