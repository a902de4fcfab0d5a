//! `locara manifest check` and `locara app ...`, run as a user would, each
//! test with a data directory of its own.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/app-manifest.example.toml"
);

/// `locara` on the data directory `home`.
fn locara_in(home: &Path) -> Command {
    let mut cmd = locara();
    cmd.env("LOCARA_HOME", home);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A data directory whose store holds the test model, linked from the test
/// cache (pulled once), and whose machine profile is the cache's.
fn home_with_smollm2() -> tempfile::TempDir {
    model(SMOLLM2);
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(home.path().join("models")).unwrap();
    std::os::unix::fs::symlink(
        test_home().join("models/smollm2+135m"),
        home.path().join("models/smollm2+135m"),
    )
    .unwrap();
    let _ = std::fs::copy(
        test_home().join("profile.json"),
        home.path().join("profile.json"),
    );
    home
}

fn notes_manifest(dir: &Path, extra: &str) -> std::path::PathBuf {
    let path = dir.join("notes.toml");
    std::fs::write(
        &path,
        format!(
            "id = \"com.example.notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n\
             [[models]]\nref = \"smollm2:135m\"\ncontext = 2048\n{extra}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn manifest_check_passes_the_documented_example_without_its_models() {
    let home = tempfile::tempdir().unwrap();
    let out = locara_in(home.path())
        .args(["manifest", "check", EXAMPLE])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, format!("{EXAMPLE}: valid (3 models)\n"));

    // With --fit the models must be in the store; this one's is empty.
    let out = locara_in(home.path())
        .args(["manifest", "check", "--fit", EXAMPLE])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("which are not in the store")
            && stderr.contains("`locara pull qwen2.5:7b-instruct`"),
        "{stderr}"
    );
}

#[test]
fn manifest_check_shows_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "id = \"Notes\"\nname = \"Notes\"\nversion = \"1.0.0\"\n[[models]]\nref = \"a\"\nmlock = true\n",
    )
    .unwrap();
    let out = locara_in(dir.path())
        .args(["manifest", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].starts_with(&format!("{}:1: `id` = \"Notes\"", path.display())),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:6: `models[0].mlock` is not allowed",
            path.display()
        )),
        "{stderr}"
    );

    // `app install` refuses it the same way, and installs nothing.
    let out = locara_in(dir.path())
        .args(["app", "install"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out).1, stderr);
    assert!(!dir.path().join("apps/tokens.json").exists());
}

#[test]
fn app_install_prints_the_token_once_and_list_rotate_remove_follow() {
    let home = home_with_smollm2();
    let manifest = notes_manifest(home.path(), "");
    let out = locara_in(home.path())
        .args(["app", "install"])
        .arg(&manifest)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // The token alone on standard output, and nowhere else.
    let token = stdout.trim_end_matches('\n');
    assert!(
        token.starts_with("lca_") && token.len() == 68 && !token.contains('\n'),
        "{stdout:?}"
    );
    assert_eq!(format!("{stdout}{stderr}").matches("lca_").count(), 1);
    assert!(
        stderr.contains("installed com.example.notes (Notes 1.0.0)"),
        "{stderr}"
    );
    assert!(stderr.contains("smollm2:135m") && stderr.contains("fits: needs"));
    let tokens = std::fs::read_to_string(home.path().join("apps/tokens.json")).unwrap();
    assert!(!tokens.contains(&token[4..]), "{tokens}");

    let list = |json: bool| {
        let mut cmd = locara_in(home.path());
        cmd.args(["app", "list"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
        text(&out).0
    };
    let apps: serde_json::Value = serde_json::from_str(&list(true)).unwrap();
    assert_eq!(
        apps,
        serde_json::json!([{
            "id": "com.example.notes",
            "name": "Notes",
            "version": "1.0.0",
            "models": ["smollm2:135m"],
        }])
    );
    assert!(list(false).contains("com.example.notes  Notes"));

    // A second install of the same id is refused with the way out.
    let out = locara_in(home.path())
        .args(["app", "install"])
        .arg(&manifest)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("`locara app remove com.example.notes` first"),
        "{stderr}"
    );

    let out = locara_in(home.path())
        .args(["app", "rotate-token", "com.example.notes"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let rotated = stdout.trim_end();
    assert!(rotated.starts_with("lca_") && rotated != token, "{stdout}");

    let out = locara_in(home.path())
        .args(["app", "remove", "com.example.notes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out).1);
    assert!(list(false).starts_with("no apps installed"));
    let out = locara_in(home.path())
        .args(["app", "remove", "com.example.notes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out)
        .1
        .contains("no app com.example.notes is installed"));
    let out = locara_in(home.path())
        .args(["app", "remove", "Notes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains("error: \"Notes\" is not an app id like \"com.example.notes\": "),
        "{}",
        text(&out).1
    );
}

#[test]
fn app_install_refuses_a_machine_too_small_with_the_numbers() {
    let home = home_with_smollm2();
    let manifest = notes_manifest(home.path(), "[requires]\nmemory_gb = 1000\n");
    let out = locara_in(home.path())
        .args(["app", "install"])
        .arg(&manifest)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(
            "com.example.notes requires 1000 GiB of memory (`requires.memory_gb`); this machine has "
        ) && stderr.contains(" GiB"),
        "{stderr}"
    );
    assert!(!stderr.contains("lca_"));
    assert!(!home.path().join("apps/tokens.json").exists());

    // The same with --fit, without installing.
    let out = locara_in(home.path())
        .args(["manifest", "check", "--fit"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("requires 1000 GiB"));
}

#[test]
fn app_install_refuses_models_over_the_budget_with_a_table() {
    let home = home_with_smollm2();
    // A machine profile whose budget (64 MiB) is less than the model's
    // mapped weights alone (94 MiB).
    let profile_path = home.path().join("profile.json");
    if !profile_path.exists() {
        let out = locara_in(home.path()).arg("profile").output().unwrap();
        assert!(out.status.success(), "{}", text(&out).1);
    }
    let mut profile: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&profile_path).unwrap()).unwrap();
    profile["profile"]["default_budget"] = serde_json::json!(64u64 << 20);
    std::fs::write(&profile_path, profile.to_string()).unwrap();

    let manifest = notes_manifest(home.path(), "");
    for args in [&["app", "install"][..], &["manifest", "check", "--fit"]] {
        let out = locara_in(home.path())
            .args(args)
            .arg(&manifest)
            .output()
            .unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(!stdout.contains("lca_") && !stderr.contains("lca_"));
        let table = stderr
            .lines()
            .find(|l| l.starts_with("smollm2:135m"))
            .unwrap_or_else(|| panic!("{args:?}: no row for the model in {stderr}"));
        let cells: Vec<&str> = table.split_whitespace().collect();
        // MODEL ROLE CONTEXT SEQS K/V ESTIMATE (two words: "123.4 MiB").
        // The manifest leaves the K/V type to the runtime: its default on
        // this machine, as `locara serve` would load it.
        let kv = locara_platform::estimate_backend().default_kv_type();
        assert_eq!(
            &cells[..5],
            ["smollm2:135m", "chat", "2048", "1", kv.as_str()],
            "{table}"
        );
        assert!(
            stderr.contains("error: com.example.notes needs ")
                && stderr.contains(
                    " for its models at their declared contexts; this machine's budget is \
                     64.0 MiB ("
                )
                && stderr.contains("lower the contexts in the manifest or use smaller models"),
            "{stderr}"
        );
    }
    assert!(!home.path().join("apps/tokens.json").exists());
}
