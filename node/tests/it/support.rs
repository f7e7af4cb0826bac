//! Test harness: real `ignite` processes on OS-assigned ports, killed on drop.
use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn ignite_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ignite")
}

/// A running `ignite start` process.
pub(crate) struct NodeProcess {
    child: Child,
    pub(crate) rest: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Collect a child's stderr lines in the background.
fn drain(child: &mut Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

fn spawn(args: &[&str]) -> Child {
    Command::new(ignite_bin())
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ignite")
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c2 in chars.by_ref() {
                if c2.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl NodeProcess {
    /// Start `ignite start --data-dir DIR --rest 127.0.0.1:0 EXTRA...` and wait until its REST
    /// API is bound (read from its log).
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let dir = data_dir.to_string_lossy().into_owned();
        let mut args = vec![
            "start",
            "--data-dir",
            dir.as_str(),
            "--rest",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut child = spawn(&args);
        let stderr = drain(&mut child);
        let begin = Instant::now();
        loop {
            let found = stderr.lock().unwrap().iter().find_map(|l| {
                let l = strip_ansi(l);
                let rest = l.split("rest api listening address=").nth(1)?;
                rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
            });
            if let Some(rest) = found {
                return Self {
                    child,
                    rest,
                    stderr,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ignite exited early with {status}: {:?}",
                    stderr.lock().unwrap()
                );
            }
            assert!(
                begin.elapsed() < DEADLINE,
                "ignite did not bind REST in time: {:?}",
                stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.rest)
    }

    pub(crate) fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits i32")
    }

    /// Send SIGTERM and wait for the exit status.
    pub(crate) fn terminate(mut self) -> ExitStatus {
        // SAFETY-free: libc::kill with a pid we own.
        send_signal(self.pid(), libc::SIGTERM);
        wait_with_deadline(&mut self.child)
    }

    pub(crate) fn log(&self) -> String {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .map(|l| strip_ansi(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn send_signal(pid: i32, signal: i32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

pub(crate) fn wait_with_deadline(child: &mut Child) -> ExitStatus {
    let begin = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if begin.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("process did not exit within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Run `ignite ARGS...` to completion: (exit code, stdout, stderr).
pub(crate) fn run_cli(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(ignite_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ignite");
    // read both pipes while the child runs: a large output would otherwise fill the pipe
    // and the child would never exit
    fn reader(pipe: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    }
    let out = reader(child.stdout.take().expect("stdout piped"));
    let err = reader(child.stderr.take().expect("stderr piped"));
    let status = wait_with_deadline(&mut child);
    let out = out.join().expect("stdout reader");
    let err = err.join().expect("stderr reader");
    (status.code().unwrap_or(-1), out, strip_ansi(&err))
}

/// Poll `f` until it returns `Some` or the deadline passes.
pub(crate) fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let begin = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(begin.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
