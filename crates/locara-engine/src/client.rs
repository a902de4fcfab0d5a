//! The parent's side of a worker: spawn it, send requests, receive events.

use crate::protocol::{
    read_frame, write_frame, ErrorKind, Event, FrameError, LoadRequest, LoadedInfo, Request,
    PROTOCOL_VERSION,
};
use std::ffi::OsString;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a worker may take to say `Ready` after it was spawned. Start-up
/// is a process exec plus llama.cpp's backend init: well under a second.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the parent-side client.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not start the engine worker {program:?}: {source}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("the engine worker speaks protocol version {found}, this build speaks {expected}")]
    ProtocolMismatch { found: u32, expected: u32 },
    #[error("the engine worker (pid {pid}) exited unexpectedly ({status})")]
    WorkerDied { pid: u32, status: String },
    #[error("the engine worker sent an unexpected message: {0}")]
    Unexpected(String),
    #[error("the engine worker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("{message}")]
    Worker { kind: ErrorKind, message: String },
    #[error("talking to the engine worker failed: {0}")]
    Channel(#[from] FrameError),
}

impl EngineError {
    /// Stable machine name of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::Spawn { .. } => "worker_spawn",
            EngineError::ProtocolMismatch { .. } => "protocol_mismatch",
            EngineError::WorkerDied { .. } => "worker_died",
            EngineError::Unexpected(_) => "protocol",
            EngineError::Timeout(_) => "worker_timeout",
            EngineError::Worker { kind, .. } => kind.as_str(),
            EngineError::Channel(_) => "worker_channel",
        }
    }
}

/// What the reader thread delivers: the worker's events, then, once, its end.
#[derive(Debug)]
pub enum WorkerMessage {
    Event(Event),
    /// The worker's stdout closed; the process has exited or is exiting.
    Exited(String),
}

/// How to start a worker: a program and its arguments (normally the
/// `locara` binary itself with the hidden `engine` subcommand).
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Pass llama.cpp's own log through to our stderr (for debugging).
    pub engine_log: bool,
}

impl WorkerCommand {
    /// The running executable with the `engine` subcommand: the usual way.
    pub fn current_exe() -> std::io::Result<Self> {
        Ok(Self {
            program: std::env::current_exe()?,
            args: vec!["engine".into()],
            engine_log: false,
        })
    }
}

/// A running engine worker. Dropping it closes the worker's stdin, which
/// makes the worker exit, and reaps the process.
pub struct Worker {
    child: Arc<Mutex<Child>>,
    pid: u32,
    stdin: Mutex<Option<BufWriter<ChildStdin>>>,
    /// Behind a lock so that a `Worker` can be shared between a thread that
    /// reads its events and others that send it requests.
    events: Mutex<Receiver<WorkerMessage>>,
    engine: String,
}

impl Worker {
    /// Starts a worker and waits for its `Ready`.
    pub fn spawn(cmd: &WorkerCommand) -> Result<Self, EngineError> {
        Self::spawn_within(cmd, READY_TIMEOUT)
    }

