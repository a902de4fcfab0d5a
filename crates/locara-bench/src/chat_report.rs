//! The chat scenario's result (`--only chat8`, see [`crate::chat`]): time
//! to first token turn by turn, and the footprint after one chat, both
//! servers at their defaults. A table for people, JSON for scripts.

use crate::serve_report::{SideInfo, Target, Versus};
use crate::stats::Summary;
use locara_platform::ProcessFootprint;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

const MIB: f64 = 1024.0 * 1024.0;

/// One turn of the conversation on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTurn {
    /// 1 for the first user message.
    pub turn: u32,
    /// The prompt's tokens as each server counted them (`usage`), through
    /// its own chat template.
    pub llama_server_prompt_tokens: Option<u32>,
    pub locara_prompt_tokens: Option<u32>,
    /// Median of the prompt tokens each server said it took from its cache
    /// rather than prefilled; `None` where it does not say.
    pub llama_server_cached_tokens: Option<f64>,
    pub locara_cached_tokens: Option<f64>,
    /// Median of each server's own time for the prompt, milliseconds,
    /// where it says: the rest of the time to first token is the way
    /// there and back (HTTP, tokenizing, scheduling).
    pub llama_server_prefill_ms: Option<f64>,
    pub locara_prefill_ms: Option<f64>,
    /// Time to first token, milliseconds: request written to first text.
    pub ttft_ms: Versus,
}

/// The footprints of the processes that hold each side's model, measured
/// by the OS at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Footprints {
    /// The llama-server process (model, K/V cache, prompt cache and HTTP
    /// server in one).
    pub llama_server: Option<ProcessFootprint>,
    /// Locara's engine worker: the process that holds the model and its
    /// K/V cache.
    pub locara_worker: Option<ProcessFootprint>,
    /// Locara's daemon (HTTP server and governor), shown apart and not in
    /// the ratio: the goal compares the processes that hold a model.
    pub locara_daemon: Option<ProcessFootprint>,
}

impl Footprints {
    /// Locara's worker over llama-server, footprint against footprint;
    /// `None` without both, or against a zero footprint.
    pub fn ratio(&self) -> Option<f64> {
        let (Some(l), Some(o)) = (self.llama_server, self.locara_worker) else {
            return None;
        };
        (l.footprint > 0).then(|| o.footprint as f64 / l.footprint as f64)
    }
}

/// The footprint goal: Locara's worker after one chat at most `target`
/// times llama-server's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FootprintGoal {
    /// `None` when a footprint could not be measured (which fails the goal:
    /// an unmeasured footprint is not a small one).
    pub ratio: Option<f64>,
    pub target: Target,
    pub pass: bool,
}

impl FootprintGoal {
    pub fn new(after_one_chat: &Footprints, target: Target) -> FootprintGoal {
        let ratio = after_one_chat.ratio();
        FootprintGoal {
            pass: ratio.is_some_and(|r| target.met(r)),
            ratio,
            target,
        }
    }
}

/// Everything the chat scenario found.
#[derive(Debug, Serialize)]
pub struct ChatReport {
    pub model: PathBuf,
    /// CPU threads of each server (the one setting both are given).
    pub threads: u32,
    /// `max_tokens` of every turn.
    pub max_tokens: u32,
    /// Measured conversations per side (the one before them, whose
    /// footprint is taken, not counted).
    pub reps: u32,
    /// The system prompt, after each conversation's own first words.
    pub system_prompt: String,
    pub llama_server: SideInfo,
    pub locara: SideInfo,
    /// How each side was started: the command line, and for Locara its
    /// configuration file.
    pub llama_server_command: String,
    pub locara_command: String,
    /// What each server said of the settings its defaults gave it (slots,
    /// context, K/V cache), where it said.
    pub llama_server_settings: Option<String>,
    pub locara_settings: Option<String>,
    pub turns: Vec<ChatTurn>,
    /// After the first conversation, both servers fresh before it.
    pub after_one_chat: Footprints,
    /// After the last conversation, for comparison (prompt caches grow
    /// with conversations); not a goal.
    pub after_last_chat: Footprints,
    /// Conversations each side held in all: the first, the measured ones,
    /// and any discarded because other processes disturbed them.
    pub conversations: u32,
    pub footprint_goal: FootprintGoal,
    /// Share of the machine's CPU time (0 to 1) other processes took during
    /// the measured conversations; Linux only.
    pub others_cpu_share: Option<f64>,
    /// Every turn's ratio and the footprint meet their goals.
    pub pass: bool,
    pub notes: Vec<String>,
}

