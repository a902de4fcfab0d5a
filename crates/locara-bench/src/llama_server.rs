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
    /// `--no-kv-unified`: one K/V cache per slot.
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
            // Locara's worker gives each sequence a cache of its own
            // (llama.cpp's default, kv_unified off).
            args.push("--no-kv-unified".into());
        }
        if self.flags.no_jinja {
            // Locara applies the model's template with
            // `llama_chat_apply_template`, which is llama-server's non-Jinja
            // path: both sides then see the same prompt tokens.
            args.push("--no-jinja".into());
        }
        if self.flags.cache_ram {
            // Locara's worker never reuses a prompt prefix; llama-server's
            // prompt cache in RAM would spare it the prefill of a repeated
            // prompt. (Requests also say `cache_prompt: false`.)
            args.extend(["--cache-ram".into(), "0".into()]);
        }
        if let Some(flag) = self.flags.no_webui {
            args.push(flag.into());
        }
        args
    }

    /// Starts llama-server with its output in `log` and waits until
    /// `GET /health` says the model is loaded (at most `deadline`).
    pub fn start(&self, p: &ServeParams, log: &Path, deadline: Duration) -> Result<ServerProcess> {
        let mut cmd = Command::new(&self.path);
        cmd.args(self.args(p));
        let mut server = ServerProcess::start("llama-server", cmd, log, deadline)?;
        server.wait_ready("/health", deadline)?;
        Ok(server)
    }
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
             -ctk q8_0 -ctv q8_0 -fa on --load-mode mmap --no-kv-unified --no-jinja \
             --cache-ram 0 --no-webui"
        );
    }

    #[test]
    fn flags_an_older_server_lacks_are_left_out() {
        let args = server("--port PORT\n").args(&params()).join(" ");
        assert!(args.ends_with("-fa on"), "{args}");
        assert_eq!(flags("--no-ui, --ui\n").no_webui, Some("--no-ui"));
    }
}
