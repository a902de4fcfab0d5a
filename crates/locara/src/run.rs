//! `locara run`: one answer, or a chat.

use crate::config::Config;
use crate::models;
use crate::serve::OwnDaemon;
use anyhow::{bail, Context, Result};
use clap::Args;
use locara_core::{Bytes, KvType, LARGEST_CONTEXT, SMALLEST_CONTEXT};
use locara_daemon::config::{RawServeConfig, ServeConfig};
use locara_daemon::store::{ModelName, Store, StoreError};
use locara_engine::protocol::{
    ChatMessage, ErrorKind, FinishReason, GenerationStats, Prompt, Sampling,
};
use locara_engine::EngineError;
use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

#[derive(Args)]
#[command(
    after_help = "Examples:\n  locara run\n  locara run \"Why is the sky blue?\"\n  locara run gemma3:270m \"Write a haiku\" --temperature 0\n  echo \"Summarise: ...\" | locara run"
)]
pub struct RunArgs {
    /// A model name (default: the catalog's default, smollm2:135m), then the
    /// prompt. If the first word is not a model name, every word is prompt.
    /// No prompt and a terminal on stdin: an interactive chat.
    #[arg(value_name = "[MODEL] [PROMPT]")]
    words: Vec<String>,
    /// Context in tokens (default 8192, never more than the model's trained context).
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(i64::from(SMALLEST_CONTEXT)..=i64::from(LARGEST_CONTEXT)))]
    ctx: Option<u32>,
    /// K/V cache type: f16, q8_0 or q4_0 (default: f16 on the CPU, where
    /// llama.cpp's attention is fastest with it; q8_0 with a GPU).
    #[arg(long, value_name = "TYPE")]
    kv: Option<KvType>,
    /// Sampling temperature, 0 to 2; 0 is greedy (deterministic).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling, above 0 up to 1 (1 = off).
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    top_k: u32,
    /// Drop tokens below this fraction of the top token's probability, 0 to 1.
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    /// Penalty for repeating recent tokens, above 0 up to 10 (1 = off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Sampling seed (default: random).
    #[arg(long)]
    seed: Option<u32>,
    /// Most tokens to generate per answer (default: until the model stops).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_tokens: Option<u32>,
    /// Stop before this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    stop: Vec<String>,
    /// A system message for the chat template.
    #[arg(long)]
    system: Option<String>,
    /// Send the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,
    /// CPU threads (default: the performance cores).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Print load time, prefill and decode speed, and the worker's footprint.
    #[arg(long, short)]
    verbose: bool,
    /// Pass llama.cpp's own log through to stderr.
    #[arg(long, hide = true)]
    engine_log: bool,
}

impl RunArgs {
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    /// The sampling settings, range-checked (the error names the flag,
    /// the value and the range).
    fn sampling(&self) -> Result<Sampling> {
        check("--temperature", self.temperature, 0.0, 2.0, true)?;
        check("--top-p", self.top_p, 0.0, 1.0, false)?;
        check("--min-p", self.min_p, 0.0, 1.0, true)?;
        check("--repeat-penalty", self.repeat_penalty, 0.0, 10.0, false)?;
        Ok(Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed,
            ..Sampling::default()
        })
    }
}

/// `low..=high`, or `low<..=high` when `low_inclusive` is false.
fn check(flag: &str, value: f32, low: f32, high: f32, low_inclusive: bool) -> Result<()> {
    let above = if low_inclusive {
        value >= low
    } else {
        value > low
    };
    if !value.is_finite() || !above || value > high {
        let range = if low_inclusive {
            format!("{low} to {high}")
        } else {
            format!("above {low} up to {high}")
        };
        bail!("{flag} {value} is out of range: it must be {range}");
    }
    Ok(())
}