/// Whether every turn meets its goal and the footprint does.
pub fn all_pass(turns: &[ChatTurn], footprint: &FootprintGoal) -> bool {
    !turns.is_empty() && turns.iter().all(|t| t.ttft_ms.pass) && footprint.pass
}

/// Median of the values that are there; `None` if none is.
pub fn median_of_known<T: Copy + Into<f64>>(values: &[Option<T>]) -> Option<f64> {
    let known: Vec<f64> = values.iter().flatten().map(|&v| v.into()).collect();
    Summary::of(&known).map(|s| s.median)
}

impl ChatReport {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario      chat8: a conversation of {} turns, the whole history sent each turn, both servers at their defaults",
            self.turns.len()
        );
        let _ = writeln!(s, "model         {}", self.model.display());
        let _ = writeln!(
            s,
            "conversation  a system prompt, then {} user messages (about 130 tokens each) with fixed answers (about 100 tokens each) between them; \
             max_tokens {}, greedy; {} reps, each a new conversation, alternating which side goes first",
            self.turns.len(),
            self.max_tokens,
            self.reps
        );
        let _ = writeln!(
            s,
            "llama-server  {} ({})",
            self.llama_server.version, self.llama_server.location
        );
        let _ = writeln!(s, "  ran as      {}", self.llama_server_command);
        if let Some(settings) = &self.llama_server_settings {
            let _ = writeln!(s, "  defaults    {settings}");
        }
        let _ = writeln!(
            s,
            "Locara        {} ({})",
            self.locara.version, self.locara.location
        );
        let _ = writeln!(s, "  ran as      {}", self.locara_command);
        if let Some(settings) = &self.locara_settings {
            let _ = writeln!(s, "  defaults    {settings}");
        }
        crate::serve_report::machine_line(&mut s, self.others_cpu_share);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<6}{:>15}{:>15}{:>17}{:>30}{:>28}{:>8}{:>9}",
            "turn",
            "prompt tokens",
            "from cache",
            "prefill ms",
            "llama-server first token ms",
            "Locara first token ms",
            "ratio",
            "goal"
        );
        let _ = writeln!(
            s,
            "{:<6}{:>15}{:>15}{:>17}{:>30}{:>28}",
            "",
            "(llama / Loc.)",
            "(llama / Loc.)",
            "(llama / Loc.)",
            "median (range)",
            "median (range)"
        );
        for t in &self.turns {
            let _ = writeln!(
                s,
                "{:<6}{:>15}{:>15}{:>17}{:>30}{:>28}{:>8.3}{:>9} {}",
                t.turn,
                pair(
                    t.llama_server_prompt_tokens.map(f64::from),
                    t.locara_prompt_tokens.map(f64::from)
                ),
                pair(t.llama_server_cached_tokens, t.locara_cached_tokens),
                pair(t.llama_server_prefill_ms, t.locara_prefill_ms),
                ms_cell(&t.ttft_ms.llama_server),
                ms_cell(&t.ttft_ms.locara),
                t.ttft_ms.ratio,
                t.ttft_ms.target.to_string(),
                verdict(t.ttft_ms.pass)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<38}{:>14}{:>16}{:>8}{:>9}",
            "memory after one chat, MiB", "llama-server", "Locara worker", "ratio", "goal"
        );
        let one = &self.after_one_chat;
        let goal = &self.footprint_goal;
        let _ = writeln!(
            s,
            "{:<38}{:>14}{:>16}{:>8}{:>9} {}",
            "  footprint (Anonymous + Swap)",
            mib(one.llama_server.map(|f| f.footprint)),
            mib(one.locara_worker.map(|f| f.footprint)),
            goal.ratio.map_or("?".to_string(), |r| format!("{r:.3}")),
            goal.target.to_string(),
            if goal.ratio.is_none() {
                "not measured"
            } else {
                verdict(goal.pass)
            }
        );
        let _ = writeln!(
            s,
            "{:<38}{:>14}{:>16}",
            "  mapped weights (resident, file)",
            mib(one.llama_server.map(|f| f.mapped_weights)),
            mib(one.locara_worker.map(|f| f.mapped_weights)),
        );
        let _ = writeln!(
            s,
            "{:<38}{:>14}{:>16}",
            "  RSS (counts mapped weights too)",
            mib(one.llama_server.map(|f| f.rss)),
            mib(one.locara_worker.map(|f| f.rss)),
        );
        if let Some(daemon) = one.locara_daemon {
            let _ = writeln!(
                s,
                "Locara's daemon process (HTTP server, governor) held a footprint of {} MiB besides, not in the ratio",
                mib(Some(daemon.footprint))
            );
        }
        let last = &self.after_last_chat;
        let _ = writeln!(
            s,
            "footprint after all {} conversations (not a goal): llama-server {} MiB, Locara worker {} MiB",
            self.conversations,
            mib(last.llama_server.map(|f| f.footprint)),
            mib(last.locara_worker.map(|f| f.footprint))
        );
        let _ = writeln!(
            s,
            "tokens        llama-server: {}; Locara: {}",
            self.llama_server.tokens.describe(),
            self.locara.tokens.describe()
        );
        for note in &self.notes {
            let _ = writeln!(s, "note: {note}");
        }
        let mut verdicts: Vec<String> = self
            .turns
            .iter()
            .map(|t| {
                format!(
                    "turn {} first token {:.3} {}",
                    t.turn,
                    t.ttft_ms.ratio,
                    verdict(t.ttft_ms.pass)
                )
            })
            .collect();
        verdicts.push(match goal.ratio {
            Some(r) => format!("footprint after one chat {r:.3} {}", verdict(goal.pass)),
            None => "footprint after one chat not measured FAIL".to_string(),
        });
        let _ = writeln!(
            s,
            "{}: {}",
            if self.pass { "PASS" } else { "FAIL" },
            verdicts.join(", ")
        );
        s
    }
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "pass"
    } else {
        "FAIL"
    }
}

