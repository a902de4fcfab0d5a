//! Locara's side of the serve benchmark: the `locara` binary, a data
//! directory of its own with the model imported, and `locara serve`.
//!
//! ```text
//! <work>/home/                   LOCARA_HOME of the daemon under test
//!     models/<name>/model.gguf   imported with `locara import FILE --name NAME`
//!     admin.token                created by the daemon; sent as the bearer token
//! <work>/locara.toml             its configuration ([`config_toml`] or [`defaults_toml`])
//! ```

use crate::http::{self, BaseUrl};
use crate::llama_server::ServeParams;
use crate::server::ServerProcess;
use crate::tail;
use anyhow::{bail, ensure, Context, Result};
use locara_engine::{Worker, WorkerCommand};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How long the engine worker gets to end when asked for its version.
const WORKER_SHUTDOWN: Duration = Duration::from_secs(2);
/// How long a status request may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin token's file in the data directory
/// (`locara_daemon::apps::ADMIN_TOKEN_FILE`). The daemon creates it before
/// it says where it listens; every request of the benchmark carries it, as
/// an app's requests carry the app's token.
const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The `locara` binary under test.
#[derive(Debug, Clone)]
pub struct Locara {
    pub path: PathBuf,
    /// What `locara --version` says.
    pub version: String,
    /// The llama.cpp build its engine worker reports (`locara engine`'s
    /// ready message), when it could be asked.
    pub engine: Option<String>,
}

impl Locara {
    /// The binary at `path`, or by default `locara` next to this program
    /// (both are built into the same `target/<profile>/`).
    pub fn locate(path: Option<PathBuf>) -> Result<Locara> {
        let path = match path {
            Some(p) => {
                ensure!(p.is_file(), "--locara {}: no such file", p.display());
                p
            }
            None => {
                let exe = std::env::current_exe().context("locating this executable")?;
                let p = exe
                    .parent()
                    .context("this executable has no directory")?
                    .join("locara");
                ensure!(
                    p.is_file(),
                    "no locara binary at {}: build it with `cargo build --release -p locara` \
                     (into the same target directory as this benchmark), or pass --locara PATH \
                     or --locara-url URL",
                    p.display()
                );
                p
            }
        };
        let out = Command::new(&path)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} --version", path.display()))?;
        ensure!(
            out.status.success(),
            "{} --version failed ({}); is it locara?",
            path.display(),
            out.status
        );
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // The worker says which llama.cpp it runs as soon as it starts; a
        // build without the engine cannot say it (and cannot serve).
        let engine = Worker::spawn(&WorkerCommand {
            program: path.clone(),
            args: vec!["engine".into()],
            engine_log: false,
        })
        .ok()
        .map(|worker| {
            let engine = worker.engine().to_string();
            worker.shutdown(WORKER_SHUTDOWN);
            engine
        });
        Ok(Locara {
            path,
            version,
            engine,
        })
    }

    /// One line naming this Locara and its llama.cpp.
    pub fn describe(&self) -> String {
        match &self.engine {
            Some(engine) => format!("{}; engine: {engine}", self.version),
            None => format!(
                "{} (its engine did not say which llama.cpp it runs)",
                self.version
            ),
        }
    }

    /// Makes `work/home` a data directory holding `model` under `name`.
    pub fn prepare_home(&self, work: &Path, model: &Path, name: &str) -> Result<PathBuf> {
        let home = work.join("home");
        fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
        let out = Command::new(&self.path)
            .arg("import")
            .arg(model)
            .args(["--name", name])
            .env("LOCARA_HOME", &home)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {} import", self.path.display()))?;
        if !out.status.success() {
            bail!(
                "`locara import {} --name {name}` failed ({}):\n{}",
                model.display(),
                out.status,
                tail(&String::from_utf8_lossy(&out.stderr), 20)
            );
        }
        Ok(home)
    }

    /// Starts `locara serve` on an ephemeral port with the configuration
    /// file `config` ([`config_toml`] or [`defaults_toml`]), written to
    /// `work/locara.toml`, and waits until `GET /v1/models` answers (at most
    /// `deadline`). The model itself loads on the first request.
    pub fn serve(
        &self,
        home: &Path,
        work: &Path,
        config: &str,
        deadline: Duration,
    ) -> Result<ServerProcess> {
        let config_file = work.join("locara.toml");
        fs::write(&config_file, config)
            .with_context(|| format!("writing {}", config_file.display()))?;
        let mut cmd = Command::new(&self.path);
        cmd.args(["serve", "--port", "0", "--config"])
            .arg(&config_file)
            .env("LOCARA_HOME", home);
        let mut server =
            ServerProcess::start("locara serve", cmd, &work.join("locara.log"), deadline)?;
        let token_file = home.join(ADMIN_TOKEN_FILE);
        let token = fs::read_to_string(&token_file).with_context(|| {
            format!(
                "reading the admin token {} that locara serve creates",
                token_file.display()
            )
        })?;
        server.base = server.base.clone().with_token(token.trim());
        server.wait_ready("/v1/models", deadline)?;
        Ok(server)
    }
}

/// The daemon's configuration file: the same slots, threads, context per
/// sequence and K/V type as llama-server's, and the model kept loaded
/// between requests (llama-server never unloads it).
pub fn config_toml(p: &ServeParams) -> String {
    format!(
        "# Written by locara-serve-bench.\n\
         parallel = {}\n\
         threads = {}\n\
         context = {}\n\
         kv_type = \"{}\"\n\
         keep_alive = \"-1\"\n",
        p.parallel,
        p.threads,
        p.context,
        p.kv_type.as_str()
    )
}

