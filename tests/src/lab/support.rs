//! Whether the lab can run here, and how a lab test skips when it cannot.
//!
//! The lab needs root, network namespaces and the tools that `tests/lab-deps.sh`
//! installs. Without them a lab test prints loudly why it skips and passes — unless the
//! environment says `CI=true`, where a skip is a failure.

use std::io::Write as _;

use super::cmd::{SETUP_TIMEOUT, command, has_tool, output_within};

/// The tools every lab needs.
pub const BASE_TOOLS: [&str; 5] = ["ip", "nft", "conntrack", "iptables-nft", "sysctl"];

/// Writes a line straight to the process's standard error, past the test harness's output
/// capture, so that it shows even for passing tests.
pub fn say(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{line}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Why the lab cannot run here (with `extra_tools` needed too), or `None` when it can.
pub fn unavailable(extra_tools: &[&str]) -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("the NAT lab needs Linux network namespaces".into());
    }
    if !is_root() {
        return Some("the NAT lab needs root (network namespaces, nftables)".into());
    }
    let missing: Vec<&str> = BASE_TOOLS
        .iter()
        .chain(extra_tools)
        .copied()
        .filter(|t| !has_tool(t))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "missing tools: {} (run tests/lab-deps.sh)",
            missing.join(", ")
        ));
    }
    let probe = format!("{}-probe", super::netns::unique_prefix());
    match output_within(&mut command("ip", &["netns", "add", &probe]), SETUP_TIMEOUT) {
        Ok(o) if o.success() => {
            let _ = output_within(&mut command("ip", &["netns", "del", &probe]), SETUP_TIMEOUT);
            None
        }
        Ok(o) => Some(format!(
            "cannot create a network namespace: {}",
            o.stderr.trim()
        )),
        Err(e) => Some(format!("cannot create a network namespace: {e}")),
    }
}

/// Whether `CI=true` (or `CI=1`) is set.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// For a lab test's first line: returns true when the lab can run. Otherwise prints why
/// the test skips and returns false — or panics under `CI=true`.
///
/// ```no_run
/// # fn t() {
/// if !pinhole_tests::lab::support::lab_available("matrix", &["turnserver"]) {
///     return;
/// }
/// # }
/// ```
pub fn lab_available(test: &str, extra_tools: &[&str]) -> bool {
    match unavailable(extra_tools) {
        None => true,
        Some(why) => {
            if in_ci() {
                panic!("NAT lab test `{test}` cannot run and CI=true forbids skipping: {why}");
            }
            say(&format!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !!! SKIPPING NAT lab test `{test}`: {why}\n\
                 !!! (it passes without running; with CI=true it would fail)\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            ));
            false
        }
    }
}