/// `a / b`, `?` for what is unknown; whole numbers without decimals.
fn pair(a: Option<f64>, b: Option<f64>) -> String {
    let one = |v: Option<f64>| match v {
        Some(v) if v.fract() == 0.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "?".to_string(),
    };
    format!("{} / {}", one(a), one(b))
}

fn ms_cell(s: &Summary) -> String {
    format!("{:.0} ({:.0}–{:.0})", s.median, s.min, s.max)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_string(), |b| format!("{:.1}", b as f64 / MIB))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve_report::TokenCounts;

    fn memory(footprint_mib: u64) -> ProcessFootprint {
        ProcessFootprint {
            footprint: footprint_mib << 20,
            mapped_weights: 98 << 20,
            rss: (footprint_mib + 98) << 20,
        }
    }

    fn turn(n: u32, llama: &[f64], locara: &[f64]) -> ChatTurn {
        ChatTurn {
            turn: n,
            llama_server_prompt_tokens: Some(200 * n),
            locara_prompt_tokens: Some(200 * n - 2),
            llama_server_cached_tokens: Some(f64::from(200 * (n - 1))),
            locara_cached_tokens: None,
            llama_server_prefill_ms: None,
            locara_prefill_ms: None,
            ttft_ms: Versus::new(llama, locara, Target::AtMost(1.0)).unwrap(),
        }
    }

    #[test]
    fn footprint_ratio_is_the_worker_over_llama_server() {
        let f = Footprints {
            llama_server: Some(memory(204)),
            locara_worker: Some(memory(408)),
            locara_daemon: Some(memory(12)),
        };
        assert!((f.ratio().unwrap() - 2.0).abs() < 1e-12);
        let goal = FootprintGoal::new(&f, Target::AtMost(0.6));
        assert!(!goal.pass);
        let small = Footprints {
            locara_worker: Some(memory(120)),
            ..f.clone()
        };
        let goal = FootprintGoal::new(&small, Target::AtMost(0.6));
        assert!(goal.pass, "120 / 204 = 0.588");
        let at_goal = Footprints {
            llama_server: Some(memory(200)),
            locara_worker: Some(memory(120)),
            locara_daemon: None,
        };
        assert!(
            FootprintGoal::new(&at_goal, Target::AtMost(0.6)).pass,
            "the goal itself passes"
        );
    }

    #[test]
    fn an_unmeasured_footprint_fails_the_goal() {
        let f = Footprints {
            llama_server: Some(memory(204)),
            ..Footprints::default()
        };
        assert_eq!(f.ratio(), None);
        let goal = FootprintGoal::new(&f, Target::AtMost(0.6));
        assert!(!goal.pass);
        let zero = Footprints {
            llama_server: Some(ProcessFootprint::default()),
            locara_worker: Some(memory(1)),
            locara_daemon: None,
        };
        assert_eq!(zero.ratio(), None, "no ratio against nothing");
    }

    #[test]
    fn every_turn_and_the_footprint_must_pass() {
        let fast = turn(1, &[700.0, 690.0, 710.0], &[650.0, 640.0, 660.0]);
        let slow = turn(8, &[1050.0], &[15100.0]);
        assert!(fast.ttft_ms.pass);
        assert!(!slow.ttft_ms.pass);
        let good = FootprintGoal {
            ratio: Some(0.5),
            target: Target::AtMost(0.6),
            pass: true,
        };
        let bad = FootprintGoal {
            ratio: None,
            target: Target::AtMost(0.6),
            pass: false,
        };
        assert!(all_pass(std::slice::from_ref(&fast), &good));
        assert!(!all_pass(&[fast.clone(), slow], &good));
        assert!(!all_pass(&[fast], &bad));
        assert!(!all_pass(&[], &good), "no turns measured is no pass");
        // A ratio of exactly 1.0 meets "≤ 1.0".
        assert!(turn(2, &[800.0], &[800.0]).ttft_ms.pass);
    }

    #[test]
    fn medians_skip_what_a_server_did_not_say() {
        assert_eq!(
            median_of_known(&[Some(3), None, Some(1), Some(2)]),
            Some(2.0)
        );
        assert_eq!(median_of_known::<u32>(&[None, None]), None);
    }

    #[test]
    fn table_shows_turns_footprints_and_the_verdict() {
        let side = |v: &str| SideInfo {
            location: "/x".into(),
            version: v.into(),
            tokens: TokenCounts::default(),
        };
        let after = Footprints {
            llama_server: Some(memory(204)),
            locara_worker: Some(memory(408)),
            locara_daemon: Some(memory(12)),
        };
        let footprint_goal = FootprintGoal::new(&after, Target::AtMost(0.6));
        let turns = vec![
            turn(1, &[690.0, 700.0, 680.0], &[1100.0, 1150.0, 1080.0]),
            turn(2, &[700.0], &[650.0]),
        ];
        let report = ChatReport {
            model: "/m/smollm2.gguf".into(),
            threads: 2,
            max_tokens: 32,
            reps: 3,
            system_prompt: "You are".into(),
            llama_server: side("llama-cpp-python 0.3.36"),
            locara: side("locara 0.1.0"),
            llama_server_command: "llama-server -m /m/smollm2.gguf --port 0 -t 2".into(),
            locara_command: "locara serve --port 0 --config locara.toml (threads = 2)".into(),
            llama_server_settings: Some("4 slots".into()),
            locara_settings: None,
            pass: all_pass(&turns, &footprint_goal),
            turns,
            after_last_chat: after.clone(),
            after_one_chat: after,
            conversations: 4,
            footprint_goal,
            others_cpu_share: Some(0.01),
            notes: vec!["templates differ".into()],
        };
        let table = report.table();
        assert!(
            table.contains("llama-server -m /m/smollm2.gguf --port 0 -t 2"),
            "{table}"
        );
        assert!(table.contains("690 (680–700)"), "{table}");
        assert!(table.contains("200 / 198"), "{table}");
        assert!(table.contains("0 / ?"), "{table}");
        assert!(table.contains("204.0"), "{table}");
        assert!(table.contains("408.0"), "{table}");
        assert!(table.contains("2.000"), "{table}");
        assert!(table.contains("held a footprint of 12.0 MiB"), "{table}");
        assert!(table.contains("after all 4 conversations"), "{table}");
        assert!(table.contains("note: templates differ"), "{table}");
        assert!(
            table.contains("FAIL: turn 1 first token 1.594 FAIL, turn 2 first token 0.929 pass, footprint after one chat 2.000 FAIL"),
            "{table}"
        );
        // Scripts read the same figures from the JSON.
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["turns"][1]["turn"], 2);
        assert_eq!(json["turns"][0]["ttft_ms"]["llama_server"]["median"], 690.0);
        assert_eq!(json["turns"][0]["ttft_ms"]["target"]["at_most"], 1.0);
        assert_eq!(json["footprint_goal"]["ratio"], 2.0);
        assert_eq!(
            json["after_one_chat"]["locara_worker"]["footprint"],
            408u64 << 20
        );
        assert_eq!(json["pass"], false);
    }
}
