//! Long-running processes inside namespaces (servers, the delay process), stopped on drop,
//! and [`Streaming`] processes whose output a test reads as it comes.

use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::cmd::{SETUP_TIMEOUT, command, describe, output_within, tool};
use super::error::{Result, lab_err};

/// How long a process gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// A process started in a namespace with its output in a log file. Dropping it stops it
/// (SIGTERM, then SIGKILL after [`STOP_GRACE`]) unless it was [`detach`](Self::detach)ed.
#[derive(Debug)]
pub struct Process {
    label: String,
    child: Option<Child>,
    log: PathBuf,
    command: String,
}

impl Process {
    /// Starts `program args…` in `ns` with standard output and error appended to `log`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        label: &str,
        ns: &str,
        program: &Path,
        args: &[S],
        log: &Path,
    ) -> Result<Self> {
        let out = File::create(log).map_err(|e| lab_err!("{}: {e}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", ns])
            .arg(tool(&program.to_string_lossy()))
            .args(args);
        let command = describe(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| lab_err!("starting {label} (`{command}`): {e}"))?;
        Ok(Process {
            label: label.to_owned(),
            child: Some(child),
            log: log.to_path_buf(),
            command,
        })
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its process id (`ip netns exec` execs the program, so this is the server's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// A failure message that carries the command and its log.
    pub fn failure(&mut self, what: &str) -> super::LabError {
        let status = match self.exited() {
            Some(s) => format!("it exited ({s})"),
            None => "it is still running".to_owned(),
        };
        lab_err!(
            "{}: {what}; {status}\ncommand: {}\n--- log {} ---\n{}--- end of log ---",
            self.label,
            self.command,
            self.log.display(),
            self.log()
        )
    }

    /// Polls `ready` every 50 ms until it returns true, the process exits, or `timeout`
    /// passes; the errors carry the process's log.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(&mut Self) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self) {
                return Ok(());
            }
            if self.exited().is_some() {
                return Err(self.failure("exited before it was ready"));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("not ready within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it: SIGTERM, then SIGKILL after [`STOP_GRACE`]; reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_none() {
            let _ = output_within(
                &mut command("kill", &["-TERM", &child.id().to_string()]),
                SETUP_TIMEOUT,
            );
            let deadline = Instant::now() + STOP_GRACE;
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Leaves it running after this handle is gone (for `natlab up`).
    pub fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A process in a namespace whose standard output is read line by line as it comes (a
/// reader thread feeds a channel), with standard error in a log file. Every wait is
/// bounded. Dropping it kills it (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct Streaming {
    label: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr_log: PathBuf,
    command: String,
}

impl Streaming {
    /// Starts `program args…` in `ns`, standard output piped, standard error to
    /// `stderr_log`.
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(
        label: &str,
        ns: &str,
        program: &Path,
        args: &[S],
        stderr_log: &Path,
    ) -> Result<Self> {
        let err =
            File::create(stderr_log).map_err(|e| lab_err!("{}: {e}", stderr_log.display()))?;
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", ns])
            .arg(tool(&program.to_string_lossy()))
            .args(args);
        let command = describe(&cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| lab_err!("starting {label} (`{command}`): {e}"))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        // Ends at end of file, when the process exits (or is killed).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            label: label.to_owned(),
            child: Some(child),
            lines,
            seen: Vec::new(),
            stderr_log: stderr_log.to_path_buf(),
            command,
        })
    }

    /// Its process id (`ip netns exec` execs the program, so this is the program's).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The next line of standard output, waiting at most `timeout`; `None` on timeout or
    /// once the output has ended.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(timeout).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads lines until one satisfies `want`, for at most `timeout` in all; returns it.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left)?;
            if want(&line) {
                return Some(line);
            }
        }
    }

    /// Sends it a signal (`INT`, `TERM`, …) with `kill`.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| lab_err!("{} was already reaped", self.label))?;
        let out = output_within(
            &mut command("kill", &[format!("-{signal}"), pid.to_string()]),
            SETUP_TIMEOUT,
        )?;
        if out.success() {
            Ok(())
        } else {
            Err(lab_err!(
                "kill -{signal} {pid} ({}): {}",
                self.label,
                out.stderr.trim()
            ))
        }
    }

    /// Waits at most `timeout` for it to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The command, the lines read so far and its standard error, for failure messages.
    pub fn transcript(&self) -> String {
        format!(
            "--- {} ---\ncommand: {}\nstdout so far:\n{}\nstderr ({}):\n{}--- end of {} ---",
            self.label,
            self.command,
            self.seen.join("\n"),
            self.stderr_log.display(),
            std::fs::read_to_string(&self.stderr_log).unwrap_or_default(),
            self.label
        )
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
