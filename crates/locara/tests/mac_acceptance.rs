//! The macOS acceptance script (`scripts/mac-acceptance.sh`) runs only on a
//! Mac, but its parsers are plain shell: these tests run them here on
//! recorded samples, check that the `locara ps --json` samples still match
//! what the daemon serializes, and hold every script to shellcheck.

use locara_daemon::runtime::Status;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

#[test]
fn parsers_read_the_recorded_samples() {
    let root = repo_root();
    let out = Command::new("bash")
        .arg("scripts/tests/mac-parse.test.sh")
        .current_dir(&root)
        .output()
        .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/tests/mac-parse.test.sh failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // A script that stopped early would also exit 0: it must say how many
    // checks it ran, and that none failed.
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("mac-parse: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}\n{stderr}"));
    let (passed, failed) = summary
        .split_once(" passed, ")
        .and_then(|(p, rest)| Some((p.parse::<u32>().ok()?, rest.strip_suffix(" failed")?)))
        .unwrap_or_else(|| panic!("unexpected summary {summary:?}"));
    assert_eq!(failed, "0", "{stdout}");
    assert!(passed >= 30, "only {passed} checks ran:\n{stdout}");
}

/// The samples stand in for what a Mac's daemon prints; if the status
/// struct gains, loses or renames a field, the samples (and the script's
/// reading of them) must follow.
#[test]
fn ps_json_samples_match_the_status_struct() {
    let dir = repo_root().join("scripts/tests/samples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the samples directory") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(name.starts_with("ps-json") && name.ends_with(".json")) {
            continue;
        }
        seen += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let sample: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        let status: Status = serde_json::from_value(sample.clone())
            .unwrap_or_else(|e| panic!("{name} does not read as the daemon's Status: {e}"));
        let again = serde_json::to_value(&status).unwrap();
        assert_eq!(
            again,
            sample,
            "{name} differs from what the daemon would serialize for the same status;\n\
             the daemon would print:\n{}",
            serde_json::to_string_pretty(&again).unwrap()
        );
    }
    assert!(
        seen >= 2,
        "expected at least two ps-json samples in {}",
        dir.display()
    );
}

#[test]
fn scripts_pass_shellcheck() {
    let root = repo_root();
    if Command::new("shellcheck")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "skipping shellcheck: it is not on PATH (Debian: apt-get install shellcheck); \
             the parser tests above still ran"
        );
        return;
    }
    let mut files = Vec::new();
    for dir in ["scripts", "scripts/lib", "scripts/tests"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                files.push(path.strip_prefix(&root).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    assert!(
        files.iter().any(|f| f.ends_with("mac-acceptance.sh")),
        "scripts/mac-acceptance.sh not found among {files:?}"
    );
    // -x follows `source`; the scripts name their sources relative to the
    // repository root, where this runs.
    let out = Command::new("shellcheck")
        .arg("-x")
        .args(&files)
        .current_dir(&root)
        .output()
        .expect("running shellcheck");
    assert!(
        out.status.success(),
        "shellcheck found problems in {files:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
