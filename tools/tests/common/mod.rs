//! The end-to-end harness shared by the test binaries: the real `corelog` binary on a temp data
//! dir, its stderr read line by line, stopped by signals.
// Each test binary uses a subset of the harness.
#![allow(dead_code)]

pub mod http;
pub mod kafka;
pub mod proxy;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any wait on the broker (a log line, an exit) may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(60);

/// A running `corelog start`; killed (SIGKILL) on drop if it is still running.
pub struct Broker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Broker {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::start_on(data_dir, "127.0.0.1:0", extra)
    }

    /// Like [`Broker::start`], listening on `listen`.
    pub fn start_on(data_dir: &Path, listen: &str, extra: &[&str]) -> Self {
        // Tests run side by side: never the default admin port.
        let admin: &[&str] = if extra.contains(&"--admin-listen") { &[] } else { &["--admin-listen", "127.0.0.1:0"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelog"))
            .arg("start")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(admin)
            .args(extra)
            .env("CORELOG_LOG", std::env::var("CORELOG_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn corelog");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        // CORELOG_TEST_ECHO=1 echoes every broker log line to the test's output.
        let echo = std::env::var_os("CORELOG_TEST_ECHO").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("[corelog] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// Waits for a log line containing `needle`; panics with everything seen on timeout.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return line;
                }
            }
        }
        panic!("no line containing {needle:?} within {WAIT:?}; saw:\n{}", self.seen.join("\n"));
    }

    /// Waits for the `corelog ready` line and returns the resolved listener address.
    pub fn wait_ready(&mut self) -> String {
        let ready = self.wait_for("corelog ready");
        let address = ready
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .unwrap_or_else(|| panic!("the ready line names the listener: {ready}"))
            .to_string();
        assert!(!address.ends_with(":0"), "port 0 must be resolved: {ready}");
        address
    }

    /// The admin API address from the ready line (after [`Broker::wait_ready`]).
    pub fn admin_address(&self) -> String {
        let ready = self.seen.iter().rev().find(|line| line.contains("corelog ready")).expect("the broker is ready");
        ready
            .split_whitespace()
            .find_map(|word| word.strip_prefix("admin="))
            .unwrap_or_else(|| panic!("the ready line names the admin API: {ready}"))
            .to_string()
    }

    /// Every log line read so far, after reading what is waiting.
    pub fn log_lines(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's resident set size (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        rss_bytes_of(self.pid()).expect("VmRSS of the running broker")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for exit; returns the code (`None` when killed by a signal) and everything printed.
    pub fn wait_exit(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return (status.code(), self.seen.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("corelog did not exit within {WAIT:?}; saw:\n{}", self.seen.join("\n"));
            }
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then asserts the clean stop (exit 0).
    pub fn stop(self) {
        self.signal(libc::SIGTERM);
        let (code, output) = self.wait_exit();
        assert_eq!(code, Some(0), "corelog did not stop cleanly:\n{output}");
    }
}

/// A process's resident set size (VmRSS from `/proc/PID/status`), in bytes; None once it is gone.
pub fn rss_bytes_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 =
        status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
