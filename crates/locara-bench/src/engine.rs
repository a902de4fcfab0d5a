//! Locara's side: the engine worker path, as `locara run` drives it.
//!
//! This binary spawns itself as the worker (`locara-bench engine`), loads the
//! model over the framed protocol and runs generations; the figures are the
//! worker's own [`GenerationStats`], so they include tokenizing, the batch
//! loop, sampling and writing every token to the parent.

use anyhow::{bail, Context, Result};
use locara_core::KvType;
use locara_engine::protocol::{
    Event, FinishReason, GenerateRequest, GenerationStats, LoadRequest, LoadedInfo, Prompt,
    Request, Sampling,
};
use locara_engine::{Worker, WorkerCommand};
use std::path::Path;
use std::time::Duration;

/// The engine worker, when this program was started as one (its first
/// argument is `engine`, checked before any flag parsing so clap never sees
/// the protocol's stdin): the exit code once the worker ends. `None`: run
/// as the benchmark `name`.
pub fn worker_mode(name: &str) -> Option<std::process::ExitCode> {
    if std::env::args().nth(1).as_deref() != Some("engine") {
        return None;
    }
    Some(match locara_engine::worker::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} engine: {e}");
            std::process::ExitCode::FAILURE
        }
    })
}

/// Raw prompts for the decode test: greedy decoding continues them for
/// hundreds of tokens without reason to stop (a small model that counts
/// keeps counting). Tried in order when one ends early.
const DECODE_PROMPTS: &[&str] = &[
    "Numbers from 1 to 1000, separated by commas: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "A list of the first five hundred squares:\n1. 1\n2. 4\n3. 9\n4. 16\n5. 25\n6. 36\n7.",
];

/// Words of the prefill prompt. Short common words are one token each in
/// every tokenizer we ship models for, so the prompt length can be steered
/// to the exact token count llama-bench uses.
const FILLER: &[&str] = &[
    "the", "cat", "sat", "on", "a", "warm", "mat", "and", "we", "saw", "it", "from", "our", "old",
    "red", "house", "by", "the", "sea", "in", "May",
];

/// Most prefill probes spent steering the prompt to its token count.
const CALIBRATION_PROBES: usize = 8;

/// The worker, loaded, with the prompts of its tests.
pub struct Engine {
    worker: Worker,
    pub loaded: LoadedInfo,
    next_id: u64,
    prefill_prompt: String,
    /// Tokens of `prefill_prompt`, as the worker counted them.
    pub prefill_tokens: u32,
}

/// One decode measurement.
#[derive(Debug, Clone, Copy)]
pub struct DecodeSample {
    /// Tokens per second after the first token.
    pub tps: f64,
    pub generated: u32,
    /// Tokens of the prompt the generation continued: the depth of the
    /// context its decoding started at.
    pub prompt_tokens: u32,
}

/// Settings of the worker's load.
pub struct LoadParams<'a> {
    pub model: &'a Path,
    pub threads: u32,
    pub kv_type: KvType,
    /// Context in tokens.
    pub context: u32,
    /// Pass llama.cpp's log through to stderr.
    pub engine_log: bool,
}

impl Engine {
    /// Spawns this executable as a worker and loads the model.
    pub fn start(p: &LoadParams) -> Result<Engine> {
        let cmd = WorkerCommand {
            program: std::env::current_exe().context("locating this executable")?,
            args: vec!["engine".into()],
            engine_log: p.engine_log,
        };
        let worker = Worker::spawn(&cmd).context("starting the engine worker")?;
        let loaded = worker
            .load(LoadRequest {
                context: Some(p.context),
                kv_type: p.kv_type,
                ..LoadRequest::new(p.model.to_path_buf(), p.threads)
            })
            .with_context(|| format!("loading {} in the engine worker", p.model.display()))?;
        Ok(Engine {
            worker,
            loaded,
            next_id: 1,
            prefill_prompt: String::new(),
            prefill_tokens: 0,
        })
    }

    /// The llama.cpp build the worker runs.
    pub fn version(&self) -> &str {
        self.worker.engine()
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.worker.pid()
    }

