//! Finding the programs the lab runs: this crate's helpers (`natlab`, `nfq-delay`) and
//! the `pinhole` CLI from the `pinhole-cli` crate.
//!
//! Cargo builds a package's own binaries before its integration tests, but not another
//! package's, and a dev-dependency on a binary-only crate builds nothing. So
//! [`pinhole`] runs `cargo build -p pinhole-cli --bin pinhole` once per process, into the
//! target directory the running executable lives in (cargo does not hold its lock while
//! tests run; when nothing changed this takes a fraction of a second), and then uses
//! `<target>/<profile>/pinhole`. `PINHOLE_BIN` overrides it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::cmd::output_within;
use super::error::{LabError, Result, lab_err};

/// The profile directory (`target/debug`) that holds the running executable, whether it
/// is a binary (`target/debug/natlab`) or a test (`target/debug/deps/lab_matrix-…`).
pub fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .ok_or_else(|| lab_err!("{} has no parent directory", exe.display()))?;
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        Ok(dir.parent().unwrap_or(dir).to_path_buf())
    } else {
        Ok(dir.to_path_buf())
    }
}

/// A binary of this workspace next to the running executable; `env_override` names an
/// environment variable that, when set, wins.
pub fn sibling(name: &str, env_override: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_override) {
        return Ok(PathBuf::from(p));
    }
    let p = profile_dir()?.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(lab_err!(
            "{} not found (build it with `cargo build -p pinhole-tests --bin {name}`, or set {env_override})",
            p.display()
        ))
    }
}

/// The `natlab` helper binary (`PINHOLE_NATLAB` overrides).
pub fn natlab() -> Result<PathBuf> {
    sibling("natlab", "PINHOLE_NATLAB")
}

/// The `nfq-delay` binary (`PINHOLE_NFQ_DELAY` overrides).
pub fn nfq_delay() -> Result<PathBuf> {
    sibling("nfq-delay", "PINHOLE_NFQ_DELAY")
}

fn build_pinhole(profile_dir: &Path) -> Result<()> {
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("debug")
        .to_owned();
    let target = profile_dir
        .parent()
        .ok_or_else(|| lab_err!("{} has no parent", profile_dir.display()))?;
    if !target.join("CACHEDIR.TAG").exists() {
        // A cross-compilation layout (target/<triple>/<profile>): don't guess; use what is there.
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "pinhole-cli", "--bin", "pinhole"])
        .env("CARGO_TARGET_DIR", target)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = output_within(&mut cmd, std::time::Duration::from_secs(600))?;
    if out.success() {
        Ok(())
    } else {
        Err(lab_err!(
            "`cargo build -p pinhole-cli` failed:\n{}",
            out.stderr
        ))
    }
}

/// The `pinhole` CLI, built if needed (see the module docs). `PINHOLE_BIN` overrides.
pub fn pinhole() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, LabError>> = OnceLock::new();
    if let Some(p) = std::env::var_os("PINHOLE_BIN") {
        return Ok(PathBuf::from(p));
    }
    BUILT
        .get_or_init(|| {
            let dir = profile_dir()?;
            build_pinhole(&dir)?;
            let p = dir.join("pinhole");
            if p.is_file() {
                Ok(p)
            } else {
                Err(lab_err!(
                    "{} not found: run `cargo build -p pinhole-cli` (or set PINHOLE_BIN)",
                    p.display()
                ))
            }
        })
        .clone()
}