/// What Ctrl-C does now.
static MODE: AtomicU8 = AtomicU8::new(MODE_ONE_SHOT);
const MODE_ONE_SHOT: u8 = 0;
const MODE_PROMPT: u8 = 1;
const MODE_GENERATING: u8 = 2;
/// Set by Ctrl-C during a chat generation; the loop cancels it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: RunArgs) -> Result<ExitCode> {
    let sampling = args.sampling()?;
    locara_platform::check_supported()?;
    let config = Config::load(args.engine_log)?;
    let store = config.store()?;
    let (name, words) = resolve(&config, &store, &args.words)?;
    if store.get(&name)?.is_none() {
        models::fetch(&config, &store, &name)?;
    }

    let prompt = if !words.is_empty() {
        Some(words.join(" "))
    } else if !io::stdin().is_terminal() {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("reading the prompt from stdin")?;
        if text.trim().is_empty() {
            bail!("the prompt on stdin is empty");
        }
        Some(text)
    } else {
        None
    };

    ctrlc::set_handler(|| match MODE.load(Ordering::SeqCst) {
        MODE_GENERATING => INTERRUPTED.store(true, Ordering::SeqCst),
        MODE_PROMPT => {
            print!("\n(Ctrl-D or /bye leaves the chat)\n>>> ");
            let _ = io::stdout().flush();
        }
        // Closing our end of the pipe ends the worker too.
        _ => std::process::exit(130),
    })
    .context("installing the Ctrl-C handler")?;

    // Every run goes through a governor: a running daemon's, or one of our
    // own that lives as long as this command (the same budget, admission
    // and pressure ladder as `locara serve`).
    let auth = crate::serve::admin_header(&config.home)?;
    let (url, own) = match crate::serve::daemon_url(&config.home, true) {
        Some(url) => {
            if args.verbose {
                eprintln!("using the Locara daemon at {url} (its context and K/V settings apply)");
            }
            (url, None)
        }
        None => {
            let serve_config = ServeConfig::build(&[
                RawServeConfig::from_env(|k| std::env::var(k).ok())?,
                RawServeConfig {
                    host: Some("127.0.0.1".into()),
                    port: Some(0),
                    allow_non_loopback: Some(false),
                    // One conversation at a time: one sequence's K/V.
                    parallel: Some(1),
                    context: args.ctx,
                    kv_type: args.kv.map(|k| k.as_str().to_string()),
                    threads: args.threads,
                    ..Default::default()
                },
            ])?;
            let daemon = OwnDaemon::start(config, serve_config)?;
            (daemon.url.clone(), Some(daemon))
        }
    };

    let session = Session {
        url,
        model: name.to_string(),
        auth,
        args: &args,
        sampling,
        _own: own,
    };
    match prompt {
        Some(p) => session.one_shot(p),
        None => session.chat(),
    }
}

/// Splits the words into a model name and the prompt.
fn resolve(config: &Config, store: &Store, words: &[String]) -> Result<(ModelName, Vec<String>)> {
    if let Some(first) = words.first() {
        if let Ok(name) = first.parse::<ModelName>() {
            if config.catalog.find(&name).is_some() || store.get(&name)?.is_some() {
                return Ok((name, words[1..].to_vec()));
            }
            // `name:tag` can only be meant as a model.
            if first.contains(':') {
                return Err(StoreError::NotInCatalog(name).into());
            }
        }
    }
    Ok((config.catalog.default.clone(), words.to_vec()))
}

/// A conversation with a model through a daemon's API.
struct Session<'a> {
    url: String,
    model: String,
    /// `Bearer <admin token>`: the user's own tool, like the CLI.
    auth: String,
    args: &'a RunArgs,
    sampling: Sampling,
    /// The daemon of this command's own, if it started one: dropped (and so
    /// stopped, with its workers) when the session ends.
    _own: Option<OwnDaemon>,
}

/// How one generation ended.
struct Answer {
    text: String,
    finish: FinishReason,
    stats: GenerationStats,
}