/// The daemon's configuration file for running at its defaults: only the
/// threads, the one setting both sides are given alike (its default is
/// the performance cores, llama-server's the physical ones; they need not
/// agree).
pub fn defaults_toml(threads: u32) -> String {
    format!("# Written by locara-serve-bench.\nthreads = {threads}\n")
}

/// One loaded model, as `GET /locara/v1/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInStatus {
    /// Its engine worker's process id.
    pub pid: u32,
    /// Sequences that generate at once.
    pub parallel: Option<u64>,
    /// Context per sequence, tokens.
    pub context: Option<u64>,
    pub kv_type: Option<String>,
    /// Sequences generating now.
    pub sequences_busy: Option<u64>,
}

impl ModelInStatus {
    /// `4 sequences of 8192 tokens, K/V q8_0`, from what the status had.
    pub fn describe(&self) -> String {
        let n = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{} sequences of {} tokens, K/V {} (as /locara/v1/status says)",
            n(self.parallel),
            n(self.context),
            self.kv_type.as_deref().unwrap_or("?")
        )
    }
}

/// The model `name` in a running Locara's status: its worker's pid and
/// settings. An error says why it is not there (not loaded, or no pid yet).
pub fn model_in_status(base: &BaseUrl, name: &str) -> Result<ModelInStatus> {
    let (status, body) = http::get(base, "/locara/v1/status", STATUS_TIMEOUT)
        .with_context(|| format!("GET {base}/locara/v1/status"))?;
    ensure!(
        status == 200,
        "GET {base}/locara/v1/status answered {status}: {}",
        body.trim()
    );
    let value: Value = serde_json::from_str(&body).context("/locara/v1/status is not JSON")?;
    find_model(&value, name).with_context(|| {
        format!("/locara/v1/status shows no loaded model {name:?} with a worker pid: {body}")
    })
}

fn find_model(status: &Value, name: &str) -> Option<ModelInStatus> {
    let model = status
        .get("models")?
        .as_array()?
        .iter()
        .find(|m| m.get("name").and_then(Value::as_str) == Some(name))?;
    let pid = model.get("pid")?.as_u64()?;
    Some(ModelInStatus {
        pid: u32::try_from(pid).ok()?,
        parallel: model.get("parallel").and_then(Value::as_u64),
        context: model.get("context").and_then(Value::as_u64),
        kv_type: model
            .get("kv_type")
            .and_then(Value::as_str)
            .map(str::to_string),
        sequences_busy: model.get("sequences_busy").and_then(Value::as_u64),
    })
}

/// What a running Locara says of its llama.cpp: a string field `engine`
/// anywhere in `GET /locara/v1/status`, if it has one.
pub fn engine_from_status(base: &BaseUrl) -> Option<String> {
    let (status, body) = http::get(base, "/locara/v1/status", STATUS_TIMEOUT).ok()?;
    if status != 200 {
        return None;
    }
    find_engine(&serde_json::from_str(&body).ok()?)
}

fn find_engine(value: &Value) -> Option<String> {
    match value {
        Value::Object(map) => map
            .get("engine")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| map.values().find_map(find_engine)),
        Value::Array(items) => items.iter().find_map(find_engine),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use locara_core::KvType;

    #[test]
    fn config_has_the_keys_of_the_daemon_contract() {
        let text = config_toml(&ServeParams {
            model: Path::new("/m.gguf"),
            threads: 2,
            kv_type: KvType::Q8_0,
            parallel: 4,
            context: 4096,
        });
        assert_eq!(
            text,
            "# Written by locara-serve-bench.\n\
             parallel = 4\n\
             threads = 2\n\
             context = 4096\n\
             kv_type = \"q8_0\"\n\
             keep_alive = \"-1\"\n"
        );
    }

    #[test]
    fn defaults_set_only_the_threads() {
        assert_eq!(
            defaults_toml(2),
            "# Written by locara-serve-bench.\nthreads = 2\n"
        );
    }

    #[test]
    fn the_worker_pid_is_found_by_model_name() {
        let status: Value = serde_json::from_str(
            r#"{"budget":1,"models":[
                {"name":"other","pid":7},
                {"name":"smollm2:135m","state":"loaded","pid":4242,"parallel":4,"context":8192,"kv_type":"q8_0","sequences_busy":0}
            ]}"#,
        )
        .unwrap();
        let m = find_model(&status, "smollm2:135m").unwrap();
        assert_eq!((m.pid, m.sequences_busy), (4242, Some(0)));
        assert_eq!(
            m.describe(),
            "4 sequences of 8192 tokens, K/V q8_0 (as /locara/v1/status says)"
        );
        assert_eq!(find_model(&status, "gemma3:270m"), None);
        let loading: Value =
            serde_json::from_str(r#"{"models":[{"name":"m","state":"loading","pid":null}]}"#)
                .unwrap();
        assert_eq!(find_model(&loading, "m"), None, "no worker yet");
    }

    #[test]
    fn engine_is_found_anywhere_in_the_status() {
        let status: Value = serde_json::from_str(
            r#"{"version":"0.1.0","models":[{"name":"m","engine":"llama.cpp (ggml 0.26.0)"}]}"#,
        )
        .unwrap();
        assert_eq!(
            find_engine(&status).as_deref(),
            Some("llama.cpp (ggml 0.26.0)")
        );
        assert_eq!(find_engine(&serde_json::json!({"engine": 3})), None);
    }
}
