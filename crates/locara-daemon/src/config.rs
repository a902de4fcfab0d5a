//! The daemon's one configuration: file, environment and flags, checked once.
//!
//! [`ServeConfig::build`] takes the three sources, later ones overriding
//! earlier ones (file < environment < flags), and returns a validated
//! config or an error that names the setting, its value and the limit.
//!
//! ```
//! use locara_daemon::config::{RawServeConfig, ServeConfig};
//!
//! let file: RawServeConfig = toml::from_str("parallel = 2\nkeep_alive = \"5m\"").unwrap();
//! let flags = RawServeConfig { port: Some(0), ..Default::default() };
//! let config = ServeConfig::build(&[file, flags]).unwrap();
//! assert_eq!(config.parallel, 2);
//! assert!(config.listen.ip().is_loopback());
//! ```

use locara_core::governor::{KeepAlive, DEFAULT_KEEP_ALIVE, MAX_KEEP_ALIVE};
use locara_core::ladder::LadderConfig;
use locara_core::{KvType, LoadDefaults, DEFAULT_CONTEXT, LARGEST_CONTEXT, SMALLEST_CONTEXT};
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// The port the daemon listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 11480;

/// Bytes of finished conversations each model keeps on disk by default: a
/// few dozen long conversations of a small model (a 4k-token SmolLM2 135M
/// conversation is about 50 MB at q8_0), never more than the free-space
/// floor allows (`locara_engine::disk::free_floor`).
pub const DEFAULT_KV_DISK_CACHE: u64 = 2 << 30;

/// The largest request body, bytes: a long chat history fits many times.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;

/// Settings as written in a file, the environment or flags: every field
/// optional, unknown keys refused.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServeConfig {
    /// Address to listen on (default 127.0.0.1).
    pub host: Option<String>,
    /// Port (default 11480; 0 picks a free one).
    pub port: Option<u16>,
    /// Listening on an address other than loopback must be asked for.
    pub allow_non_loopback: Option<bool>,
    /// Bytes the runtime may hold, e.g. "6GiB" (default: the machine's
    /// budget).
    pub budget: Option<String>,
    /// How long an idle model stays loaded ("3m", "0", "-1").
    pub keep_alive: Option<String>,
    /// Sequences per model that generate at once.
    pub parallel: Option<u32>,
    /// Requests per model that may wait beyond those.
    pub queue: Option<u32>,
    /// Context per sequence, tokens, unless a request names one.
    pub context: Option<u32>,
    /// K/V cache type: q8_0, f16 or q4_0; unset, the backend's default
    /// (`Backend::default_kv_type`: f16 on the CPU, q8_0 with a GPU).
    pub kv_type: Option<String>,
    /// Bytes of finished conversations each model's worker may keep
    /// outside its K/V pool, as saved state ("512MiB"; "0" keeps none;
    /// default: 5 % of the budget, at most 1 GiB).
    pub kv_ram_cache: Option<String>,
    /// Bytes of finished conversations each model may keep on disk, in
    /// `<home>/kv-cache/<model sha256>/<kv_type>/`, written when its worker unloads
    /// ("2GiB", the default; "0" keeps none).
    pub kv_disk_cache: Option<String>,
    /// CPU threads per worker (default: the performance cores).
    pub threads: Option<u32>,
    /// How long in-flight responses may run on after SIGTERM ("10s").
    pub shutdown_grace: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: Option<u64>,
    /// Single-user set-up: requests need no token (default false).
    pub tokenless: Option<bool>,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API;
    /// requests with any other `Origin` header are refused.
    pub allowed_origins: Option<Vec<String>>,
    /// Pressure at warn unloads models idle longer than this ("30s").
    pub pressure_idle_grace: Option<String>,
    /// Pressure restrictions lift after reports stay lower this long ("30s").
    pub pressure_quiet_period: Option<String>,
    /// `max_tokens` cap of requests that start under pressure.
    pub pressure_max_tokens: Option<u32>,
    /// Tokens in-flight responses may still generate at critical.
    pub pressure_remaining_tokens: Option<u32>,
    /// Whether the daemon watches the OS's memory pressure: "watch"
    /// (default) or "ignore" (no OS watch; only a simulation moves the
    /// ladder).
    pub pressure: Option<String>,
    /// Whether the daemon follows the machine's power and thermal state:
    /// "watch" (default: battery, Low Power Mode and heat lower what the
    /// runtime uses) or "ignore" (only `locara power simulate` does).
    pub power: Option<String>,
}