impl Session<'_> {
    fn prompt_for(&self, messages: &[ChatMessage]) -> Prompt {
        if self.args.raw {
            Prompt::Raw {
                text: messages
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
            }
        } else {
            Prompt::Chat {
                messages: messages.to_vec(),
            }
        }
    }

    fn system(&self) -> Vec<ChatMessage> {
        self.args
            .system
            .iter()
            .map(|s| ChatMessage {
                role: "system".into(),
                content: s.clone(),
            })
            .collect()
    }

    fn one_shot(mut self, text: String) -> Result<ExitCode> {
        let mut messages = self.system();
        messages.push(ChatMessage {
            role: "user".into(),
            content: text,
        });
        let prompt = self.prompt_for(&messages);
        let answer = self.generate(prompt)?;
        println!();
        self.report(&answer);
        Ok(ExitCode::SUCCESS)
    }

    fn chat(mut self) -> Result<ExitCode> {
        let mut history = self.system();
        let stdin = io::stdin();
        let mut line = String::new();
        eprintln!("chatting with a local model; /bye or Ctrl-D leaves, /clear forgets, Ctrl-C stops an answer");
        loop {
            MODE.store(MODE_PROMPT, Ordering::SeqCst);
            print!(">>> ");
            io::stdout().flush()?;
            line.clear();
            if stdin.lock().read_line(&mut line)? == 0 {
                println!();
                return Ok(ExitCode::SUCCESS);
            }
            let input = line.trim();
            match input {
                "" => continue,
                "/bye" | "/exit" | "/quit" => return Ok(ExitCode::SUCCESS),
                "/clear" => {
                    history = self.system();
                    println!("(conversation cleared)");
                    continue;
                }
                "/help" | "/?" => {
                    println!(
                        "/clear forgets the conversation; /bye leaves; Ctrl-C stops an answer"
                    );
                    continue;
                }
                _ => {}
            }
            history.push(ChatMessage {
                role: "user".into(),
                content: input.to_string(),
            });
            let prompt = self.prompt_for(&history);
            match self.generate(prompt) {
                Ok(answer) => {
                    println!();
                    if answer.finish == FinishReason::Cancelled {
                        println!("(stopped)");
                    }
                    self.report(&answer);
                    history.push(ChatMessage {
                        role: "assistant".into(),
                        content: answer.text,
                    });
                }
                Err(err) => {
                    history.pop();
                    match err.downcast_ref::<EngineError>() {
                        Some(EngineError::Worker {
                            kind: ErrorKind::PromptTooLong,
                            message,
                        }) => {
                            eprintln!("{message}; /clear starts a new conversation");
                        }
                        _ => return Err(err),
                    }
                }
            }
        }
    }

    /// Runs one generation, streaming its tokens to stdout.
    fn generate(&mut self, prompt: Prompt) -> Result<Answer> {
        INTERRUPTED.store(false, Ordering::SeqCst);
        if MODE.load(Ordering::SeqCst) != MODE_ONE_SHOT {
            MODE.store(MODE_GENERATING, Ordering::SeqCst);
        }
        daemon_generate(
            &self.url,
            &self.model,
            &self.auth,
            prompt,
            &self.sampling,
            self.args,
        )
    }

    fn report(&self, answer: &Answer) {
        if !self.args.verbose {
            return;
        }
        let s = &answer.stats;
        eprintln!(
            "prefill: {} tokens in {:.0} ms ({:.1} tokens/s, load included); decode: {} tokens in {:.0} ms ({:.1} tokens/s); finish: {}",
            s.prompt_tokens,
            s.prefill_ms,
            s.prefill_tps(),
            s.generated_tokens,
            s.decode_ms,
            s.decode_tps(),
            answer.finish.as_str()
        );
        if let Some(per_step) = s.tokens_per_step() {
            // Speculative decoding: how many tokens each decode gave.
            match s.acceptance_rate() {
                Some(rate) => eprintln!(
                    "speculative: {} drafted tokens, {} accepted ({:.0} %); {:.2} tokens per decode step",
                    s.draft_tokens,
                    s.draft_accepted_tokens,
                    rate * 100.0,
                    per_step
                ),
                None => eprintln!("speculative: nothing drafted; {per_step:.2} tokens per decode step"),
            }
        }
        let m = match crate::serve::model_status(&self.url, &self.auth, &self.model) {
            Ok(Some(m)) => m,
            Ok(None) => return eprintln!("{} is no longer loaded", self.model),
            Err(e) => return eprintln!("the daemon's status is unavailable: {e:#}"),
        };
        eprintln!(
            "loaded {}: context {} tokens, K/V {}, {} sequence(s); estimate {}",
            m.name,
            m.context,
            m.kv_type.as_str(),
            m.parallel,
            Bytes(m.estimate)
        );
        // The worker runs on this machine: read its figures from the OS,
        // RSS included, which the daemon's status leaves out.
        match m.pid.map(locara_platform::process_footprint) {
            Some(Ok(fp)) => eprintln!(
                "worker {}: footprint {} (mapped weights {} resident, RSS {})",
                m.pid.unwrap_or_default(),
                Bytes(fp.footprint),
                Bytes(fp.mapped_weights),
                Bytes(fp.rss)
            ),
            _ => eprintln!(
                "worker: footprint {} (mapped weights {} resident), as the daemon measured it",
                m.footprint
                    .map_or("-".to_string(), |b| Bytes(b).to_string()),
                m.mapped_weights
                    .map_or("-".to_string(), |b| Bytes(b).to_string()),
            ),
        }
        if let Some(engine) = &m.engine {
            eprintln!("engine: {engine}");
        }
    }
}

