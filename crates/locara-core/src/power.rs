//! Power and thermal policy: what the runtime gives up on battery, in Low
//! Power Mode and when the machine runs hot.
//!
//! The platform crate reads the machine's [`PowerState`] (macOS
//! `NSProcessInfo` and `pmset`; Linux sysfs); a simulation
//! (`locara power simulate`) may stand in for it. [`PowerMode`] names the
//! strongest condition in force and [`limits`] turns it into
//! [`PowerLimits`], which the controller carries out:
//!
//! | mode | what changes |
//! |---|---|
//! | `normal` | nothing |
//! | `battery`, `low-power` | half the performance cores for the busy workers (at least one), one sequence per new load, no speculative drafting, new requests capped at 512 tokens |
//! | `thermal-serious` | background generations pause (even with no interactive work), no drafting, new requests capped at 256 tokens |
//! | `thermal-critical` | all of serious, and new background requests are refused (503, `Retry-After`) |
//!
//! Battery and heat add up: on battery and hot, both rows apply (the lower
//! cap wins). A state the OS does not report (`None`, thermal `unknown`)
//! counts as mains power and a cool machine: a desktop or a VM has no
//! battery to save.
//!
//! ```
//! use locara_core::power::{limits, PowerConfig, PowerMode, PowerState};
//!
//! let on_battery = PowerMode::Battery.state().unwrap();
//! let l = limits(&on_battery, 8, &PowerConfig::default());
//! assert_eq!(l.cores, Some(4));
//! assert!(!l.drafting);
//! assert_eq!(limits(&PowerState::default(), 8, &PowerConfig::default()), Default::default());
//! ```

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How warm the machine runs, in `NSProcessInfoThermalState`'s steps.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ThermalState {
    /// The OS cannot tell.
    #[default]
    Unknown,
    Nominal,
    /// Fans up; performance not yet reduced.
    Fair,
    /// The OS is throttling; generation slows down.
    Serious,
    /// Heavy throttling; the machine needs to cool down.
    Critical,
}

impl ThermalState {
    pub fn as_str(self) -> &'static str {
        match self {
            ThermalState::Unknown => "unknown",
            ThermalState::Nominal => "nominal",
            ThermalState::Fair => "fair",
            ThermalState::Serious => "serious",
            ThermalState::Critical => "critical",
        }
    }
}

impl fmt::Display for ThermalState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Power and heat right now. `None` means the OS does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PowerState {
    pub thermal: ThermalState,
    /// Low Power Mode (macOS) or the ACPI `low-power` platform profile (Linux).
    pub low_power_mode: Option<bool>,
    /// Running from a battery rather than mains power.
    pub on_battery: Option<bool>,
}

/// The strongest power condition in force, by the names
/// `locara power simulate` takes.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PowerMode {
    /// Mains power (or unknown), not hot.
    #[default]
    Normal,
    Battery,
    LowPower,
    ThermalSerious,
    ThermalCritical,
}

impl PowerMode {
    pub const ALL: [PowerMode; 5] = [
        PowerMode::Normal,
        PowerMode::Battery,
        PowerMode::LowPower,
        PowerMode::ThermalSerious,
        PowerMode::ThermalCritical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PowerMode::Normal => "normal",
            PowerMode::Battery => "battery",
            PowerMode::LowPower => "low-power",
            PowerMode::ThermalSerious => "thermal-serious",
            PowerMode::ThermalCritical => "thermal-critical",
        }
    }

    /// The strongest condition of `state`: heat first (it can harm the
    /// machine), then Low Power Mode (the user asked), then battery.
    pub fn of(state: &PowerState) -> PowerMode {
        match state.thermal {
            ThermalState::Critical => PowerMode::ThermalCritical,
            ThermalState::Serious => PowerMode::ThermalSerious,
            _ if state.low_power_mode == Some(true) => PowerMode::LowPower,
            _ if state.on_battery == Some(true) => PowerMode::Battery,
            _ => PowerMode::Normal,
        }
    }

    /// The state a simulation of this mode stands in with; `None` for
    /// `normal`, which ends a simulation (the OS's state applies again).
    pub fn state(self) -> Option<PowerState> {
        let cool = PowerState {
            thermal: ThermalState::Nominal,
            low_power_mode: Some(false),
            on_battery: Some(false),
        };
        match self {
            PowerMode::Normal => None,
            PowerMode::Battery => Some(PowerState {
                on_battery: Some(true),
                ..cool
            }),
            PowerMode::LowPower => Some(PowerState {
                low_power_mode: Some(true),
                ..cool
            }),
            PowerMode::ThermalSerious => Some(PowerState {
                thermal: ThermalState::Serious,
                ..cool
            }),
            PowerMode::ThermalCritical => Some(PowerState {
                thermal: ThermalState::Critical,
                ..cool
            }),
        }
    }
}