    /// [`Worker::spawn`], waiting at most `ready_timeout` for `Ready`.
    fn spawn_within(cmd: &WorkerCommand, ready_timeout: Duration) -> Result<Self, EngineError> {
        let mut command = Command::new(&cmd.program);
        command
            .args(&cmd.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if cmd.engine_log {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if cmd.engine_log {
            command.env("LOCARA_ENGINE_LOG", "1");
        }
        #[cfg(unix)]
        {
            // A process group of its own: Ctrl-C in the terminal reaches the
            // parent, which decides what to cancel; the worker never sees it.
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let mut child = command.spawn().map_err(|source| EngineError::Spawn {
            program: cmd.program.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().map(BufWriter::new);
        let stdout = child.stdout.take().expect("stdout is piped");
        let child = Arc::new(Mutex::new(child));

        let (tx, events) = mpsc::channel();
        let reaper = Arc::clone(&child);
        thread::Builder::new()
            .name(format!("worker-{pid}-reader"))
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                loop {
                    match read_frame::<_, Event>(&mut reader) {
                        Ok(ev) => {
                            if tx.send(WorkerMessage::Event(ev)).is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            let status = match err {
                                FrameError::Closed => exit_status(&reaper),
                                other => format!("protocol error: {other}"),
                            };
                            let _ = tx.send(WorkerMessage::Exited(status));
                            return;
                        }
                    }
                }
            })
            .map_err(|source| EngineError::Spawn {
                program: cmd.program.clone(),
                source,
            })?;

        let mut worker = Worker {
            child,
            pid,
            stdin: Mutex::new(stdin),
            events: Mutex::new(events),
            engine: String::new(),
        };
        match worker.recv_timeout(ready_timeout)? {
            Some(Event::Ready { protocol, engine }) => {
                if protocol != PROTOCOL_VERSION {
                    return Err(EngineError::ProtocolMismatch {
                        found: protocol,
                        expected: PROTOCOL_VERSION,
                    });
                }
                worker.engine = engine;
                Ok(worker)
            }
            Some(other) => Err(EngineError::Unexpected(format!("{other:?}"))),
            None => Err(EngineError::Timeout(ready_timeout)),
        }
    }

    /// The worker's process id (for footprint measurement).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The llama.cpp build the worker reported.
    pub fn engine(&self) -> &str {
        &self.engine
    }

    /// Sends one request.
    pub fn send(&self, req: &Request) -> Result<(), EngineError> {
        let mut guard = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(stdin) = guard.as_mut() else {
            return Err(self.died());
        };
        write_frame(stdin, req).map_err(|e| match e {
            FrameError::Io(_) | FrameError::Closed => self.died(),
            other => EngineError::Channel(other),
        })
    }

    /// Waits for the next event. The worker's end is an error.
    pub fn recv(&self) -> Result<Event, EngineError> {
        match self.events.lock().unwrap_or_else(|p| p.into_inner()).recv() {
            Ok(WorkerMessage::Event(ev)) => Ok(ev),
            Ok(WorkerMessage::Exited(status)) => Err(EngineError::WorkerDied {
                pid: self.pid,
                status,
            }),
            Err(_) => Err(self.died()),
        }
    }

    /// Like [`Worker::recv`], but gives up after `timeout` with `Ok(None)`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Event>, EngineError> {
        match self
            .events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .recv_timeout(timeout)
        {
            Ok(WorkerMessage::Event(ev)) => Ok(Some(ev)),
            Ok(WorkerMessage::Exited(status)) => Err(EngineError::WorkerDied {
                pid: self.pid,
                status,
            }),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(self.died()),
        }
    }

    /// Loads the model and waits until it is ready.
    pub fn load(&self, req: LoadRequest) -> Result<LoadedInfo, EngineError> {
        self.send(&Request::Load(req))?;
        match self.recv()? {
            Event::Loaded(info) => Ok(info),
            Event::Error { kind, message, .. } => Err(EngineError::Worker { kind, message }),
            other => Err(EngineError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the worker to exit and waits up to `grace` for it, then kills it.
    pub fn shutdown(self, grace: Duration) {
        self.stop(grace);
    }

    /// Like [`Worker::shutdown`], for a worker shared between threads: asks
    /// it to exit, waits up to `grace`, then kills it. Requests sent after
    /// this fail with [`EngineError::WorkerDied`].
    pub fn stop(&self, grace: Duration) {
        let _ = self.send(&Request::Exit);
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        let deadline = Instant::now() + grace;
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    fn died(&self) -> EngineError {
        EngineError::WorkerDied {
            pid: self.pid,
            status: exit_status(&self.child),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin is the exit signal; then reap so no zombie is left.
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(child.try_wait(), Ok(None)) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if !matches!(child.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The worker's exit status, waiting briefly for the process to finish
/// exiting after its stdout closed.
fn exit_status(child: &Mutex<Child>) -> String {
    let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return describe(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
            Ok(None) => return "still running, channel closed".to_string(),
            Err(e) => return format!("status unknown: {e}"),
        }
    }
}

fn describe(status: ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                libc::SIGKILL => "SIGKILL",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGABRT => "SIGABRT (llama.cpp aborted)",
                libc::SIGTERM => "SIGTERM",
                libc::SIGBUS => "SIGBUS",
                _ => "a signal",
            };
            return format!("killed by {name} ({sig})");
        }
    }
    status.to_string()
}

/// The parent's side against small shell scripts that speak (or break) the
/// protocol: `printf` writes frames exactly as a worker does, `head -c`
/// swallows a request of known length, and `exec cat` stands for a worker
/// that runs until its stdin closes.
#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> WorkerCommand {
        WorkerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
            engine_log: false,
        }
    }

    fn frames<T: serde::Serialize>(messages: &[T]) -> Vec<u8> {
        let mut bytes = Vec::new();
        for m in messages {
            write_frame(&mut bytes, m).unwrap();
        }
        bytes
    }

    /// A `printf` that writes these bytes, each as an octal escape (so no
    /// byte of a frame is taken for a format directive).
    fn printf(bytes: &[u8]) -> String {
        let escaped: String = bytes.iter().map(|b| format!("\\{b:03o}")).collect();
        format!("printf '{escaped}'")
    }

    fn ready() -> Event {
        Event::Ready {
            protocol: PROTOCOL_VERSION,
            engine: "sh".into(),
        }
    }

    fn load_request() -> LoadRequest {
        LoadRequest {
            context: Some(2048),
            ..LoadRequest::new("model.gguf".into(), 1)
        }
    }

    fn loaded_info() -> LoadedInfo {
        LoadedInfo {
            context: 2048,
            trained_context: 8192,
            parallel: 1,
            kv_type: Default::default(),
            flash_attention: true,
            threads: 1,
            gpu_layers: 0,
            layers: 30,
            embedding: 576,
            heads: 9,
            kv_heads: 3,
            weights_bytes: 1 << 20,
            parameters: 1 << 20,
            has_chat_template: true,
            chat_template: "chatml".into(),
            load_ms: 1.0,
            pool_cells: 2048,
            pool_max_cells: 2048,
            sliding_window: None,
            context_shift: true,
            draft: None,
        }
    }

    /// A worker that says `Ready`, reads one `Load` request and answers it
    /// with `answer`, then runs until its stdin closes.
    fn answers_load(answer: Event) -> WorkerCommand {
        let request = frames(&[Request::Load(load_request())]);
        sh(&format!(
            "{}; head -c {} >/dev/null; {}; exec cat >/dev/null",
            printf(&frames(&[ready()])),
            request.len(),
            printf(&frames(&[answer])),
        ))
    }

    /// The status of the worker's death that `result` reports.
    #[track_caller]
    fn died<T>(result: Result<T, EngineError>) -> String {
        match result {
            Err(EngineError::WorkerDied { status, .. }) => status,
            Err(other) => panic!("expected the worker's death, got {other:?}"),
            Ok(_) => panic!("expected the worker's death, got an answer"),
        }
    }

    #[test]
    fn a_worker_that_says_ready_loads_and_exits_when_stopped() {
        let worker = Worker::spawn(&answers_load(Event::Loaded(loaded_info()))).unwrap();
        assert_eq!(worker.engine(), "sh");
        assert_eq!(worker.load(load_request()).unwrap(), loaded_info());
        // `Exit` and the closed stdin end it well within the grace: the
        // status is its own exit, not a kill.
        worker.stop(Duration::from_secs(30));
        assert_eq!(died(worker.recv()), "exit status: 0");
        // Its end, once reported, stays the answer.
        assert_eq!(died(worker.recv()), "exit status: 0");
        assert_eq!(died(worker.send(&Request::Stats)), "exit status: 0");
    }

    #[test]
    fn a_failed_load_is_the_workers_kind_and_message() {
        let worker = Worker::spawn(&answers_load(Event::Error {
            id: None,
            kind: ErrorKind::InvalidModel,
            message: "not a GGUF file".into(),
        }))
        .unwrap();
        let e = worker.load(load_request()).unwrap_err();
        assert_eq!(e.kind(), "invalid_model");
        assert_eq!(e.to_string(), "not a GGUF file");
    }

    #[test]
    fn a_load_answered_with_another_event_is_a_protocol_error() {
        let worker = Worker::spawn(&answers_load(Event::Stats(Default::default()))).unwrap();
        let e = worker.load(load_request()).unwrap_err();
        assert!(
            matches!(e, EngineError::Unexpected(ref m) if m.starts_with("Stats")),
            "{e:?}"
        );
        assert_eq!(e.kind(), "protocol");
    }

    #[test]
    fn a_worker_of_another_protocol_version_is_refused() {
        let other = Event::Ready {
            protocol: PROTOCOL_VERSION + 1,
            engine: "sh".into(),
        };
        let script = format!("{}; exec cat >/dev/null", printf(&frames(&[other])));
        let e = Worker::spawn(&sh(&script)).err().unwrap();
        assert!(
            matches!(e, EngineError::ProtocolMismatch { found, expected }
                if found == PROTOCOL_VERSION + 1 && expected == PROTOCOL_VERSION),
            "{e:?}"
        );
        assert_eq!(e.kind(), "protocol_mismatch");
    }

    #[test]
    fn a_worker_whose_first_frame_is_not_ready_is_refused() {
        let script = format!(
            "{}; exec cat >/dev/null",
            printf(&frames(&[Event::Loaded(loaded_info())]))
        );
        let e = Worker::spawn(&sh(&script)).err().unwrap();
        assert!(
            matches!(e, EngineError::Unexpected(ref m) if m.starts_with("Loaded")),
            "{e:?}"
        );
    }

    #[test]
    fn a_worker_that_exits_before_ready_reports_its_exit_status() {
        assert_eq!(died(Worker::spawn(&sh("exit 3"))), "exit status: 3");
        // A frame cut short by the exit is the same end, not garbage.
        let cut = frames(&[ready()]);
        let script = format!("{}; exit 4", printf(&cut[..cut.len() - 1]));
        assert_eq!(died(Worker::spawn(&sh(&script))), "exit status: 4");
        assert_eq!(
            died(Worker::spawn(&sh("kill -KILL $$"))),
            "killed by SIGKILL (9)"
        );
    }

    #[test]
    fn a_worker_that_writes_garbage_is_a_protocol_error() {
        // "not " read as a little-endian length is about 519 MiB: refused
        // before anything is allocated.
        let status = died(Worker::spawn(&sh(
            "printf 'not a frame'; exec cat >/dev/null",
        )));
        assert!(
            status.starts_with("protocol error: frame of 544501614 bytes exceeds"),
            "{status}"
        );
        // A frame of the right length that is not JSON.
        let mut bad = 5u32.to_le_bytes().to_vec();
        bad.extend_from_slice(b"hello");
        let script = format!("{}; exec cat >/dev/null", printf(&bad));
        let status = died(Worker::spawn(&sh(&script)));
        assert!(
            status.starts_with("protocol error: malformed frame"),
            "{status}"
        );
    }

    #[test]
    fn a_worker_that_never_says_ready_times_out() {
        let e = Worker::spawn_within(&sh("exec cat >/dev/null"), Duration::from_millis(100))
            .err()
            .unwrap();
        assert!(
            matches!(e, EngineError::Timeout(t) if t == Duration::from_millis(100)),
            "{e:?}"
        );
        assert_eq!(e.kind(), "worker_timeout");
    }

    #[test]
    fn a_program_that_cannot_start_is_a_spawn_error() {
        let cmd = WorkerCommand {
            program: "/nonexistent/locara".into(),
            args: vec!["engine".into()],
            engine_log: false,
        };
        let e = Worker::spawn(&cmd).err().unwrap();
        assert!(
            matches!(e, EngineError::Spawn { ref program, .. } if program == &cmd.program),
            "{e:?}"
        );
        assert_eq!(e.kind(), "worker_spawn");
    }

    #[test]
    fn events_before_a_death_arrive_then_the_death_names_the_signal() {
        let token = Event::Token {
            id: 1,
            text: "Once".into(),
        };
        let script = format!(
            "{}; kill -KILL $$",
            printf(&frames(&[ready(), token.clone()]))
        );
        let worker = Worker::spawn(&sh(&script)).unwrap();
        assert_eq!(worker.recv().unwrap(), token);
        assert_eq!(died(worker.recv()), "killed by SIGKILL (9)");
        assert_eq!(
            died(worker.send(&Request::Cancel { id: 1 })),
            "killed by SIGKILL (9)"
        );
    }

    #[test]
    fn stop_kills_a_worker_that_outlives_the_grace() {
        // `sleep` neither reads `Exit` nor notices its stdin closing.
        let script = format!("{}; exec sleep 60", printf(&frames(&[ready()])));
        let worker = Worker::spawn(&sh(&script)).unwrap();
        let started = Instant::now();
        worker.stop(Duration::from_millis(50));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "waited for sleep"
        );
        assert_eq!(died(worker.recv()), "killed by SIGKILL (9)");
    }

    #[cfg(unix)]
    #[test]
    fn exit_statuses_name_their_signal() {
        use std::os::unix::process::ExitStatusExt;
        // A wait status: the low 7 bits are the signal, bits 8.. the code.
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGABRT)),
            "killed by SIGABRT (llama.cpp aborted) (6)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGSEGV)),
            "killed by SIGSEGV (11)"
        );
        assert_eq!(
            describe(ExitStatus::from_raw(libc::SIGUSR1)),
            format!("killed by a signal ({})", libc::SIGUSR1)
        );
        assert_eq!(describe(ExitStatus::from_raw(2 << 8)), "exit status: 2");
    }
}
