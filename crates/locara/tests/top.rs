//! `locara top` end to end: the real binary in a detached tmux session (a
//! real terminal, as over SSH) against a daemon holding a real model; the
//! unload key reaches the daemon, and `q` gives the terminal back.

mod common;

use common::daemon::Daemon;
use common::SMOLLM2;
use std::process::Command;
use std::time::{Duration, Instant};

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "tmux {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The pane's text once `until` holds, or a failure after 30 s showing it.
fn wait_pane(session: &str, what: &str, until: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pane = tmux(&["capture-pane", "-p", "-t", session]);
        if until(&pane) {
            return pane;
        }
        assert!(Instant::now() < deadline, "waited 30 s for {what}:\n{pane}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the tmux session however the test ends.
struct Session(String);

impl Drop for Session {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// The model table's row of SmolLM2, loaded, with its footprint (event
/// lines start with their time).
fn model_row(pane: &str) -> bool {
    pane.lines().any(|l| {
        l.trim_start_matches('│').starts_with(SMOLLM2) && l.contains("loaded") && l.contains("MiB")
    })
}

#[test]
fn top_shows_a_loaded_model_and_its_unload_key_unloads_it() {
    let daemon = Daemon::start(&[]);
    let load = daemon.cli().args(["load", SMOLLM2]).output().unwrap();
    assert!(load.status.success(), "{load:?}");

    let session = Session(format!("locara-top-{}", std::process::id()));
    let top = format!(
        "env LOCARA_URL={} LOCARA_TOKEN={} {} top; echo \"top exited $?\"; sleep 60",
        daemon.url,
        daemon.token,
        env!("CARGO_BIN_EXE_locara")
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "110",
        "-y",
        "32",
        &top,
    ]);
    let pane = wait_pane(&session.0, "the model's row with its footprint", model_row);
    assert!(pane.contains("pressure normal"), "{pane}");
    assert!(pane.contains("Memory"), "{pane}");
    // `LOCARA_TEST_SCREENSHOTS=DIR` keeps the screen with its colours
    // (`top.ansi`; scripts/screenshots.sh makes the README's picture), after
    // a few seconds of timeline.
    if let Some(dir) = std::env::var_os("LOCARA_TEST_SCREENSHOTS") {
        wait_pane(&session.0, "a few samples", |p| {
            p.lines().any(|l| l.matches('▁').count() >= 8)
        });
        let ansi = tmux(&["capture-pane", "-p", "-e", "-t", &session.0]);
        std::fs::write(std::path::Path::new(&dir).join("top.ansi"), ansi).unwrap();
    }

    // A smaller terminal redraws at its size.
    tmux(&["resize-window", "-t", &session.0, "-x", "70", "-y", "20"]);
    wait_pane(&session.0, "the view at 70 columns", |p| {
        model_row(p) && p.lines().all(|l| l.chars().count() <= 70)
    });

    // `u` on the only (selected) row.
    tmux(&["send-keys", "-t", &session.0, "u"]);
    let pane = wait_pane(&session.0, "the row to go", |p| {
        !model_row(p) && p.contains("none loaded")
    });
    assert!(pane.contains("unloaded"), "{pane}");
    assert!(
        daemon.model_status(SMOLLM2).is_none(),
        "the daemon still holds it"
    );

    tmux(&["send-keys", "-t", &session.0, "q"]);
    let pane = wait_pane(&session.0, "top to exit", |p| p.contains("top exited"));
    assert!(pane.contains("top exited 0"), "{pane}");
    // The main screen is back: the view is gone from it.
    assert!(!pane.contains("Models"), "{pane}");
}
