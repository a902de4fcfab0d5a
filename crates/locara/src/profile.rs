//! `locara profile`: what this machine is, probed once and kept in the data
//! directory (RAM is soldered on a Mac: the tier does not change).

use crate::config::Config;
use anyhow::{bail, Context, Result};
use locara_core::Bytes;
use locara_platform::fs::{write_atomic, Access};
use locara_platform::{BudgetBasis, HardwareProbe, HardwareProfile, PowerState, SystemProbe};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The stored profile's file name in the data directory.
const FILE: &str = "profile.json";
/// Bumped when the stored shape changes; an older file is probed again.
const FORMAT: u64 = 1;

/// A profile and where it came from.
pub(crate) struct Profile {
    pub hardware: HardwareProfile,
    pub probed_at_unix_ms: u64,
    pub path: PathBuf,
    pub origin: Origin,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Read from the data directory.
    Stored,
    /// Probed now and stored (first run, `--refresh`, or an unreadable file).
    Probed,
}

pub fn profile(refresh: bool, json: bool) -> Result<ExitCode> {
    locara_platform::check_supported()?;
    let config = Config::load(false)?;
    let probe = SystemProbe::default();
    let (profile, note) = load_or_probe(&probe, &config.home, refresh)?;
    let power = probe.power_state();
    if json {
        let out = json!({
            "profile": profile.hardware,
            "probed_at_unix_ms": profile.probed_at_unix_ms,
            "stored_at": profile.path,
            "origin": match profile.origin { Origin::Stored => "stored", Origin::Probed => "probed" },
            "power": power,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(note) = note {
            eprintln!("note: {note}");
        }
        print_profile(&profile, &power);
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored profile, or a fresh probe (stored for next time) when there is
/// none, it is unreadable, or `refresh` asks for one. The note says why a
/// stored file was not used.
pub(crate) fn load_or_probe(
    probe: &dyn HardwareProbe,
    home: &Path,
    refresh: bool,
) -> Result<(Profile, Option<String>)> {
    let path = home.join(FILE);
    let mut note = None;
    if !refresh {
        match read_stored(&path) {
            Ok(Some((hardware, probed_at_unix_ms))) => {
                let profile = Profile {
                    hardware,
                    probed_at_unix_ms,
                    path,
                    origin: Origin::Stored,
                };
                return Ok((profile, None));
            }
            Ok(None) => {}
            Err(err) => note = Some(format!("probing again: {err:#}")),
        }
    }
    let hardware = probe.hardware_profile().context("probing the machine")?;
    let probed_at_unix_ms = locara_platform::time::unix_now_ms();
    store(&path, &hardware, probed_at_unix_ms)?;
    let profile = Profile {
        hardware,
        probed_at_unix_ms,
        path,
        origin: Origin::Probed,
    };
    Ok((profile, note))
}

fn read_stored(path: &Path) -> Result<Option<(HardwareProfile, u64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let format = doc["format"].as_u64();
    if format != Some(FORMAT) {
        bail!(
            "{} has format {format:?}; this locara writes format {FORMAT}",
            path.display()
        );
    }
    let probed_at = doc["probed_at_unix_ms"].as_u64().unwrap_or(0);
    let hardware = serde_json::from_value(doc["profile"].take())
        .with_context(|| format!("{} holds no readable profile", path.display()))?;
    Ok(Some((hardware, probed_at)))
}

/// Writes the profile whole, so an interrupted write never leaves half a
/// file.
fn store(path: &Path, hardware: &HardwareProfile, probed_at_unix_ms: u64) -> Result<()> {
    let dir = path.parent().context("the profile path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let doc = json!({
        "format": FORMAT,
        "probed_at_unix_ms": probed_at_unix_ms,
        "profile": hardware,
    });
    let text = serde_json::to_string_pretty(&doc)? + "\n";
    write_atomic(path, text.as_bytes(), Access::Default)?;
    Ok(())
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn print_profile(p: &Profile, power: &PowerState) {
    let h = &p.hardware;
    match p.origin {
        Origin::Stored => println!(
            "Machine profile, probed {} (stored in {}; --refresh probes again)",
            utc(p.probed_at_unix_ms),
            p.path.display()
        ),
        Origin::Probed => println!(
            "Machine profile, probed now and stored in {}",
            p.path.display()
        ),
    }
    let row = |label: &str, value: String| println!("  {label:<22}{value}");
    row("chip", h.chip.clone());
    row(
        "architecture",
        format!(
            "{}, {}",
            h.arch,
            if h.apple_silicon {
                "Apple Silicon"
            } else {
                "not Apple Silicon"
            }
        ),
    );
    row("OS", format!("{} {}", h.os, h.os_version));
    row(
        "physical RAM",
        format!("{} ({} bytes)", Bytes(h.physical_ram), h.physical_ram),
    );
    if h.os == "linux" {
        row(
            "memory limit",
            match h.memory_limit {
                Some(l) => format!("{} (this process's cgroup)", Bytes(l)),
                None => "none (no memory-limited cgroup)".into(),
            },
        );
    }
    row(
        "cores",
        format!(
            "{} performance, {} efficiency (engines use the performance cores)",
            h.performance_cores, h.efficiency_cores
        ),
    );
    row("page size", Bytes(h.page_size).to_string());
    row(
        "GPU working-set cap",
        match &h.gpu {
            Some(g) => format!(
                "{} ({}, {} memory)",
                Bytes(g.working_set_cap),
                g.name,
                if g.unified_memory {
                    "unified"
                } else {
                    "dedicated"
                }
            ),
            None => "none (no Metal GPU)".into(),
        },
    );
    if let Some(mb) = h.iogpu_wired_limit_mb {
        row(
            "iogpu.wired_limit_mb",
            if mb == 0 {
                "0 (the OS default; Locara never changes it)".into()
            } else {
                format!("{mb} (set by the user; Locara never changes it)")
            },
        );
    }
    row("tier", format!("{} - {}", h.tier, h.tier.describe()));
    let why = match (h.budget_basis, &h.gpu) {
        (BudgetBasis::GpuWorkingSetCap, _) => format!(
            "the GPU working-set cap, below {} % of memory",
            locara_platform::DEFAULT_BUDGET_PERCENT
        ),
        (BudgetBasis::RamShare, Some(_)) => {
            format!("{}, below the GPU working-set cap", h.budget_basis)
        }
        (BudgetBasis::RamShare, None) => {
            format!("{} (no GPU working-set cap here)", h.budget_basis)
        }
    };
    row(
        "default budget",
        format!("{}: {why}", Bytes(h.default_budget)),
    );
    println!("Now (not stored)");
    row("thermal state", power.thermal.to_string());
    row("low-power mode", yes_no(power.low_power_mode).into());
    row("on battery", yes_no(power.on_battery).into());
}

/// `2025-01-31 14:05:09 UTC` (no time-zone database needed).
pub(crate) fn utc(unix_ms: u64) -> String {
    let t = locara_platform::time::utc(unix_ms);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use locara_platform::SimulatedProbe;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_738_332_309_000), "2025-01-31 14:05:09 UTC");
    }

    #[test]
    fn first_run_stores_later_runs_read_refresh_probes() {
        let home = tempfile::tempdir().unwrap();
        let probe = SimulatedProbe::new(locara_platform::simulated::mac_profile(16));
        let (first, note) = load_or_probe(&probe, home.path(), false).unwrap();
        assert!(first.origin == Origin::Probed && note.is_none());
        assert!(home.path().join(FILE).exists());

        // The machine "changes", but the stored profile is what counts ...
        probe.set_hardware(locara_platform::simulated::mac_profile(64));
        let (second, _) = load_or_probe(&probe, home.path(), false).unwrap();
        assert!(second.origin == Origin::Stored);
        assert_eq!(second.hardware, first.hardware);
        assert_eq!(second.probed_at_unix_ms, first.probed_at_unix_ms);

        // ... until --refresh.
        let (third, _) = load_or_probe(&probe, home.path(), true).unwrap();
        assert!(third.origin == Origin::Probed);
        assert_eq!(third.hardware.physical_ram, 64 << 30);
        let (fourth, _) = load_or_probe(&probe, home.path(), false).unwrap();
        assert_eq!(fourth.hardware.physical_ram, 64 << 30);
    }

    #[test]
    fn an_unreadable_profile_is_probed_again_with_a_note() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(FILE), "{\"format\": 99}").unwrap();
        let probe = SimulatedProbe::new(locara_platform::simulated::linux_profile(8));
        let (p, note) = load_or_probe(&probe, home.path(), false).unwrap();
        assert!(p.origin == Origin::Probed);
        assert!(note.unwrap().contains("format"), "the note says why");
        let (again, _) = load_or_probe(&probe, home.path(), false).unwrap();
        assert!(again.origin == Origin::Stored);
    }
}
