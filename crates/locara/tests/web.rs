//! The daemon's web page in a real browser: headless Chromium, driven over
//! the DevTools protocol on a pipe (`--remote-debugging-pipe`: JSON
//! messages ending in a NUL byte on fds 3 and 4, no WebSocket needed),
//! against a daemon holding a real model. The page logs in with a
//! `locara open` link, shows the model and charts with points, follows a
//! simulated warn live (no reload), and is screenshotted. Its headers and
//! login rules are checked over plain HTTP: a foreign `Origin` is refused,
//! the cookie is HttpOnly and SameSite=Strict, a link works once.

mod common;

use common::daemon::Daemon;
use common::SMOLLM2;
use serde_json::{json, Value};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A headless Chromium and the DevTools session of its one page.
struct Browser {
    child: Child,
    to: File,
    from: BufReader<File>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    (fds[0], fds[1])
}

impl Browser {
    fn start() -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (cmd_read, cmd_write) = pipe();
        let (resp_read, resp_write) = pipe();
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless",
                // Tests run as root in CI containers, where the sandbox
                // cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                "--window-size=1280,1100",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls (dup2) between fork and exec;
        // the descriptors are open in the parent.
        unsafe {
            command.pre_exec(move || {
                // Copies above 4 first: either end may already be fd 3 or
                // 4 (dup2 onto itself would keep close-on-exec), or the
                // other's target.
                let high_read = libc::fcntl(cmd_read, libc::F_DUPFD, 10);
                let high_write = libc::fcntl(resp_write, libc::F_DUPFD, 10);
                if high_read < 0
                    || high_write < 0
                    || libc::dup2(high_read, 3) < 0
                    || libc::dup2(high_write, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .expect("starting chromium (scripts/test.sh installs it)");
        // SAFETY: the parent's ends, owned by nothing else from here on; the
        // child's ends are closed here (it has its copies on fds 3 and 4).
        let (to, from) = unsafe {
            libc::close(cmd_read);
            libc::close(resp_write);
            (File::from_raw_fd(cmd_write), File::from_raw_fd(resp_read))
        };
        let mut b = Browser {
            child,
            to,
            from: BufReader::new(from),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let targets = b.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["targetId"]
            .clone();
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a command (to the page's session once attached) and returns
    /// its result, skipping the events that come between.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).unwrap();
        loop {
            let mut buf = Vec::new();
            let n = self.from.read_until(0, &mut buf).unwrap();
            assert!(n > 0, "chromium closed the DevTools pipe");
            buf.pop();
            let answer: Value = serde_json::from_slice(&buf).unwrap();
            if answer["id"] == id {
                assert!(
                    answer.get("error").is_none(),
                    "{method}: {}",
                    answer["error"]
                );
                return answer["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page.
    fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }

    /// Waits up to 30 s for `expression` to be true in the page.
    fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.eval(expression) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "waited 30 s for {what}; the page says: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-time login link from `locara open`.
fn login_link(daemon: &Daemon) -> String {
    let out = daemon
        .cli()
        .args(["open", "--no-browser"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn no_redirects() -> ureq::Agent {
    ureq::AgentBuilder::new().redirects(0).build()
}

fn status_code(r: Result<ureq::Response, ureq::Error>) -> u16 {
    match r {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_page_logs_in_once_and_refuses_other_origins() {
    let daemon = Daemon::start(&[]);
    let http = no_redirects();
    let page = http.get(&format!("{}/", daemon.url)).call().unwrap();
    let csp = page.header("content-security-policy").unwrap().to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert!(page
        .into_string()
        .unwrap()
        .contains("<script src=\"/app.js\""));

    // Another site's page may not load it, nor call the API, even with the
    // admin token.
    let foreign = http
        .get(&format!("{}/", daemon.url))
        .set("Origin", "http://evil.example")
        .call();
    assert_eq!(status_code(foreign), 403);
    let foreign = http
        .get(&format!("{}/locara/v1/history", daemon.url))
        .set("Origin", "http://evil.example")
        .set("Authorization", &daemon.bearer())
        .call();
    assert_eq!(status_code(foreign), 403);
    // The page's own origin may.
    let own = http
        .get(&format!("{}/locara/v1/history", daemon.url))
        .set("Origin", &daemon.url)
        .set("Authorization", &daemon.bearer())
        .call();
    assert_eq!(status_code(own), 200);
    // Without a login the API says so.
    let anonymous = http.get(&format!("{}/locara/v1/status", daemon.url)).call();
    assert_eq!(status_code(anonymous), 401);

    let link = login_link(&daemon);
    assert!(
        link.starts_with(&format!("{}/login?code=lcl_", daemon.url)),
        "{link}"
    );
    let login = http.get(&link).call().unwrap();
    assert_eq!(login.status(), 303);
    assert_eq!(login.header("location"), Some("/"));
    let cookie = login.header("set-cookie").unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_string();
    assert!(session.starts_with("locara_session=lcs_"), "{session}");
    let status = http
        .get(&format!("{}/locara/v1/status", daemon.url))
        .set("Cookie", &session)
        .call();
    assert_eq!(status_code(status), 200);
    let foreign = http
        .get(&format!("{}/locara/v1/status", daemon.url))
        .set("Cookie", &session)
        .set("Origin", "http://evil.example")
        .call();
    assert_eq!(status_code(foreign), 403);
    // The link worked once.
    assert_eq!(status_code(http.get(&link).call()), 403);
}

#[test]
fn the_page_shows_the_model_charts_and_a_warn_live() {
    let daemon = Daemon::start(&[]);
    let load = daemon.cli().args(["load", SMOLLM2]).output().unwrap();
    assert!(load.status.success(), "{load:?}");
    // A few samples with the model's measured footprint for the chart.
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon
        .model_status(SMOLLM2)
        .is_none_or(|m| m["footprint"].is_null())
    {
        assert!(Instant::now() < deadline, "no footprint measured");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));

    let mut browser = Browser::start();
    browser.call("Page.navigate", json!({"url": login_link(&daemon)}));
    browser.wait_for(
        "the model's row",
        &format!(
            "!!document.querySelector('#models tr[data-model=\"{SMOLLM2}\"]') \
             && document.querySelector('#models tr[data-model=\"{SMOLLM2}\"]').innerText.includes('MiB')"
        ),
    );
    browser.wait_for(
        "a memory chart with points",
        "Number((document.querySelector('#memory-chart polyline.models') || {dataset: {}}).dataset.points) >= 3",
    );
    browser.wait_for(
        "the live event stream",
        "document.getElementById('conn').textContent === 'live'",
    );
    assert_eq!(
        browser.eval("document.getElementById('level').textContent"),
        json!("normal")
    );
    assert_eq!(browser.eval("location.pathname"), json!("/"));
    // The session cookie is not the script's to read.
    assert_eq!(browser.eval("document.cookie"), json!(""));

    // A simulated warn reaches the open page through the event stream.
    browser.eval("window.locaraTestMark = 42");
    let warn = daemon.post(
        "/locara/v1/pressure/simulate",
        &json!({"level": "warn", "for": "60s"}),
    );
    assert!(warn.is_ok());
    browser.wait_for(
        "the warn level",
        "document.getElementById('level').textContent.startsWith('warn')",
    );
    browser.wait_for(
        "the warn event in the list",
        "[...document.querySelectorAll('#events li.ev-level')].some(li => li.textContent.includes('warn'))",
    );
    browser.wait_for(
        "a warn sample in the pressure chart",
        "[...document.querySelectorAll('#pressure-chart rect.warn')].some(r => Number(r.getAttribute('x')) < 999)",
    );
    // The same document: nothing reloaded it.
    assert_eq!(browser.eval("window.locaraTestMark"), json!(42));

    // The picture, warn included.
    let shot = browser.call("Page.captureScreenshot", json!({"format": "png"}));
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    // `LOCARA_TEST_SCREENSHOTS=docs` keeps it (the README's picture).
    if let Some(dir) = std::env::var_os("LOCARA_TEST_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join("web.png"), &png).unwrap();
    }
}