    /// Finds a prompt of `target` tokens (or as close as the tokenizer
    /// allows) by trying lengths; every probe is a full prefill, so this is
    /// also the prefill warm-up.
    pub fn calibrate_prefill(&mut self, target: u32) -> Result<()> {
        let target = i64::from(target);
        let mut words = target as usize;
        let mut best: Option<(i64, usize, u32)> = None;
        for _ in 0..CALIBRATION_PROBES {
            let text = filler(words);
            let (_, stats) = self.generate(&text, 1)?;
            let tokens = i64::from(stats.prompt_tokens);
            let miss = (tokens - target).abs();
            if best.is_none_or(|(m, _, _)| miss < m) {
                best = Some((miss, words, stats.prompt_tokens));
            }
            if miss == 0 {
                break;
            }
            // Tokens grow about linearly with words; step at least one word.
            let per_word = tokens as f64 / words.max(1) as f64;
            let step = ((target - tokens) as f64 / per_word).round() as i64;
            let step = if step == 0 {
                (target - tokens).signum()
            } else {
                step
            };
            words = (words as i64 + step).max(1) as usize;
        }
        let (_, words, tokens) = best.expect("at least one probe ran");
        self.prefill_prompt = filler(words);
        self.prefill_tokens = tokens;
        Ok(())
    }

    /// Prompt tokens per second of one prefill of the calibrated prompt.
    pub fn prefill(&mut self) -> Result<f64> {
        let prompt = std::mem::take(&mut self.prefill_prompt);
        let result = self.generate(&prompt, 1);
        self.prefill_prompt = prompt;
        Ok(result?.1.prefill_tps())
    }

    /// Generated tokens per second of one greedy generation of up to
    /// `tokens` tokens. A generation that ends early on every prompt is
    /// returned as it is (`generated` says so).
    pub fn decode(&mut self, tokens: u32) -> Result<DecodeSample> {
        let mut longest: Option<DecodeSample> = None;
        for prompt in DECODE_PROMPTS {
            let (finish, stats) = self.generate(prompt, tokens)?;
            let sample = DecodeSample {
                tps: stats.decode_tps(),
                generated: stats.generated_tokens,
                prompt_tokens: stats.prompt_tokens,
            };
            if finish == FinishReason::Length && sample.generated == tokens {
                return Ok(sample);
            }
            if longest.is_none_or(|l| sample.generated > l.generated) {
                longest = Some(sample);
            }
        }
        Ok(longest.expect("there is at least one decode prompt"))
    }

    /// Runs one greedy generation and returns how it ended and its stats.
    fn generate(&mut self, text: &str, max_tokens: u32) -> Result<(FinishReason, GenerationStats)> {
        let id = self.next_id;
        self.next_id += 1;
        self.worker.send(&Request::Generate(GenerateRequest {
            id,
            prompt: Prompt::Raw {
                text: text.to_string(),
            },
            sampling: Sampling::greedy(),
            max_tokens: Some(max_tokens),
            stop: Vec::new(),
            n_keep: None,
            truncate: false,
            // Every prefill is measured whole, never from the last one's cache.
            cache_prompt: false,
            // llama-bench decodes one token per step; so does this side.
            speculative: false,
        }))?;
        loop {
            match self.worker.recv()? {
                Event::Token { .. } => {}
                Event::Done {
                    id: done,
                    finish,
                    stats,
                } if done == id => return Ok((finish, stats)),
                Event::Error {
                    kind,
                    message,
                    id: err,
                } if err.is_none_or(|e| e == id) => {
                    bail!("the engine worker failed ({}): {message}", kind.as_str())
                }
                other => bail!("the engine worker sent an unexpected {other:?}"),
            }
        }
    }

    /// Ends the worker.
    pub fn shutdown(self) {
        self.worker.shutdown(Duration::from_secs(2));
    }
}

/// `words` words of filler text.
fn filler(words: usize) -> String {
    let mut text = String::with_capacity(words * 5);
    for (i, word) in FILLER.iter().cycle().take(words).enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(word);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_the_words_asked_for() {
        assert_eq!(filler(3), "the cat sat");
        assert_eq!(filler(0), "");
        assert_eq!(filler(500).split(' ').count(), 500);
    }
}