impl RawServeConfig {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<RawServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Settings from `LOCARA_HOST`, `LOCARA_PORT`, `LOCARA_BUDGET`,
    /// `LOCARA_KEEP_ALIVE`, `LOCARA_PARALLEL`, `LOCARA_CONTEXT`,
    /// `LOCARA_KV_TYPE`, given as a lookup so tests need no process
    /// environment.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<RawServeConfig, ConfigError> {
        let number = |key: &'static str| -> Result<Option<u64>, ConfigError> {
            get(key)
                .filter(|v| !v.is_empty())
                .map(|v| {
                    v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                        field: key,
                        value: v.clone(),
                        limit: "a whole number".into(),
                    })
                })
                .transpose()
        };
        let narrow =
            |key: &'static str, n: Option<u64>, max: u64| -> Result<Option<u64>, ConfigError> {
                match n {
                    Some(n) if n > max => Err(ConfigError::Invalid {
                        field: key,
                        value: n.to_string(),
                        limit: format!("at most {max}"),
                    }),
                    other => Ok(other),
                }
            };
        let text = |key: &str| get(key).filter(|v| !v.is_empty());
        Ok(RawServeConfig {
            host: text("LOCARA_HOST"),
            port: narrow("LOCARA_PORT", number("LOCARA_PORT")?, 65535)?.map(|n| n as u16),
            budget: text("LOCARA_BUDGET"),
            keep_alive: text("LOCARA_KEEP_ALIVE"),
            parallel: narrow("LOCARA_PARALLEL", number("LOCARA_PARALLEL")?, 256)?.map(|n| n as u32),
            context: narrow("LOCARA_CONTEXT", number("LOCARA_CONTEXT")?, u32::MAX.into())?
                .map(|n| n as u32),
            kv_type: text("LOCARA_KV_TYPE"),
            ..Default::default()
        })
    }

    /// `other`'s settings where it has them, else ours.
    fn overlay(self, other: &RawServeConfig) -> RawServeConfig {
        let o = other.clone();
        RawServeConfig {
            host: o.host.or(self.host),
            port: o.port.or(self.port),
            allow_non_loopback: o.allow_non_loopback.or(self.allow_non_loopback),
            budget: o.budget.or(self.budget),
            keep_alive: o.keep_alive.or(self.keep_alive),
            parallel: o.parallel.or(self.parallel),
            queue: o.queue.or(self.queue),
            context: o.context.or(self.context),
            kv_type: o.kv_type.or(self.kv_type),
            kv_ram_cache: o.kv_ram_cache.or(self.kv_ram_cache),
            kv_disk_cache: o.kv_disk_cache.or(self.kv_disk_cache),
            threads: o.threads.or(self.threads),
            shutdown_grace: o.shutdown_grace.or(self.shutdown_grace),
            max_body_bytes: o.max_body_bytes.or(self.max_body_bytes),
            tokenless: o.tokenless.or(self.tokenless),
            allowed_origins: o.allowed_origins.or(self.allowed_origins),
            pressure_idle_grace: o.pressure_idle_grace.or(self.pressure_idle_grace),
            pressure_quiet_period: o.pressure_quiet_period.or(self.pressure_quiet_period),
            pressure_max_tokens: o.pressure_max_tokens.or(self.pressure_max_tokens),
            pressure_remaining_tokens: o
                .pressure_remaining_tokens
                .or(self.pressure_remaining_tokens),
            pressure: o.pressure.or(self.pressure),
            power: o.power.or(self.power),
        }
    }
}

/// The checked configuration of `locara serve`.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Bytes the runtime may hold; `None`: the machine's budget, which the
    /// caller resolves.
    pub budget: Option<u64>,
    pub keep_alive: KeepAlive,
    /// Sequences per model that generate at once.
    pub parallel: u32,
    /// Requests per model that may wait beyond `parallel`.
    pub queue: u32,
    /// Context per sequence, tokens, unless a request names one.
    pub context: u32,
    pub kv_type: KvType,
    /// Bytes of each worker's RAM tier; `None`: [`ServeConfig::kv_ram_cache_for`].
    pub kv_ram_cache: Option<u64>,
    /// Bytes of each model's disk tier (0: none);
    /// [`DEFAULT_KV_DISK_CACHE`] unless set.
    pub kv_disk_cache: u64,
    /// CPU threads per worker; `None`: the performance cores.
    pub threads: Option<u32>,
    pub shutdown_grace: Duration,
    /// Largest request body, bytes.
    pub max_body_bytes: u64,
    /// The pressure ladder's settings.
    pub ladder: LadderConfig,
    /// Whether the OS's memory pressure reaches the ladder.
    pub os_pressure: OsPressure,
    /// The machine's power and thermal state is polled and acted on
    /// (`power = "watch"`, the default); false: only a simulation moves the
    /// power policy (benchmarks on a laptop on battery).
    pub watch_power: bool,
    /// Web origins allowed to call the API (none by default).
    pub allowed_origins: Vec<String>,
    /// Requests need no token (single-user set-up; off by default).
    pub tokenless: bool,
}

