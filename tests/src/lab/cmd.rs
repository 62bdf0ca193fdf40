//! Running commands with every wait bounded.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{Result, lab_err};

/// How long a setup command (`ip`, `nft`, `conntrack`, …) may take.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Its exit status.
    pub status: ExitStatus,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// A shell-like rendering of a command, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, killing it after `timeout`. Standard input is closed. Fails
/// only when it cannot be started or times out; check [`Output::status`] yourself.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    output_with_input(cmd, None, timeout)
}

/// Like [`output_within`], feeding `input` (when given) on standard input.
pub fn output_with_input(
    cmd: &mut Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<Output> {
    let what = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| lab_err!("cannot start `{what}`: {e}"))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_owned();
        // A writer thread: a child that does not read cannot block us.
        thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The reader threads end when the pipes close; they are not joined here in
            // case a grandchild keeps a pipe open.
            return Err(lab_err!("`{what}` did not finish within {timeout:?}"));
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stdout = String::from_utf8_lossy(&t_out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` within [`SETUP_TIMEOUT`] and requires success; returns standard output.
pub fn run(cmd: &mut Command) -> Result<String> {
    run_with_input(cmd, None)
}

/// Like [`run`], feeding `input` (when given) on standard input.
pub fn run_with_input(cmd: &mut Command, input: Option<&str>) -> Result<String> {
    let out = output_with_input(cmd, input, SETUP_TIMEOUT)?;
    if out.success() {
        Ok(out.stdout)
    } else {
        Err(lab_err!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            out.stderr.trim(),
            if out.stdout.trim().is_empty() {
                String::new()
            } else {
                format!("\nstdout: {}", out.stdout.trim())
            }
        ))
    }
}

/// The full path of a system tool: `PATH` first, then the sbin directories, which a
/// non-login root shell or a test runner may lack. Paths containing `/` are kept.
pub fn tool(name: &str) -> PathBuf {
    if name.contains('/') {
        return PathBuf::from(name);
    }
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().ok().and_then(|c| c.get(name).cloned()) {
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => {
            if let Ok(mut c) = cache.lock() {
                c.insert(name.to_owned(), p.clone());
            }
            p
        }
        None => PathBuf::from(name),
    }
}

/// Whether a system tool exists (see [`tool`]).
pub fn has_tool(name: &str) -> bool {
    tool(name).is_file()
}

/// A command from a program (resolved with [`tool`]) and arguments.
pub fn command<S: AsRef<std::ffi::OsStr>>(program: &str, args: &[S]) -> Command {
    let mut c = Command::new(tool(program));
    c.args(args);
    c
}

/// `ip netns exec <ns> <program> <args…>` (the program resolved with [`tool`]).
pub fn in_ns<S: AsRef<std::ffi::OsStr>>(ns: &str, program: &str, args: &[S]) -> Command {
    let mut c = Command::new(tool("ip"));
    c.args(["netns", "exec", ns]).arg(tool(program)).args(args);
    c
}

/// Runs `program args…` inside namespace `ns`, requiring success.
pub fn run_in<S: AsRef<std::ffi::OsStr>>(ns: &str, program: &str, args: &[S]) -> Result<String> {
    run(&mut in_ns(ns, program, args))
}

/// Runs `program args…` inside `ns` with `input` on standard input (`nft -f -`),
/// requiring success; the input is quoted in the error.
pub fn run_in_with_input(ns: &str, program: &str, args: &[&str], input: &str) -> Result<String> {
    run_with_input(&mut in_ns(ns, program, args), Some(input))
        .map_err(|e| lab_err!("{e}\ninput was:\n{input}"))
}
