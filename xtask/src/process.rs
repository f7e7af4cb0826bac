//! Running `ignite` processes: the release build, free loopback ports, readiness polling,
//! SIGTERM and waiting for exit, and idle RSS from `/proc`.
use std::{
    fs,
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

use crate::{http, metadata::Workspace};

/// How long a node may take to start or to stop before xtask gives up on it.
pub(crate) const PROCESS_DEADLINE: Duration = Duration::from_secs(60);

/// The `ignite` binary to run: `given` if set, else a fresh release build.
pub(crate) fn ignite_binary(root: &Path, given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(path) if path.is_file() => Ok(path.to_path_buf()),
        Some(path) => bail!("no ignite binary at {}", path.display()),
        None => build_ignite(root),
    }
}

/// Whether `binary start --help` lists `flag` (flags arrive as the node grows).
pub(crate) fn start_accepts(binary: &Path, flag: &str) -> anyhow::Result<bool> {
    let output = Command::new(binary)
        .args(["start", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("failed to run {} start --help", binary.display()))?;
    Ok(String::from_utf8_lossy(&output.stdout).contains(flag))
}

/// Builds `ignite` in release mode and returns the path of the binary.
pub(crate) fn build_ignite(root: &Path) -> anyhow::Result<PathBuf> {
    println!("building ignite (release)...");
    let status = crate::cargo()
        .args(["build", "--release", "-p", "node", "--bin", "ignite"])
        .current_dir(root)
        .status()
        .context("failed to run cargo build")?;
    if !status.success() {
        bail!("cargo build --release -p node --bin ignite exited with {status}");
    }
    let binary = Workspace::load(root)?
        .target_dir
        .join("release")
        .join("ignite");
    if !binary.is_file() {
        bail!("built ignite but found no binary at {}", binary.display());
    }
    Ok(binary)
}

/// `n` distinct free loopback ports: all are bound at once (so none repeats), then released.
pub(crate) fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("failed to bind 127.0.0.1:0"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| {
            Ok(listener
                .local_addr()
                .context("failed to read a bound port")?
                .port())
        })
        .collect()
}

/// A running `ignite` process; killed (SIGKILL) if dropped while still running, so an error in
/// xtask never leaves nodes behind.
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) rest: SocketAddr,
    pub(crate) log: PathBuf,
    child: Child,
}

impl Node {
    /// Spawns `binary <args>` in its own process group (a terminal's Ctrl-C reaches only
    /// xtask, which then stops the nodes in order), stdout and stderr appended to `log`.
    pub(crate) fn spawn(
        binary: &Path,
        name: &str,
        rest: SocketAddr,
        args: &[String],
        log: &Path,
    ) -> anyhow::Result<Self> {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open log file {}", log.display()))?;
        let err = out
            .try_clone()
            .with_context(|| format!("failed to open log file {}", log.display()))?;
        let child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to spawn {} for node {name}", binary.display()))?;
        Ok(Self {
            name: name.to_owned(),
            rest,
            log: log.to_path_buf(),
            child,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub(crate) fn try_exit(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("failed to poll node {}", self.name))
    }

    /// Polls every millisecond until `GET /health` answers 200 and
    /// `GET /management/v1/node/state` reports `STARTED` (or, with `started == false`, until
    /// `/health` alone answers 200). Fails if the process exits or the deadline passes.
    pub(crate) fn wait_ready(&mut self, started: bool, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        let io_timeout = Duration::from_secs(2);
        loop {
            if let Some(status) = self.try_exit()? {
                bail!(
                    "node {} exited with {status} before it was ready\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            let health = http::get(self.rest, "/health", io_timeout);
            if matches!(&health, Ok(response) if response.status == 200) {
                if !started {
                    return Ok(());
                }
                let state = http::get(self.rest, "/management/v1/node/state", io_timeout);
                if matches!(&state, Ok(response) if response.status == 200 && is_started(&response.body))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                bail!(
                    "node {} was not ready at {} after {deadline:?}\n{}",
                    self.name,
                    self.rest,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends SIGTERM (once) and waits for the process to exit; SIGKILL after `deadline`.
    pub(crate) fn terminate(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        self.send_term()?;
        self.wait_exit(deadline)
    }

    /// Sends SIGTERM unless the process has already exited.
    pub(crate) fn send_term(&mut self) -> anyhow::Result<()> {
        if self.try_exit()?.is_some() {
            return Ok(());
        }
        signal(self.pid(), libc::SIGTERM)
            .with_context(|| format!("failed to send SIGTERM to node {}", self.name))
    }

    /// Polls every millisecond until the process exits; SIGKILL and an error after `deadline`.
    pub(crate) fn wait_exit(&mut self, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let until = Instant::now() + deadline;
        loop {
            if let Some(status) = self.try_exit()? {
                return Ok(status);
            }
            if Instant::now() >= until {
                // best effort: the error below is what matters
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "node {} did not exit within {deadline:?} of SIGTERM; killed it\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resident set size of the process in bytes (`VmRSS` in `/proc/<pid>/status`).
    pub(crate) fn rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("no VmRSS line in {path}"))
    }

    /// The last lines of the node's log, for error messages.
    pub(crate) fn log_tail(&self) -> String {
        match fs::read_to_string(&self.log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(20)..];
                format!(
                    "--- last lines of {} ---\n{}",
                    self.log.display(),
                    tail.join("\n")
                )
            }
            Err(err) => format!("(no log at {}: {err})", self.log.display()),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // best effort cleanup of a node left running by an error path
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a `node/state` body says `"state": "STARTED"`.
fn is_started(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("state")
                .and_then(|s| s.as_str())
                .map(|s| s == "STARTED")
        })
        .unwrap_or(false)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | None => 1024,
        Some(_) => return None,
    };
    Some(value * unit)
}

/// Sends `sig` to the process `pid`.
#[allow(unsafe_code)] // kill(2) has no safe std API; its arguments are plain integers
fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "pid out of range"))?;
    // SAFETY: kill(2) only reads its two integer arguments; `pid` is our own child, not yet
    // reaped (we hold its `Child` and have not waited on it), so the pid cannot be reused.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status = "Name:\tignite\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn own_rss_is_positive() {
        let status = fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
        assert!(parse_vm_rss(&status).is_some_and(|rss| rss > 0));
    }

    #[test]
    fn started_state_is_recognised() {
        assert!(is_started(br#"{"state":"STARTED"}"#));
        assert!(is_started(br#"{ "name": "bench", "state": "STARTED" }"#));
        assert!(!is_started(br#"{"state":"ZOMBIE"}"#));
        assert!(!is_started(b"STARTED"));
    }

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let ports = free_ports(4).expect("free ports");
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 4);
        assert!(ports.iter().all(|&port| port != 0));
    }

    #[test]
    fn sigterm_stops_a_child_process() {
        let dir = tempfile::tempdir().expect("temp dir");
        let rest = SocketAddr::from(([127, 0, 0, 1], 9));
        let args = ["-c".to_owned(), "exec sleep 600".to_owned()];
        let log = dir.path().join("fake.log");
        let mut node =
            Node::spawn(Path::new("/bin/sh"), "fake", rest, &args, &log).expect("spawn fake node");
        assert!(node.try_exit().expect("poll").is_none());
        assert!(node.rss_bytes().expect("rss of a live process") > 0);
        let status = node.terminate(Duration::from_secs(30)).expect("terminated");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }
}