/// Whether the daemon listens to the OS's memory pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OsPressure {
    /// The OS's pressure level drives the ladder (the default).
    #[default]
    Watch,
    /// No OS watch is started: the ladder moves only when a simulation
    /// (`locara pressure simulate`) tells it to. For measuring what the
    /// governor's response is worth to other processes, and for machines
    /// whose pressure readings mislead.
    Ignore,
}

impl OsPressure {
    /// The setting's word: `watch` or `ignore`.
    pub fn as_str(self) -> &'static str {
        match self {
            OsPressure::Watch => "watch",
            OsPressure::Ignore => "ignore",
        }
    }
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the config file {path}: {message}")]
    Read { path: String, message: String },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field} = {value:?} is not allowed: {limit}")]
    Invalid {
        field: &'static str,
        value: String,
        limit: String,
    },
}

impl ConfigError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_read",
            ConfigError::Parse { .. } => "config_parse",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }
}

/// A duration setting (`30s`, `5m`, `0`), `default` when absent, at most
/// `max`; `limit` says what is allowed.
fn duration(
    field: &'static str,
    text: Option<&str>,
    default: Duration,
    max: Duration,
    limit: &str,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match KeepAlive::parse(text) {
        Ok(KeepAlive::For(d)) if d <= max => Ok(d),
        Ok(KeepAlive::UnloadWhenDone) => Ok(Duration::ZERO),
        _ => Err(invalid(field, text, limit)),
    }
}

/// A tier's size: a size such as "512MiB", or "0" for none (which
/// `parse_size` refuses: a budget of 0 bytes is a mistake, a tier of 0 a
/// choice).
fn cache_size(field: &'static str, text: &str) -> Result<u64, ConfigError> {
    if text.trim() == "0" {
        return Ok(0);
    }
    locara_core::bytes::parse_size(text).map_err(|e| invalid(field, text, e.to_string()))
}

fn invalid(field: &'static str, value: impl ToString, limit: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        value: value.to_string(),
        limit: limit.into(),
    }
}

impl ServeConfig {
    /// The bytes of each worker's RAM tier under a budget of `budget`
    /// bytes: the configured figure, else 5 % of the budget, at most 1 GiB
    /// (a few long conversations of a small model; the worker's measured
    /// footprint includes it, so admission counts it).
    pub fn kv_ram_cache_for(&self, budget: u64) -> u64 {
        self.kv_ram_cache.unwrap_or((budget / 20).min(1 << 30))
    }

    /// The context and K/V type a load gets when the app (or request) names
    /// none.
    pub fn load_defaults(&self) -> LoadDefaults {
        LoadDefaults {
            context: self.context,
            kv_type: self.kv_type,
        }
    }