impl fmt::Display for PowerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// A power mode name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown power mode {0:?}: expected normal, battery, low-power, thermal-serious or thermal-critical")]
pub struct ParsePowerModeError(pub String);

impl FromStr for PowerMode {
    type Err = ParsePowerModeError;

    fn from_str(s: &str) -> Result<PowerMode, ParsePowerModeError> {
        PowerMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| ParsePowerModeError(s.to_string()))
    }
}

/// The figures of the power policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerConfig {
    /// The most tokens a request that starts on battery or in Low Power
    /// Mode generates: a long answer costs battery in proportion.
    pub saving_max_tokens: u32,
    /// Sequences per new load on battery or in Low Power Mode: one
    /// sequence keeps the batch (and the cores) small.
    pub saving_parallel: u32,
    /// The most tokens a request that starts while the machine is hot
    /// (thermal serious or critical) generates; the ladder's warn cap.
    pub thermal_max_tokens: u32,
    /// What a background request refused at thermal critical is told to
    /// wait: macOS leaves critical within minutes once the load is off.
    pub thermal_retry_after: Duration,
}

impl Default for PowerConfig {
    fn default() -> PowerConfig {
        PowerConfig {
            saving_max_tokens: 512,
            saving_parallel: 1,
            thermal_max_tokens: 256,
            thermal_retry_after: Duration::from_secs(60),
        }
    }
}

/// What the power state changes; the default changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PowerLimits {
    /// The most cores the busy workers share (`None`: every performance
    /// core).
    pub cores: Option<u32>,
    /// The most sequences a new load gets (`None`: the configured ones).
    pub parallel: Option<u32>,
    /// The most tokens a request that starts now generates.
    pub max_tokens: Option<u32>,
    /// Workers may draft tokens speculatively (wasted work when a draft is
    /// rejected: not worth it on battery or when hot).
    pub drafting: bool,
    /// Background generations pause, interactive work or not.
    pub pause_background: bool,
    /// New background requests are refused with this `Retry-After`,
    /// seconds.
    pub refuse_background_retry_after_s: Option<u64>,
}

impl Default for PowerLimits {
    fn default() -> PowerLimits {
        PowerLimits {
            cores: None,
            parallel: None,
            max_tokens: None,
            drafting: true,
            pause_background: false,
            refuse_background_retry_after_s: None,
        }
    }
}

