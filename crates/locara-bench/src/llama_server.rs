//! llama.cpp's own server, `llama-server`: the binary (built by
//! [`crate::sdist`] from the same tree as llama-bench) and how it is started
//! so that it serves like Locara does.

use crate::sdist::{self, Source, Tool, TreeInfo};
use crate::server::ServerProcess;
use anyhow::{Context, Result};
use locara_core::KvType;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A llama-server binary, ready to start.
#[derive(Debug, Clone)]
pub struct LlamaServer {
    pub path: PathBuf,
    /// What `llama-server --version` says.
    pub version: String,
    /// Known only for binaries this program built.
    pub tree: Option<TreeInfo>,
    /// Flags of its `--help` that this program uses where they exist; they
    /// came and went across llama.cpp versions.
    flags: Flags,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flags {
    /// `--no-jinja`: the legacy chat template path, `llama_chat_apply_template`.
    no_jinja: bool,
    /// `--cache-ram`: a prompt cache in RAM across slots.
    cache_ram: bool,
    /// `--kv-unified`: one K/V cache that all slots share.
    kv_unified: bool,
    /// `--no-webui` / `--no-ui`.
    no_webui: Option<&'static str>,
    /// `--load-mode mmap` (newer) or nothing (mmap is the default).
    load_mode: bool,
}

/// How both servers are set up: the same model, threads, K/V type, slots
/// and context per sequence.
#[derive(Debug, Clone, Copy)]
pub struct ServeParams<'a> {
    pub model: &'a Path,
    pub threads: u32,
    pub kv_type: KvType,
    /// Sequences decoded at once (llama-server's slots).
    pub parallel: u32,
    /// Context of each sequence, tokens.
    pub context: u32,
}

impl LlamaServer {
    /// Finds llama-server: the binary given, or the cached build, or a new
    /// build from the source distribution (minutes; progress on stderr).
    pub fn locate(source: &Source) -> Result<LlamaServer> {
        let (path, tree) = source.locate(Tool::LlamaServer)?;
        let version = sdist::version_of(&path, Tool::LlamaServer)?;
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .with_context(|| format!("running {} --help", path.display()))?;
        let help = [help.stdout, help.stderr].concat();
        Ok(LlamaServer {
            flags: flags(&String::from_utf8_lossy(&help)),
            path,
            version,
            tree,
        })
    }

    /// One line naming this llama-server's llama.cpp.
    pub fn describe(&self) -> String {
        TreeInfo::describe(self.tree.as_ref(), &self.version)
    }