/// One generation through a running daemon's chat (or, raw, completion)
/// endpoint, streamed. Ctrl-C closes the connection, which cancels the
/// generation in the daemon before its next token.
fn daemon_generate(
    url: &str,
    model: &str,
    auth: &str,
    prompt: Prompt,
    sampling: &Sampling,
    args: &RunArgs,
) -> Result<Answer> {
    let mut body = serde_json::json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": sampling.top_k,
        "min_p": sampling.min_p,
        "repeat_penalty": sampling.repeat_penalty,
    });
    let path = match prompt {
        Prompt::Chat { messages } => {
            body["messages"] = serde_json::to_value(messages)?;
            "/v1/chat/completions"
        }
        Prompt::Raw { text } => {
            body["prompt"] = text.into();
            "/v1/completions"
        }
    };
    if let Some(seed) = sampling.seed {
        body["seed"] = seed.into();
    }
    if let Some(m) = args.max_tokens {
        body["max_tokens"] = m.into();
    }
    if !args.stop.is_empty() {
        body["stop"] = serde_json::to_value(&args.stop)?;
    }
    if let Some(c) = args.ctx {
        body["context"] = c.into();
    }
    let started = std::time::Instant::now();
    let response = match ureq::post(&format!("{url}{path}"))
        .set("Authorization", auth)
        .send_json(body)
    {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let v: serde_json::Value = r.into_json().unwrap_or_default();
            let message = v["error"]["message"].as_str().unwrap_or("no message");
            if v["error"]["code"] == "context_length_exceeded" {
                return Err(EngineError::Worker {
                    kind: ErrorKind::PromptTooLong,
                    message: message.to_string(),
                }
                .into());
            }
            bail!("the daemon answered {code}: {message}");
        }
        Err(e) => bail!("talking to the daemon at {url}: {e}"),
    };
    let mut reader = io::BufReader::new(response.into_reader());
    let mut out = io::stdout().lock();
    let mut text = String::new();
    let mut line = String::new();
    let (mut first_at, mut last_at) = (None, None);
    let mut finish = FinishReason::Stop;
    let mut stats = GenerationStats::default();
    loop {
        if INTERRUPTED.swap(false, Ordering::SeqCst) {
            // Dropping the reader closes the connection: the daemon cancels.
            finish = FinishReason::Cancelled;
            break;
        }
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let v: serde_json::Value =
            serde_json::from_str(data).context("reading the daemon's stream")?;
        if let Some(message) = v["error"]["message"].as_str() {
            bail!("{message}");
        }
        if let Some(choice) = v["choices"].get(0) {
            let piece = choice["delta"]["content"]
                .as_str()
                .or_else(|| choice["text"].as_str())
                .unwrap_or("");
            if !piece.is_empty() {
                let now = std::time::Instant::now();
                first_at.get_or_insert(now);
                last_at = Some(now);
                out.write_all(piece.as_bytes())?;
                out.flush()?;
                text.push_str(piece);
            }
            if choice["finish_reason"] == "length" {
                finish = FinishReason::Length;
            }
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            stats.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0) as u32;
            stats.generated_tokens = u["completion_tokens"].as_u64().unwrap_or(0) as u32;
            let s = &v["locara"]["speculative"];
            let count = |key: &str| s[key].as_u64().unwrap_or(0) as u32;
            stats.draft_tokens = count("draft_tokens");
            stats.draft_accepted_tokens = count("draft_accepted_tokens");
            stats.decode_steps = count("decode_steps");
        }
    }
    // Times seen from here: prefill is the wait for the first text (which
    // includes a load), decode the rest.
    if let (Some(first), Some(last)) = (first_at, last_at) {
        stats.prefill_ms = (first - started).as_secs_f64() * 1000.0;
        stats.decode_ms = (last - first).as_secs_f64() * 1000.0;
    }
    Ok(Answer {
        text,
        finish,
        stats,
    })
}