impl PowerLimits {
    /// What changes, in words, for logs and `locara ps`: `"nothing"` when
    /// nothing does.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cores {
            parts.push(format!("{c} core(s) for the models"));
        }
        if let Some(p) = self.parallel {
            parts.push(format!("{p} sequence(s) per new load"));
        }
        if let Some(t) = self.max_tokens {
            parts.push(format!("new requests capped at {t} tokens"));
        }
        if !self.drafting {
            parts.push("no speculative drafting".to_string());
        }
        if self.pause_background {
            parts.push("background generations paused".to_string());
        }
        if let Some(s) = self.refuse_background_retry_after_s {
            parts.push(format!("new background requests refused (retry in {s} s)"));
        }
        if parts.is_empty() {
            "nothing".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// What `state` changes on a machine whose busy workers share `cores`
/// performance cores (see the module's table).
pub fn limits(state: &PowerState, cores: u32, config: &PowerConfig) -> PowerLimits {
    let mut l = PowerLimits::default();
    let saving = state.on_battery == Some(true) || state.low_power_mode == Some(true);
    let hot = state.thermal >= ThermalState::Serious;
    let cap = |l: &mut PowerLimits, t: u32| {
        l.max_tokens = Some(l.max_tokens.map_or(t, |m| m.min(t)));
    };
    if saving {
        let cores = cores.max(1);
        let half = (cores / 2).max(1);
        l.cores = (half < cores).then_some(half);
        l.parallel = Some(config.saving_parallel.max(1));
        l.drafting = false;
        cap(&mut l, config.saving_max_tokens);
    }
    if hot {
        l.drafting = false;
        l.pause_background = true;
        cap(&mut l, config.thermal_max_tokens);
    }
    if state.thermal >= ThermalState::Critical {
        l.refuse_background_retry_after_s = Some(config.thermal_retry_after.as_secs().max(1));
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mode: PowerMode) -> PowerState {
        mode.state().unwrap_or_default()
    }

    #[test]
    fn each_mode_changes_what_the_table_says() {
        let c = PowerConfig::default();
        assert_eq!(
            limits(&state(PowerMode::Normal), 8, &c),
            PowerLimits::default()
        );
        for saving in [PowerMode::Battery, PowerMode::LowPower] {
            let l = limits(&state(saving), 8, &c);
            assert_eq!(
                l,
                PowerLimits {
                    cores: Some(4),
                    parallel: Some(1),
                    max_tokens: Some(512),
                    drafting: false,
                    pause_background: false,
                    refuse_background_retry_after_s: None,
                },
                "{saving}"
            );
        }
        let serious = limits(&state(PowerMode::ThermalSerious), 8, &c);
        assert_eq!(
            serious,
            PowerLimits {
                cores: None,
                parallel: None,
                max_tokens: Some(256),
                drafting: false,
                pause_background: true,
                refuse_background_retry_after_s: None,
            }
        );
        let critical = limits(&state(PowerMode::ThermalCritical), 8, &c);
        assert_eq!(
            critical,
            PowerLimits {
                refuse_background_retry_after_s: Some(60),
                ..serious
            }
        );
    }

    #[test]
    fn battery_and_heat_add_up_and_the_lower_cap_wins() {
        let hot_on_battery = PowerState {
            thermal: ThermalState::Serious,
            low_power_mode: None,
            on_battery: Some(true),
        };
        let l = limits(&hot_on_battery, 2, &PowerConfig::default());
        assert_eq!(l.cores, Some(1));
        assert_eq!(l.max_tokens, Some(256));
        assert!(l.pause_background && !l.drafting);
        assert_eq!(PowerMode::of(&hot_on_battery), PowerMode::ThermalSerious);
    }

    #[test]
    fn one_core_stays_one_core_and_unknown_counts_as_mains() {
        let l = limits(&state(PowerMode::Battery), 1, &PowerConfig::default());
        assert_eq!(l.cores, None, "half of one core is still one");
        assert_eq!(l.max_tokens, Some(512));
        // A VM: no battery, no thermal zone, no platform profile.
        let unknown = PowerState::default();
        assert_eq!(PowerMode::of(&unknown), PowerMode::Normal);
        assert_eq!(
            limits(&unknown, 2, &PowerConfig::default()),
            PowerLimits::default()
        );
        // Fair is fans up, nothing to give up yet.
        let fair = PowerState {
            thermal: ThermalState::Fair,
            ..unknown
        };
        assert_eq!(
            limits(&fair, 2, &PowerConfig::default()),
            PowerLimits::default()
        );
    }

    #[test]
    fn modes_parse_print_and_round_trip_through_their_states() {
        for m in PowerMode::ALL {
            assert_eq!(m.as_str().parse::<PowerMode>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.as_str())
            );
            assert_eq!(PowerMode::of(&state(m)), m);
        }
        let e = "hot".parse::<PowerMode>().unwrap_err();
        assert!(e.to_string().contains("\"hot\""), "{e}");
        assert_eq!(PowerLimits::default().describe(), "nothing");
        let d = limits(
            &state(PowerMode::ThermalCritical),
            2,
            &PowerConfig::default(),
        )
        .describe();
        assert!(
            d.contains("background generations paused") && d.contains("refused"),
            "{d}"
        );
    }
}
