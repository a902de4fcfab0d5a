//! A replay of the incident the pressure ladder exists for: a 64 GB M1 Max
//! running a 35 GB model whose compressed memory climbed to 19.7 GB with
//! 3 GB free and swap growing, until the machine froze. The scripted
//! snapshots go through the platform's level derivation (the simulated
//! probe's path) and the daemon's controller, exactly as the daemon's task
//! feeds it; the test asserts that the runtime reaches warn, then
//! critical, and what it does, in order.

use locara_core::controller::{Controller, ControllerConfig, Effect, Event, Record, Request};
use locara_core::governor::{KeepAlive, Measured, Wish};
use locara_core::ladder::PressureLevel;
use locara_core::threads::Priority;
use locara_core::PoolSize;
use locara_platform::{LevelDeriver, PressureConfig, PressureSample};
use std::time::{Duration, Instant};

const GB: u64 = 1 << 30;

/// One scripted moment: seconds from the start, free memory, compressed
/// memory and swap used, in GB (the figures of the incident's report).
struct Moment {
    at: u64,
    free: f64,
    compressed: f64,
    swap: f64,
}

/// Loads `name` through the controller as a request would, with its
/// worker measured at load; returns the instance.
fn load(c: &mut Controller, name: &str, bytes: u64, keep_alive: KeepAlive, now: Instant) -> u64 {
    let mut wish = Wish::new(name, vec![(8192, bytes)]);
    wish.keep_alive = Some(keep_alive);
    let effects = c.handle(
        Event::Acquire(Request {
            ticket: 0,
            wish,
            app: None,
        }),
        now,
    );
    let Some(Effect::Load { load, .. }) = effects.first() else {
        panic!("{name} does not fit: {effects:?}")
    };
    let instance = load.instance;
    let effects = c.handle(
        Event::Loaded {
            model: name.to_string(),
            instance,
            measured: Some(Measured {
                footprint: bytes / 10,
                mapped_weights: bytes - bytes / 10,
            }),
            pool: PoolSize::new(8192, 1),
        },
        now,
    );
    assert!(matches!(effects[..], [Effect::Admit { .. }]), "{effects:?}");
    instance
}

#[test]
fn the_64_gb_incident_reaches_warn_then_critical_and_sheds_in_order() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    // Budget: 70 % of 64 GB.
    let mut c = Controller::new(ControllerConfig::new(64 * GB * 7 / 10)).unwrap();
    let ten_minutes = KeepAlive::For(Duration::from_secs(600));
    let big = load(&mut c, "big:35b", 35 * GB, ten_minutes, at(0));
    let small = load(&mut c, "small:1b", GB, ten_minutes, at(0));
    let pinned = load(&mut c, "embed:300m", GB / 2, KeepAlive::Forever, at(0));
    for (name, instance) in [
        ("big:35b", big),
        ("small:1b", small),
        ("embed:300m", pinned),
    ] {
        c.handle(
            Event::Release {
                model: name.into(),
                instance,
                priority: Priority::Interactive,
            },
            at(0),
        );
    }
    // The long generation on the big model starts at 5 s.
    let effects = c.handle(
        Event::Acquire(Request {
            ticket: 1,
            wish: Wish::new("big:35b", Vec::new()),
            app: None,
        }),
        at(5),
    );
    assert!(
        matches!(effects[..], [Effect::Admit { ticket: 1, .. }]),
        "{effects:?}"
    );

    let series = [
        Moment {
            at: 0,
            free: 20.0,
            compressed: 2.0,
            swap: 0.0,
        },
        Moment {
            at: 30,
            free: 12.0,
            compressed: 6.0,
            swap: 0.5,
        },
        Moment {
            at: 60,
            free: 6.0,
            compressed: 11.0,
            swap: 1.5,
        },
        Moment {
            at: 90,
            free: 4.5,
            compressed: 15.0,
            swap: 3.0,
        },
        Moment {
            at: 120,
            free: 3.0,
            compressed: 19.7,
            swap: 5.0,
        },
        Moment {
            at: 150,
            free: 3.0,
            compressed: 19.7,
            swap: 6.0,
        },
    ];
    let mut deriver = LevelDeriver::new(PressureConfig::default());
    let mut log: Vec<(u64, String)> = Vec::new();
    let mut levels = Vec::new();
    // Carries out what the daemon's task would: an unloaded worker exits.
    let mut step = |c: &mut Controller, event: Event, t: u64| {
        for effect in c.handle(event, at(t)) {
            match effect {
                Effect::Record(Record::Action { action, .. }) => log.push((t, action.to_string())),
                Effect::Unloaded(u) => {
                    c.handle(
                        Event::WorkerExited {
                            model: u.model,
                            instance: u.instance,
                            expected: true,
                        },
                        at(t),
                    );
                }
                _ => {}
            }
        }
    };
    for m in &series {
        assert!(m.compressed <= 19.7 && m.swap >= 0.0);
        // What the probe sees: available memory is the free memory (the
        // compressor holds the rest); the 35 GB model stays mapped.
        let sample = PressureSample::from_memory((m.free * GB as f64) as u64, 64 * GB);
        let now_d = Duration::from_secs(m.at);
        if let Some(change) = deriver.observe(&sample, now_d) {
            levels.push((m.at, change.to));
            step(&mut c, Event::OsPressure(change.to), m.at);
        }
        // Time passes between samples: the ladder's grace periods.
        step(&mut c, Event::Tick, m.at + 5);
        if m.at == 150 {
            // The long generation ends.
            step(
                &mut c,
                Event::Release {
                    model: "big:35b".into(),
                    instance: big,
                    priority: Priority::Interactive,
                },
                155,
            );
        }
    }
    let text: Vec<String> = log.iter().map(|(t, a)| format!("{t:>4} s  {a}")).collect();
    let text = text.join("\n");
    eprintln!("{text}");

    // Warn first (free 6 GB of 64 is under 10 %), then critical (3 GB,
    // under 5 %).
    assert_eq!(
        levels,
        [(60, PressureLevel::Warn), (120, PressureLevel::Critical)],
        "{text}"
    );
    let position = |needle: &str| {
        log.iter()
            .position(|(_, a)| a.contains(needle))
            .unwrap_or_else(|| panic!("no action {needle:?} in\n{text}"))
    };
    // At warn: the idle, unpinned small model goes; the pinned one and the
    // generating big one stay.
    let warn_unload = position("unload small:1b");
    assert_eq!(log[warn_unload].0, 60, "{text}");
    assert!(!c.holds("small:1b"));
    // At critical: loads refused, the pinned model unloaded, the big one
    // drained with its remaining tokens capped, then unloaded when its
    // generation ended.
    let refuse = position("refuse loads");
    let pinned_unload = position("unload embed:300m");
    let drain = position("drain big:35b");
    let big_unload = position("unload big:35b");
    assert!(warn_unload < refuse && refuse < pinned_unload, "{text}");
    assert!(pinned_unload < big_unload && drain < big_unload, "{text}");
    assert_eq!(log[refuse].0, 120, "{text}");
    assert_eq!(log[big_unload].0, 155, "{text}");
    assert!(log[..big_unload].iter().all(|(t, _)| *t <= 155));
    assert!(
        c.governor().models().next().is_none(),
        "everything unloaded"
    );
    // Nothing was repeated without a new cause.
    let mut seen = std::collections::HashSet::new();
    for (_, a) in &log {
        if a.starts_with("unload") || a.starts_with("drain") || a.starts_with("refuse") {
            assert!(seen.insert(a.clone()), "repeated: {a}\n{text}");
        }
    }
}
