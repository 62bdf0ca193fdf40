//! Network namespaces: unique names, RAII deletion, and the sweep of stale ones.
//!
//! Names are `ph<pid>-<n>-<role>` for namespaces owned by a running process, so that
//! parallel test processes never collide and a later run can tell whose they were, and
//! `phm-<role>` for the hand-built lab of `natlab up`, which outlives its process.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cmd::{SETUP_TIMEOUT, command, output_within, run};
use super::error::{Result, lab_err};

/// Every lab namespace name starts with this.
pub const PREFIX: &str = "ph";
/// The prefix of the hand-built lab (`natlab up`); never swept.
pub const MANUAL_PREFIX: &str = "phm";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A process-wide counter for unique names.
pub fn next_counter() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A fresh prefix for one lab in this process: `ph<pid>-<n>`.
pub fn unique_prefix() -> String {
    format!("{PREFIX}{}-{}", std::process::id(), next_counter())
}

/// The owning process id encoded in a lab namespace name, if it is one of ours.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (digits, _) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The names of all network namespaces (`ip netns list`).
pub fn list() -> Result<Vec<String>> {
    let out = run(&mut command("ip", &["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills every process inside `ns` (they are all lab servers or lab commands) and waits,
/// bounded, for them to go.
pub fn kill_all_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let pids: Vec<String> =
            output_within(&mut command("ip", &["netns", "pids", ns]), SETUP_TIMEOUT)
                .map(|o| o.stdout.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let mut args = vec!["-KILL".to_owned()];
        args.extend(pids);
        let _ = output_within(&mut command("kill", &args), SETUP_TIMEOUT);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills what runs in `ns` and deletes it; errors are ignored (teardown must go on).
pub fn destroy(ns: &str) {
    kill_all_in(ns);
    let _ = output_within(&mut command("ip", &["netns", "del", ns]), SETUP_TIMEOUT);
}

/// Deletes lab namespaces whose owning process is gone, and returns their names.
/// Namespaces of the hand-built lab (`phm-…`) are left alone.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut swept = Vec::new();
    for name in list()? {
        if let Some(pid) = owner_pid(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                destroy(&name);
                swept.push(name);
            }
        }
    }
    Ok(swept)
}

/// A network namespace deleted on drop, together with every process still in it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    keep: bool,
}

impl Netns {
    /// Creates `name` with loopback up and IPv6 off (the lab is IPv4 for now; this also
    /// keeps router solicitations and MLD reports out of captures).
    pub fn create(name: &str) -> Result<Self> {
        run(&mut command("ip", &["netns", "add", name]))
            .map_err(|e| lab_err!("creating namespace {name}: {e}"))?;
        let ns = Netns {
            name: name.to_owned(),
            keep: false,
        };
        run(&mut command(
            "ip",
            &[
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        ))?;
        run(&mut command("ip", &["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Leaves it (and what runs in it) in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.keep {
            destroy(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_only_lab_names() {
        assert_eq!(owner_pid("ph1234-0-inet"), Some(1234));
        assert_eq!(owner_pid("ph7-12-r1"), Some(7));
        assert_eq!(owner_pid("phm-inet"), None);
        assert_eq!(owner_pid("ph-1"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(owner_pid("ph12x-1"), None);
    }

    #[test]
    fn prefixes_are_unique() {
        assert_ne!(unique_prefix(), unique_prefix());
    }
}
