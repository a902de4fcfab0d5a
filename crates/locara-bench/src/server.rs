//! A server process this program starts and ends: llama-server or
//! `locara serve`, on an ephemeral loopback port.
//!
//! Both print where they listen (`listening on http://127.0.0.1:PORT`: Locara
//! as its first line on stdout, llama-server in its log on stderr), so each
//! is started with `--port 0` and its output is read for that line: no port
//! is guessed and none can be taken by someone else in between. Everything
//! they print goes to a log file, quoted when they fail.

use crate::http::{self, BaseUrl};
use crate::tail;
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a poll for readiness waits for one answer.
const POLL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between polls for readiness.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Lines of a server's log quoted in an error.
const LOG_LINES_QUOTED: usize = 25;

/// A running server; ended (SIGTERM, then SIGKILL) when dropped.
pub struct ServerProcess {
    /// For messages: `llama-server`, `locara serve`.
    name: &'static str,
    child: Child,
    pub base: BaseUrl,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ServerProcess {
    /// Starts `cmd` with its output in `log`, and waits until it says where
    /// it listens (at most `deadline`).
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        log: &Path,
        deadline: Duration,
    ) -> Result<ServerProcess> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let file = Arc::new(Mutex::new(file));
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        copy_lines(stdout, Arc::clone(&file), tx.clone());
        copy_lines(stderr, file, tx);
        let mut server = ServerProcess {
            name,
            child,
            // Replaced as soon as the server says where it listens.
            base: "http://127.0.0.1:0".parse().expect("a valid URL"),
            log: log.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(url) => {
                    server.base = url;
                    return Ok(server);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Both streams closed: it is exiting (wait a little for
                    // it to be gone), or closed them itself.
                    let until = Instant::now() + Duration::from_secs(2);
                    while matches!(server.child.try_wait(), Ok(None)) && Instant::now() < until {
                        std::thread::sleep(POLL_INTERVAL);
                    }
                    server.check_alive()?;
                    bail!(
                        "{name} closed its output without saying where it listens; its log ({}) ends:\n{}",
                        server.log.display(),
                        server.log_tail()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if matches!(server.child.try_wait(), Ok(Some(_))) {
                        // It exited: let the copy threads write its last
                        // lines before the log is read for the error.
                        let until = Instant::now() + Duration::from_secs(2);
                        while Instant::now() < until {
                            if let Err(mpsc::RecvTimeoutError::Disconnected) =
                                rx.recv_timeout(POLL_INTERVAL)
                            {
                                break;
                            }
                        }
                    }
                    server.check_alive()?
                }
            }
            if started.elapsed() > deadline {
                bail!(
                    "{name} did not say where it listens within {} s; its log ({}) ends:\n{}",
                    deadline.as_secs(),
                    server.log.display(),
                    server.log_tail()
                );
            }
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls `GET path` until it answers 200, at most `deadline`.
    pub fn wait_ready(&mut self, path: &str, deadline: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            self.check_alive()?;
            let last = match http::get(&self.base, path, POLL_TIMEOUT) {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("{status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() > deadline {
                bail!(
                    "{} at {} was not ready within {} s (GET {path}: {last}); its log ({}) ends:\n{}",
                    self.name,
                    self.base,
                    deadline.as_secs(),
                    self.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// An error quoting the log if the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            // Let the copying threads write the last lines.
            std::thread::sleep(Duration::from_millis(100));
            bail!(
                "{} exited ({status}); its log ({}) ends:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        tail(
            &fs::read_to_string(&self.log).unwrap_or_default(),
            LOG_LINES_QUOTED,
        )
    }

    /// Ends the server: SIGTERM, so that it can end its own children (the
    /// Locara daemon its engine workers), then SIGKILL after a grace period.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // std has no SIGTERM and this crate has no unsafe code: kill(1).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let started = Instant::now();
        while started.elapsed() < STOP_GRACE {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Copies the lines of `stream` into `log` on a thread of its own (so the
/// server never blocks on a full pipe), and sends the first URL announced
/// with `listening on http://...`.
fn copy_lines(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<File>>,
    tx: mpsc::Sender<BaseUrl>,
) {
    std::thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stream).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            if let Ok(mut log) = log.lock() {
                let _ = writeln!(log, "{}", line.trim_end_matches('\r'));
            }
            if !announced {
                if let Some(url) = listening_url(&line) {
                    announced = true;
                    let _ = tx.send(url);
                }
            }
        }
    });
}

/// The URL in a `... listening on http://HOST:PORT ...` line.
fn listening_url(line: &str) -> Option<BaseUrl> {
    let at = line.find("listening on ")? + "listening on ".len();
    let word = line[at..].split_whitespace().next()?;
    word.trim_end_matches([',', '.', ';']).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_of_both_servers() {
        // Locara's first stdout line.
        assert_eq!(
            listening_url("listening on http://127.0.0.1:43121")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:43121"
        );
        // llama-server's log line (0.3.36's tree).
        assert_eq!(
            listening_url("main: listening on http://127.0.0.1:39007\r")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:39007"
        );
        assert!(listening_url("srv  load_model: loading model").is_none());
        assert!(listening_url("listening on unix:///tmp/s.sock").is_none());
    }

    #[test]
    fn a_server_that_exits_is_reported_with_its_log() {
        let dir =
            std::env::temp_dir().join(format!("locara-bench-server-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'no model here' >&2; exit 3"]);
        let err = ServerProcess::start(
            "test server",
            cmd,
            &dir.join("log"),
            Duration::from_secs(20),
        )
        .err()
        .expect("the server exits");
        let msg = format!("{err:#}");
        assert!(msg.contains("no model here"), "{msg}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_server_is_found_where_it_says_it_listens() {
        let dir =
            std::env::temp_dir().join(format!("locara-bench-server-test2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "echo 'listening on http://127.0.0.1:9'; exec sleep 30",
        ]);
        let server = ServerProcess::start(
            "test server",
            cmd,
            &dir.join("log"),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_eq!(server.base.to_string(), "http://127.0.0.1:9");
        let pid = server.pid();
        server.stop();
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || !cfg!(target_os = "linux"),
            "stop ends the process"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
