//! `locara service` and the log rotation of `locara serve`, run as a user
//! would, in a temporary home: HOME, XDG_CONFIG_HOME and LOCARA_HOME point
//! into a temporary directory, and LOCARA_SERVICE_NO_ACTIVATE keeps
//! systemctl and launchctl from ever running, so the machine's own service
//! manager and files are never touched.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_locara");

/// A home of its own: the user's home, the XDG config directory and the data
/// directory (with a space in its name, as macOS's is, so quoting is tested).
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn user(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data dir")
    }

    /// Where `install` must write the unit (agent).
    fn service_file(&self) -> PathBuf {
        if cfg!(target_os = "macos") {
            self.user()
                .join("Library/LaunchAgents/dev.locara.serve.plist")
        } else {
            self.config().join("systemd/user/locara.service")
        }
    }

    fn locara(&self) -> Command {
        let mut cmd = Command::new(EXE);
        cmd.env("HOME", self.user())
            .env("XDG_CONFIG_HOME", self.config())
            .env("LOCARA_HOME", self.data())
            .env("LOCARA_SERVICE_NO_ACTIVATE", "1")
            .env_remove("LOCARA_CATALOG");
        cmd
    }

    fn service(&self, args: &[&str]) -> String {
        let out = self.locara().arg("service").args(args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "locara service {args:?} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

#[test]
fn install_twice_then_uninstall_writes_replaces_and_removes_the_file_in_the_given_home() {
    let home = Home::new();
    let file = home.service_file();
    let log = home.data().join("serve.log");

    let status = home.service(&["status"]);
    assert!(status.contains("not installed"), "{status}");

    let out = home.service(&["install"]);
    assert!(out.contains("wrote"), "{out}");
    assert!(out.contains(&file.display().to_string()), "{out}");
    assert!(out.contains(&format!("{EXE} serve")), "{out}");
    assert!(out.contains("did not run"), "activation must be off: {out}");
    let first = fs::read_to_string(&file).expect("install wrote no file");
    assert!(first.contains(EXE), "{first}");
    assert!(first.contains(&log.display().to_string()), "{first}");
    // The service manager opens the log itself, and needs its directory.
    assert!(home.data().is_dir());

    let out = home.service(&["install"]);
    assert!(out.contains("replaced"), "{out}");
    assert_eq!(fs::read_to_string(&file).unwrap(), first);

    let status = home.service(&["status"]);
    assert!(status.contains("installed at"), "{status}");
    assert!(status.contains(&file.display().to_string()), "{status}");
    assert!(status.contains(&format!("{EXE} serve")), "{status}");
    assert!(status.contains("not checked"), "{status}");

    // An edited file is reported as out of date.
    fs::write(&file, first.replace(EXE, "/elsewhere/locara")).unwrap();
    let status = home.service(&["status"]);
    assert!(status.contains("differs"), "{status}");

    let out = home.service(&["uninstall"]);
    assert!(out.contains("removed"), "{out}");
    assert!(!file.exists());
    let out = home.service(&["uninstall"]);
    assert!(out.contains("nothing to remove"), "{out}");
    let status = home.service(&["status"]);
    assert!(status.contains("not installed"), "{status}");
}

#[cfg(target_os = "linux")]
#[test]
fn the_installed_unit_passes_systemd_analyze_verify() {
    if let Err(e) = Command::new("systemd-analyze").arg("--version").output() {
        eprintln!(
            "SKIPPED: systemd-analyze cannot be run ({e}); it comes with the Debian package \
             `systemd`"
        );
        return;
    }
    let home = Home::new();
    home.service(&["install"]);
    let unit = home.service_file();
    // `verify --user` builds a user manager in test mode, which wants a
    // runtime directory; the test's own keeps it off the real one.
    let runtime = home.dir.path().join("runtime");
    fs::create_dir(&runtime).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .arg(&unit)
        .env("HOME", home.user())
        .env("XDG_CONFIG_HOME", home.config())
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    // An unknown key or a bad value is only a warning to verify: any line
    // about the unit fails the test.
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("locara.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained:\n{text}\n--- the unit ---\n{}",
        fs::read_to_string(&unit).unwrap()
    );
}

/// Starts `locara serve` with its stdout and stderr appended to `log`, as
/// systemd's `StandardOutput=append:` and launchd's `StandardOutPath` do,
/// waits until it listens, and stops it.
fn serve_once(home: &Home, log: &Path) {
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap()
    };
    let mut child = home
        .locara()
        .args(["serve", "--port", "0", "--budget", "1GiB", "--threads", "1"])
        .stdin(Stdio::null())
        .stdout(open())
        .stderr(open())
        .spawn()
        .unwrap();
    // The log may hold earlier starts' lines: wait for one more.
    let starts = || {
        fs::read(log).map_or(0, |b| {
            b.windows(12).filter(|w| *w == b"listening on").count()
        })
    };
    let before = starts();
    let listening = common::eventually(Duration::from_secs(60), || {
        starts() > before || child.try_wait().unwrap().is_some()
    });
    let _ = child.kill();
    let exited: Output = child.wait_with_output().unwrap();
    assert!(
        listening && starts() > before,
        "the daemon did not start ({:?}); its log:\n{}",
        exited.status,
        String::from_utf8_lossy(&fs::read(log).unwrap_or_default())
    );
}

#[test]
fn serve_rotates_an_oversized_log_at_start_and_keeps_three_copies() {
    let home = Home::new();
    fs::create_dir_all(home.data()).unwrap();
    let log = home.data().join("serve.log");
    let numbered = |n: u32| home.data().join(format!("serve.log.{n}"));
    // Just over the 10 MiB cap.
    let old = vec![b'x'; (10 << 20) + 1];
    fs::write(&log, &old).unwrap();
    for n in 1..=3 {
        fs::write(numbered(n), format!("copy {n}\n")).unwrap();
    }

    serve_once(&home, &log);
    let now = fs::read_to_string(&log).unwrap();
    assert!(now.len() < 100_000, "the old text stayed in serve.log");
    assert!(now.contains("rotated"), "{now}");
    assert_eq!(fs::read(numbered(1)).unwrap(), old);
    assert_eq!(fs::read_to_string(numbered(2)).unwrap(), "copy 1\n");
    assert_eq!(fs::read_to_string(numbered(3)).unwrap(), "copy 2\n");
    assert!(!numbered(4).exists(), "more than three copies kept");

    // Under the cap: the next start appends.
    serve_once(&home, &log);
    let after = fs::read_to_string(&log).unwrap();
    assert!(after.starts_with(&now), "a small log was rotated:\n{after}");
    assert_eq!(after.matches("listening on").count(), 2, "{after}");
    assert_eq!(fs::read(numbered(1)).unwrap(), old);
}
