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
        match worker.recv_timeout(READY_TIMEOUT)? {
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
            None => Err(EngineError::Timeout(READY_TIMEOUT)),
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