    /// Merges the sources (each overriding the ones before it) and checks
    /// every setting.
    pub fn build(sources: &[RawServeConfig]) -> Result<ServeConfig, ConfigError> {
        let raw = sources
            .iter()
            .fold(RawServeConfig::default(), |acc, s| acc.overlay(s));
        let ip: IpAddr = match &raw.host {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) if h == "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(h) => h
                .parse()
                .map_err(|_| invalid("host", h, "an IP address such as 127.0.0.1 or ::1"))?,
        };
        if !ip.is_loopback() && raw.allow_non_loopback != Some(true) {
            return Err(invalid(
                "host",
                ip,
                "a loopback address unless allow_non_loopback (--allow-non-loopback) is set: \
                 the API would be open to the network",
            ));
        }
        let listen = SocketAddr::new(ip, raw.port.unwrap_or(DEFAULT_PORT));
        let budget = raw
            .budget
            .as_deref()
            .map(|b| {
                locara_core::bytes::parse_size(b).map_err(|e| invalid("budget", b, e.to_string()))
            })
            .transpose()?;
        let kv_ram_cache = raw
            .kv_ram_cache
            .as_deref()
            .map(|b| cache_size("kv_ram_cache", b))
            .transpose()?;
        let kv_disk_cache = match raw.kv_disk_cache.as_deref() {
            None => DEFAULT_KV_DISK_CACHE,
            Some(b) => cache_size("kv_disk_cache", b)?,
        };
        let keep_alive = match raw.keep_alive.as_deref() {
            None => DEFAULT_KEEP_ALIVE,
            Some(k) => KeepAlive::parse(k).map_err(|e| invalid("keep_alive", k, e.to_string()))?,
        };
        let parallel = raw.parallel.unwrap_or(4);
        if !(1..=64).contains(&parallel) {
            return Err(invalid("parallel", parallel, "1 to 64"));
        }
        let queue = raw.queue.unwrap_or(16);
        if queue > 4096 {
            return Err(invalid("queue", queue, "at most 4096"));
        }
        let context = raw.context.unwrap_or(DEFAULT_CONTEXT);
        if !(SMALLEST_CONTEXT..=LARGEST_CONTEXT).contains(&context) {
            return Err(invalid(
                "context",
                context,
                format!("{SMALLEST_CONTEXT} to {LARGEST_CONTEXT} tokens"),
            ));
        }
        let kv_type = match raw.kv_type.as_deref() {
            // What this machine's backend runs fastest with.
            None => locara_platform::estimate_backend().default_kv_type(),
            Some(k) => k
                .parse()
                .map_err(|_| invalid("kv_type", k, "q8_0, f16 or q4_0"))?,
        };
        if let Some(t) = raw.threads {
            if !(1..=512).contains(&t) {
                return Err(invalid("threads", t, "1 to 512"));
            }
        }
        let shutdown_grace = duration(
            "shutdown_grace",
            raw.shutdown_grace.as_deref(),
            Duration::from_secs(10),
            Duration::from_secs(600),
            "a duration up to 10m, e.g. 10s",
        )?;
        let max_body_bytes = raw.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=256 << 20).contains(&max_body_bytes) {
            return Err(invalid(
                "max_body_bytes",
                max_body_bytes,
                "1 KiB to 256 MiB",
            ));
        }
        let allowed_origins = raw.allowed_origins.clone().unwrap_or_default();
        for o in &allowed_origins {
            let ok = o.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/')
            });
            if !ok {
                return Err(invalid(
                    "allowed_origins",
                    o,
                    "an origin such as http://localhost:3000 (scheme, host, optional port; no path)",
                ));
            }
        }
        let defaults = LadderConfig::default();
        let ladder = LadderConfig {
            idle_grace: duration(
                "pressure_idle_grace",
                raw.pressure_idle_grace.as_deref(),
                defaults.idle_grace,
                MAX_KEEP_ALIVE,
                "a duration such as 30s",
            )?,
            quiet_period: duration(
                "pressure_quiet_period",
                raw.pressure_quiet_period.as_deref(),
                defaults.quiet_period,
                MAX_KEEP_ALIVE,
                "a duration such as 30s",
            )?,
            queued_max_tokens_cap: raw
                .pressure_max_tokens
                .unwrap_or(defaults.queued_max_tokens_cap),
            critical_remaining_tokens_cap: raw
                .pressure_remaining_tokens
                .unwrap_or(defaults.critical_remaining_tokens_cap),
            ..defaults
        };
        ladder.validate().map_err(|e| ConfigError::Invalid {
            field: e.field,
            value: e.value.clone(),
            limit: e.limit.to_string(),
        })?;
        let os_pressure = match raw.pressure.as_deref() {
            None | Some("watch") => OsPressure::Watch,
            Some("ignore") => OsPressure::Ignore,
            Some(other) => return Err(invalid("pressure", other, "watch or ignore")),
        };
        let watch_power = match raw.power.as_deref() {
            None | Some("watch") => true,
            Some("ignore") => false,
            Some(other) => return Err(invalid("power", other, "watch or ignore")),
        };
        Ok(ServeConfig {
            watch_power,
            listen,
            budget,
            keep_alive,
            parallel,
            queue,
            context,
            kv_type,
            kv_ram_cache,
            kv_disk_cache,
            threads: raw.threads,
            shutdown_grace,
            max_body_bytes,
            ladder,
            os_pressure,
            allowed_origins,
            tokenless: raw.tokenless.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_text: &str) -> Result<ServeConfig, ConfigError> {
        ServeConfig::build(&[toml::from_str(toml_text).unwrap()])
    }

    #[test]
    fn defaults_are_loopback_and_the_design_defaults() {
        let c = build("").unwrap();
        assert_eq!(c.listen, "127.0.0.1:11480".parse().unwrap());
        assert_eq!(c.keep_alive, DEFAULT_KEEP_ALIVE);
        let kv = locara_platform::estimate_backend().default_kv_type();
        assert_eq!((c.parallel, c.context, c.kv_type), (4, 8192, kv));
    }

    #[test]
    fn later_sources_override_earlier_ones() {
        let file: RawServeConfig = toml::from_str("port = 1\nparallel = 2").unwrap();
        let env = RawServeConfig::from_env(|k| (k == "LOCARA_PORT").then(|| "2".into())).unwrap();
        let flags = RawServeConfig {
            parallel: Some(3),
            ..Default::default()
        };
        let c = ServeConfig::build(&[file, env, flags]).unwrap();
        assert_eq!((c.listen.port(), c.parallel), (2, 3));
    }

    #[test]
    fn bad_settings_name_the_field_value_and_limit() {
        let e = build("parallel = 0").unwrap_err().to_string();
        assert_eq!(e, "parallel = \"0\" is not allowed: 1 to 64");
        let e = build("host = \"0.0.0.0\"").unwrap_err().to_string();
        assert!(
            e.contains("host = \"0.0.0.0\"") && e.contains("loopback"),
            "{e}"
        );
        assert!(build("host = \"0.0.0.0\"\nallow_non_loopback = true").is_ok());
        let e = build("kv_type = \"q5\"").unwrap_err().to_string();
        assert!(e.contains("q8_0, f16 or q4_0"), "{e}");
        let e = build("budget = \"lots\"").unwrap_err().to_string();
        assert!(e.starts_with("budget = \"lots\""), "{e}");
        let e = build("keep_alive = \"soon\"").unwrap_err().to_string();
        assert!(e.starts_with("keep_alive = \"soon\""), "{e}");
        let e = RawServeConfig::from_env(|k| (k == "LOCARA_PORT").then(|| "70000".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOCARA_PORT") && e.contains("65535"), "{e}");
    }

    #[test]
    fn os_pressure_is_watched_unless_ignored() {
        assert_eq!(build("").unwrap().os_pressure, OsPressure::Watch);
        assert_eq!(
            build("pressure = \"watch\"").unwrap().os_pressure,
            OsPressure::Watch
        );
        let flags = RawServeConfig {
            pressure: Some("ignore".into()),
            ..Default::default()
        };
        let file: RawServeConfig = toml::from_str("pressure = \"watch\"").unwrap();
        let c = ServeConfig::build(&[file, flags]).unwrap();
        assert_eq!(c.os_pressure, OsPressure::Ignore);
        assert_eq!(c.os_pressure.as_str(), "ignore");
        let e = build("pressure = \"off\"").unwrap_err().to_string();
        assert_eq!(e, "pressure = \"off\" is not allowed: watch or ignore");
        assert!(build("").unwrap().watch_power);
        assert!(!build("power = \"ignore\"").unwrap().watch_power);
        let e = build("power = \"off\"").unwrap_err().to_string();
        assert_eq!(e, "power = \"off\" is not allowed: watch or ignore");
    }

    #[test]
    fn the_disk_tier_is_2_gib_unless_set_and_0_turns_it_off() {
        assert_eq!(build("").unwrap().kv_disk_cache, 2 << 30);
        assert_eq!(
            build("kv_disk_cache = \"512MiB\"").unwrap().kv_disk_cache,
            512 << 20
        );
        assert_eq!(build("kv_disk_cache = \"0\"").unwrap().kv_disk_cache, 0);
        let e = build("kv_disk_cache = \"lots\"").unwrap_err().to_string();
        assert!(e.starts_with("kv_disk_cache = \"lots\""), "{e}");
        // The RAM tier's "0" keeps none too, as its setting says.
        assert_eq!(build("kv_ram_cache = \"0\"").unwrap().kv_ram_cache, Some(0));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused_by_name() {
        let e = toml::from_str::<RawServeConfig>("paralel = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("paralel"), "{e}");
    }
}
