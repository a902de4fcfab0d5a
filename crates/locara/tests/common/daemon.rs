//! A `locara serve` of a test's own, on an ephemeral port, and what tests
//! ask it: chats, status, events.

use super::{home_with_models, locara};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::time::Duration;

/// A daemon on a port of its own, with a data directory whose models are
/// the test cache's.
pub struct Daemon {
    pub child: Child,
    pub url: String,
    /// The admin token the daemon made in its data directory.
    pub token: String,
    pub home: tempfile::TempDir,
}

impl Daemon {
    pub fn start(args: &[&str]) -> Daemon {
        Daemon::start_with_env(args, &[])
    }

    /// [`Daemon::start`] with more environment variables for the daemon
    /// (`LOCARA_CATALOG`, say).
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::path::Path)]) -> Daemon {
        let home = home_with_models();
        let mut child = locara()
            .env("LOCARA_HOME", home.path())
            .envs(env.iter().copied())
            .args(["serve", "--port", "0", "--threads", "1"])
            .args(args)
            .stdout(Stdio::piped())
            // The daemon's log, with LOCARA_TEST_DAEMON_LOG set.
            .stderr(if std::env::var_os("LOCARA_TEST_DAEMON_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("starting locara serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let token = std::fs::read_to_string(home.path().join("admin.token"))
            .expect("the daemon made no admin token")
            .trim()
            .to_string();
        Daemon {
            child,
            url,
            token,
            home,
        }
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    pub fn get(&self, path: &str) -> ureq::Response {
        ureq::get(&format!("{}{path}", self.url))
            .set("Authorization", &self.bearer())
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {}", describe(e)))
    }

    /// `locara` with this daemon's address and admin token.
    pub fn cli(&self) -> std::process::Command {
        let mut cmd = locara();
        cmd.env("LOCARA_URL", &self.url)
            .env("LOCARA_TOKEN", &self.token);
        cmd
    }

    // ureq's own error type, as tests match on its status.
    #[allow(clippy::result_large_err)]
    pub fn post(&self, path: &str, body: &Value) -> Result<ureq::Response, ureq::Error> {
        ureq::post(&format!("{}{path}", self.url))
            .set("Authorization", &self.bearer())
            .timeout(Duration::from_secs(300))
            .send_json(body.clone())
    }

    pub fn chat(&self, body: Value) -> Value {
        self.post("/v1/chat/completions", &body)
            .unwrap_or_else(|e| panic!("chat failed: {}", describe(e)))
            .into_json()
            .unwrap()
    }

    pub fn status(&self) -> Value {
        self.get("/locara/v1/status").into_json().unwrap()
    }

    pub fn model_status(&self, name: &str) -> Option<Value> {
        self.status()["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").into_string().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => format!("{code}: {}", r.into_string().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// A greedy chat request.
pub fn chat_body(model: &str, prompt: &str, max_tokens: u32, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Reads an SSE response: each `data:` payload.
pub struct Sse(pub BufReader<Box<dyn Read + Send + Sync>>);

impl Sse {
    pub fn new(r: ureq::Response) -> Sse {
        assert_eq!(r.content_type(), "text/event-stream");
        Sse(BufReader::new(r.into_reader()))
    }

    pub fn next_data(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.0.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some(d) = line.trim_end().strip_prefix("data: ") {
                return Some(d.to_string());
            }
        }
    }

    /// Every payload to the end: the text, the finish reason, the usage and
    /// whether `[DONE]` came.
    pub fn collect(mut self) -> (String, Option<String>, Option<Value>, bool) {
        let (mut text, mut finish, mut usage, mut done) = (String::new(), None, None, false);
        while let Some(d) = self.next_data() {
            if d == "[DONE]" {
                done = true;
                break;
            }
            let v: Value = serde_json::from_str(&d).unwrap();
            assert!(v.get("error").is_none(), "error event: {v}");
            assert_eq!(v["object"], "chat.completion.chunk");
            if let Some(c) = v["choices"].get(0) {
                text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = c["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            if !v["usage"].is_null() {
                usage = Some(v["usage"].clone());
            }
        }
        (text, finish, usage, done)
    }
}

/// Reads `GET /locara/v1/events` on a thread; the events so far.
pub fn event_log(d: &Daemon) -> std::sync::Arc<std::sync::Mutex<Vec<Value>>> {
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = d.get("/locara/v1/events");
    let mut sse = Sse::new(r);
    let sink = std::sync::Arc::clone(&log);
    std::thread::spawn(move || {
        while let Some(d) = sse.next_data() {
            sink.lock().unwrap().push(serde_json::from_str(&d).unwrap());
        }
    });
    log
}
