//! A fake Hugging Face Hub on a loopback port, for tests of pulls: the tree
//! listing (`/api/models/ORG/REPO/tree/REV`, LFS sha256s), `resolve`
//! answered with a redirect to a CDN on another host name (`localhost`
//! instead of `127.0.0.1`, so the token must not follow), `Range` requests,
//! gated repositories (401 without a token, 403 with a wrong one), and
//! faults a test schedules per object (a connection cut after N bytes, a
//! status). One thread per connection, `Connection: close`.

use crate::store::hub::HubConfig;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The token a gated repository of the fake Hub accepts.
pub const TOKEN: &str = "hf_test_token_never_printed";

/// What the server does with the next CDN request of an object.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Sends the headers for the whole body, then this many bytes, then
    /// closes the connection.
    CutAfter(u64),
    /// Answers this status.
    Status(u16),
}

struct HubFileSpec {
    path: String,
    bytes: Arc<Vec<u8>>,
    /// What the listing says the sha256 is, when not the bytes' own.
    listed_sha256: Option<String>,
}

struct RepoSpec {
    files: Vec<HubFileSpec>,
    gated: bool,
}

/// One request the fake Hub answered.
#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    /// The `Host` header.
    pub host: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, RepoSpec>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<Logged>,
}

/// The fake Hub; it serves until the process ends.
pub struct FakeHub {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeHub {
    /// Starts serving on `127.0.0.1` and an ephemeral port.
    pub fn start() -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let state = shared.clone();
                std::thread::spawn(move || serve(stream, port, &state));
            }
        });
        FakeHub { port, state }
    }

    /// `http://127.0.0.1:PORT`, what `HF_ENDPOINT` is set to.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A client configuration for this Hub with short retry delays.
    pub fn config(&self) -> HubConfig {
        let mut c = HubConfig::new(&self.endpoint());
        c.retry_delay = Duration::from_millis(10);
        c.read_timeout = Duration::from_secs(20);
        c
    }

    /// Publishes `ORG/REPO` with `files` (path, bytes); a gated one wants
    /// [`TOKEN`].
    pub fn add_repo(&self, name: &str, gated: bool, files: Vec<(&str, Arc<Vec<u8>>)>) {
        let files = files
            .into_iter()
            .map(|(path, bytes)| HubFileSpec {
                path: path.to_string(),
                bytes,
                listed_sha256: None,
            })
            .collect();
        self.state
            .lock()
            .unwrap()
            .repos
            .insert(name.to_string(), RepoSpec { files, gated });
    }

    /// The next CDN requests of the object with this sha256 meet `faults`,
    /// one each, in order.
    pub fn fault(&self, sha: &str, faults: &[Fault]) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(sha.to_string(), faults.iter().copied().collect());
    }

    /// Makes the listing publish `sha256` for `path` of `repo` instead of
    /// the bytes' own.
    pub fn publish_sha256(&self, repo: &str, path: &str, sha256: &str) {
        let mut state = self.state.lock().unwrap();
        let repo = state.repos.get_mut(repo).expect("a published repository");
        let file = repo
            .files
            .iter_mut()
            .find(|f| f.path == path)
            .expect("a published file");
        file.listed_sha256 = Some(sha256.to_string());
    }

    /// The requests the CDN host answered, in order.
    pub fn cdn_log(&self) -> Vec<Logged> {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|l| l.path.starts_with("/cdn/"))
            .cloned()
            .collect()
    }

    /// Every request answered, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }
}

/// Lowercase hex sha256.
pub fn sha_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

fn serve(mut stream: TcpStream, port: u16, state: &Mutex<State>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    let range = headers.get("range").cloned();
    let authorization = headers.get("authorization").cloned();
    let host = headers.get("host").cloned().unwrap_or_default();
    let mut st = state.lock().unwrap();
    st.log.push(Logged {
        path: path.clone(),
        host,
        range: range.clone(),
        authorization: authorization.clone(),
    });
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "models", org, repo, "tree", _rev] => {
            let Some(spec) = st.repos.get(&format!("{org}/{repo}")) else {
                let h = [("X-Error-Code", "RepoNotFound".to_string())];
                return respond(
                    &mut stream,
                    404,
                    &h,
                    b"{\"error\":\"Repository not found\"}",
                );
            };
            let listing: Vec<serde_json::Value> = spec
                .files
                .iter()
                .map(|f| {
                    let sha = f.listed_sha256.clone().unwrap_or_else(|| sha_hex(&f.bytes));
                    if f.path.ends_with(".gguf") {
                        serde_json::json!({"type": "file", "oid": "0000", "size": 135, "path": f.path,
                            "lfs": {"oid": sha, "size": f.bytes.len(), "pointerSize": 135}})
                    } else {
                        serde_json::json!({"type": "file", "oid": "0000", "size": f.bytes.len(), "path": f.path})
                    }
                })
                .collect();
            let body = serde_json::to_vec(&listing).unwrap();
            respond(
                &mut stream,
                200,
                &[("Content-Type", "application/json".into())],
                &body,
            );
        }
        [org, repo, "resolve", _rev, file @ ..] => {
            let Some(spec) = st.repos.get(&format!("{org}/{repo}")) else {
                return respond(&mut stream, 404, &[], b"");
            };
            if spec.gated {
                match authorization.as_deref() {
                    None => {
                        let h = [
                            ("X-Error-Code", "GatedRepo".to_string()),
                            (
                                "X-Error-Message",
                                "Access to this model is restricted".to_string(),
                            ),
                        ];
                        return respond(&mut stream, 401, &h, b"");
                    }
                    Some(a) if a != format!("Bearer {TOKEN}") => {
                        return respond(&mut stream, 403, &[], b"");
                    }
                    Some(_) => {}
                }
            }
            let file = file.join("/");
            let Some(f) = spec.files.iter().find(|f| f.path == file) else {
                let h = [("X-Error-Code", "EntryNotFound".to_string())];
                return respond(&mut stream, 404, &h, b"");
            };
            // The Hub sends LFS files to a CDN on another host, with a
            // signed query; `localhost` is another host than 127.0.0.1.
            let location = format!(
                "http://localhost:{port}/cdn/{}?signature=abc",
                sha_hex(&f.bytes)
            );
            respond(&mut stream, 302, &[("Location", location)], b"");
        }
        ["cdn", sha] => {
            let Some(bytes) = st
                .repos
                .values()
                .flat_map(|r| &r.files)
                .find(|f| sha_hex(&f.bytes) == *sha)
                .map(|f| f.bytes.clone())
            else {
                return respond(&mut stream, 404, &[], b"");
            };
            let fault = st.faults.get_mut(*sha).and_then(|q| q.pop_front());
            drop(st);
            let start = range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse::<usize>().ok())
                .unwrap_or(0);
            let len = bytes.len();
            let body = &bytes[start.min(len)..];
            let (status, mut headers) = if range.is_some() {
                let h = vec![(
                    "Content-Range",
                    format!("bytes {start}-{}/{len}", len.saturating_sub(1)),
                )];
                (206, h)
            } else {
                (200, Vec::new())
            };
            headers.push(("Content-Type", "application/octet-stream".to_string()));
            match fault {
                Some(Fault::Status(s)) => respond(&mut stream, s, &[], b""),
                Some(Fault::CutAfter(n)) => {
                    let mut head = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
                    for (k, v) in &headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body[..(n as usize).min(body.len())]);
                    let _ = stream.flush();
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                }
                None => respond(&mut stream, status, &headers, body),
            }
        }
        _ => respond(&mut stream, 404, &[], b""),
    }
}