    /// The arguments that make llama-server serve like Locara.
    pub fn args(&self, p: &ServeParams) -> Vec<String> {
        let kv = p.kv_type.as_str();
        let mut args: Vec<String> = vec![
            "-m".into(),
            p.model.to_string_lossy().into_owned(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            "0".into(),
            "-t".into(),
            p.threads.to_string(),
            "-tb".into(),
            p.threads.to_string(),
            "-np".into(),
            p.parallel.to_string(),
            // llama-server divides its context among its slots; Locara's
            // context is per sequence.
            "-c".into(),
            p.context.saturating_mul(p.parallel).to_string(),
            "-ctk".into(),
            kv.into(),
            "-ctv".into(),
            kv.into(),
            // The engine always runs with flash attention (docs/ARCHITECTURE.md).
            "-fa".into(),
            "on".into(),
        ];
        if self.flags.load_mode {
            args.extend(["--load-mode".into(), "mmap".into()]);
        }
        if self.flags.kv_unified {
            // Locara's worker's sequences share one K/V pool (llama.cpp's
            // unified cache); say so rather than rely on the default.
            args.push("--kv-unified".into());
        }
        if self.flags.no_jinja {
            // Locara applies the model's template with
            // `llama_chat_apply_template`, which is llama-server's non-Jinja
            // path: both sides then see the same prompt tokens.
            args.push("--no-jinja".into());
        }
        if self.flags.cache_ram {
            // This comparison is of prefill and decode: llama-server's
            // prompt cache in RAM would spare it the prefill of a repeated
            // prompt. (Requests to both sides also say `cache_prompt:
            // false`.)
            args.extend(["--cache-ram".into(), "0".into()]);
        }
        if let Some(flag) = self.flags.no_webui {
            args.push(flag.into());
        }
        args
    }

    /// Starts llama-server with the arguments that make it serve like
    /// Locara ([`LlamaServer::args`]); see [`LlamaServer::start_with`].
    pub fn start(&self, p: &ServeParams, log: &Path, deadline: Duration) -> Result<ServerProcess> {
        self.start_with(&self.args(p), log, deadline)
    }

    /// Starts llama-server with `args`, its output in `log`, and waits until
    /// `GET /health` says the model is loaded (at most `deadline`).
    pub fn start_with(
        &self,
        args: &[String],
        log: &Path,
        deadline: Duration,
    ) -> Result<ServerProcess> {
        let mut cmd = Command::new(&self.path);
        cmd.args(args);
        let mut server = ServerProcess::start("llama-server", cmd, log, deadline)?;
        server.wait_ready("/health", deadline)?;
        Ok(server)
    }
}

/// llama-server's arguments for running at its defaults, as a user runs
/// it (`llama-server -m MODEL`), plus only what this benchmark needs: an
/// ephemeral port (it says which in its log) and the threads, the one
/// setting both sides are given alike (its batch threads follow `-t`). It
/// listens on 127.0.0.1 by default. Its defaults then give it, in
/// llama-cpp-python 0.3.36's tree: 4 slots sharing one unified K/V cache
/// of the model's trained context, f16 K and V, flash attention `auto`,
/// the prompt cache on (requests reuse a slot's matching prefix, and up to
/// 8192 MiB of earlier prompts are kept in RAM), Jinja chat templates, and
/// the web UI (empty in this build, see [`crate::sdist`]).
pub fn default_args(model: &Path, threads: u32) -> Vec<String> {
    vec![
        "-m".into(),
        model.to_string_lossy().into_owned(),
        "--port".into(),
        "0".into(),
        "-t".into(),
        threads.to_string(),
    ]
}

/// What llama-server's log says of the settings it chose: its slots, their
/// context and whether they share one K/V cache, and the size of each K/V
/// cache it allocated (a sliding-window model has two). `None` if the log
/// has none of those lines.
pub fn settings_from_log(log: &str) -> Option<String> {
    let mut parts = Vec::new();
    // `srv          init: initializing, n_slots = 4, n_ctx_slot = 8192, kv_unified = 'true'`
    if let Some(line) = log.lines().find(|l| l.contains("initializing, n_slots = ")) {
        let value = |key: &str| {
            let at = line.find(key)? + key.len();
            let rest = &line[at..];
            let end = rest.find([',', ' ', '\r']).unwrap_or(rest.len());
            Some(rest[..end].trim_matches('\'').to_string())
        };
        if let (Some(slots), Some(ctx), Some(unified)) = (
            value("n_slots = "),
            value("n_ctx_slot = "),
            value("kv_unified = "),
        ) {
            let shared = if unified == "true" {
                "sharing one unified K/V cache"
            } else {
                "each with a K/V cache of its own"
            };
            parts.push(format!("{slots} slots of {ctx} tokens, {shared}"));
        }
    }
    // `llama_kv_cache: size =  180.00 MiB (  8192 cells,  30 layers,  4/4 seqs), K (f16): ...`
    for line in log.lines() {
        if let Some(at) = line.find("llama_kv_cache: size =") {
            let text = line[at + "llama_kv_cache: ".len()..].trim();
            parts.push(format!(
                "K/V cache {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            ));
        }
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The optional flags this llama-server has, judged from its `--help`.
fn flags(help: &str) -> Flags {
    Flags {
        no_jinja: help.contains("--no-jinja"),
        cache_ram: help.contains("--cache-ram"),
        kv_unified: help.contains("--no-kv-unified"),
        no_webui: if help.contains("--no-webui") {
            Some("--no-webui")
        } else if help.contains("--no-ui") {
            Some("--no-ui")
        } else {
            None
        },
        load_mode: help.contains("--load-mode"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `llama-server --help` of llama-cpp-python 0.3.36's tree.
    const HELP: &str = "\
-lm,   --load-mode MODE                 how the model is loaded
-cram, --cache-ram N                    set the maximum cache size in MiB
-kvu,  --kv-unified, -no-kvu, --no-kv-unified
--jinja, --no-jinja                     whether to use jinja template engine for chat
--ui, --webui, --no-ui, --no-webui      whether to enable the Web UI
";

    fn params() -> ServeParams<'static> {
        ServeParams {
            model: Path::new("/m/model.gguf"),
            threads: 2,
            kv_type: KvType::Q8_0,
            parallel: 4,
            context: 4096,
        }
    }

    fn server(help: &str) -> LlamaServer {
        LlamaServer {
            path: "llama-server".into(),
            version: String::new(),
            tree: None,
            flags: flags(help),
        }
    }

    #[test]
    fn args_ask_for_the_same_settings_as_locara() {
        assert_eq!(
            server(HELP).args(&params()).join(" "),
            "-m /m/model.gguf --host 127.0.0.1 --port 0 -t 2 -tb 2 -np 4 -c 16384 \
             -ctk q8_0 -ctv q8_0 -fa on --load-mode mmap --kv-unified --no-jinja \
             --cache-ram 0 --no-webui"
        );
    }

    #[test]
    fn defaults_are_the_model_a_port_and_the_threads() {
        assert_eq!(
            default_args(Path::new("/m/model.gguf"), 2).join(" "),
            "-m /m/model.gguf --port 0 -t 2"
        );
    }

    #[test]
    fn settings_are_read_from_the_log() {
        // Lines of llama-server's log at its defaults (0.3.36's tree, Gemma 3).
        let log = "\
llama_context: n_ctx         = 32768
llama_kv_cache: size =   48.00 MiB ( 32768 cells,   3 layers,  4/1 seqs), K (f16):   24.00 MiB, V (f16):   24.00 MiB
llama_kv_cache_iswa: creating     SWA KV cache, size = 2048 cells
llama_kv_cache: size =   30.00 MiB (  2048 cells,  15 layers,  4/1 seqs), K (f16):   15.00 MiB, V (f16):   15.00 MiB
srv          init: initializing, n_slots = 4, n_ctx_slot = 32768, kv_unified = 'true'\r
";
        assert_eq!(
            settings_from_log(log).unwrap(),
            "4 slots of 32768 tokens, sharing one unified K/V cache; \
             K/V cache size = 48.00 MiB ( 32768 cells, 3 layers, 4/1 seqs), K (f16): 24.00 MiB, V (f16): 24.00 MiB; \
             K/V cache size = 30.00 MiB ( 2048 cells, 15 layers, 4/1 seqs), K (f16): 15.00 MiB, V (f16): 15.00 MiB"
        );
        assert_eq!(
            settings_from_log(
                "srv init: initializing, n_slots = 2, n_ctx_slot = 4096, kv_unified = 'false'"
            )
            .unwrap(),
            "2 slots of 4096 tokens, each with a K/V cache of its own"
        );
        assert_eq!(settings_from_log("main: loading model\n"), None);
    }

    #[test]
    fn flags_an_older_server_lacks_are_left_out() {
        let args = server("--port PORT\n").args(&params()).join(" ");
        assert!(args.ends_with("-fa on"), "{args}");
        assert_eq!(flags("--no-ui, --ui\n").no_webui, Some("--no-ui"));
    }
}
