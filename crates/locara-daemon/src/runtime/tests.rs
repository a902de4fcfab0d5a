//! The governor task with fake workers and tokio's paused clock: no
//! model, no process, no sleeps (a `sleep` here advances paused time).
//! What a host's routing thread (a real thread) does is waited for on a
//! blocking thread, which holds the paused clock still meanwhile.
use super::*;
use crate::config::RawServeConfig;
use crate::host::{StreamError, StreamEvent};
use crate::testing::FakeEngine;
use std::future::Future;
use std::sync::Mutex;

struct Setup {
    runtime: Runtime,
    engine: Arc<FakeEngine>,
    _home: tempfile::TempDir,
}

/// A runtime over a store holding synthetic models `names`, with this
/// budget (`None`: plenty).
fn setup(names: &[&str], budget: Option<u64>) -> Setup {
    setup_with(names, budget, FakeEngine::new(3))
}

fn setup_with(names: &[&str], budget: Option<u64>, engine: Arc<FakeEngine>) -> Setup {
    let home = tempfile::tempdir().unwrap();
    let settings = crate::testing::synthetic_settings(
        home.path(),
        names,
        Arc::clone(&engine),
        RawServeConfig {
            queue: Some(1),
            ..Default::default()
        },
        budget.unwrap_or(1 << 40),
    );
    let runtime = Runtime::start(settings, Arc::new(Metrics::new()));
    Setup {
        runtime,
        engine,
        _home: home,
    }
}

fn wish(model: &str) -> ModelWish {
    ModelWish {
        model: model.into(),
        ..ModelWish::default()
    }
}

/// A generation of a few tokens on the leased worker.
fn generate(lease: &Lease) -> crate::host::Generation {
    lease
        .host
        .generate(
            locara_engine::protocol::Prompt::Raw { text: "x".into() },
            locara_engine::protocol::Sampling::greedy(),
            None,
            Vec::new(),
            true,
            true,
        )
        .unwrap()
}

async fn loaded(rt: &Runtime) -> Vec<String> {
    rt.status()
        .await
        .unwrap()
        .models
        .into_iter()
        .map(|m| m.name)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn two_requests_for_an_unloaded_model_load_it_once() {
    let s = setup(&["a:1"], None);
    let (x, y) = tokio::join!(
        s.runtime.acquire(wish("a:1")),
        s.runtime.acquire(wish("a:1"))
    );
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.instance, y.instance);
    assert_eq!(s.engine.spawned(), 1);
    // A third waits beyond the one sequence and the queue of one.
    let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
    assert!(
        matches!(e, RuntimeError::Refused(Refusal::QueueFull { .. })),
        "{e}"
    );
}

/// Regression: `AcceptLoads` did not end the drains of critical, so a
/// model whose response outlasted the episode refused every new
/// request with 503 until it unloaded.
#[tokio::test(start_paused = true)]
async fn a_model_drained_at_critical_takes_requests_again_once_loads_are_accepted() {
    let s = setup(&["a:1"], None);
    let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
    s.runtime
        .simulate_pressure(PressureLevel::Critical, None)
        .await
        .unwrap();
    let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
    assert!(matches!(e, RuntimeError::Pressure { .. }), "{e}");
    s.runtime
        .simulate_pressure(PressureLevel::Normal, None)
        .await
        .unwrap();
    // One quiet period later the ladder accepts loads again.
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(!s.runtime.status().await.unwrap().pressure.refusing_loads);
    drop(lease);
    let again = s.runtime.acquire(wish("a:1")).await;
    assert!(again.is_ok(), "{:?}", again.err());
    assert_eq!(s.engine.spawned(), 1, "the same worker serves it");
}

#[tokio::test(start_paused = true)]
async fn an_idle_model_unloads_after_keep_alive() {
    let s = setup(&["a:1"], None);
    let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
    // Busy: never unloaded, however long.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(loaded(&s.runtime).await, ["a:1"]);
    drop(lease);
    tokio::time::sleep(Duration::from_secs(179)).await;
    assert_eq!(loaded(&s.runtime).await, ["a:1"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(loaded(&s.runtime).await.is_empty());
    let m = s.runtime.metrics.render(&crate::metrics::Gauges::default());
    assert!(m.contains("reason=\"idle\""), "{m}");
}

#[tokio::test(start_paused = true)]
async fn a_second_model_evicts_the_idle_first_within_the_budget() {
    let s = setup(&["a:1", "b:1"], None);
    drop(s.runtime.acquire(wish("a:1")).await.unwrap());
    let one = s.runtime.status().await.unwrap().models[0].estimate;
    let s = {
        drop(s);
        setup(&["a:1", "b:1"], Some(one + one / 2))
    };
    drop(s.runtime.acquire(wish("a:1")).await.unwrap());
    let b = s.runtime.acquire(wish("b:1")).await.unwrap();
    assert_eq!(loaded(&s.runtime).await, ["b:1"]);
    assert_eq!(s.engine.spawned(), 2);
    // With b busy, a cannot come back: refused with the numbers.
    let e = s.runtime.acquire(wish("a:1")).await.err().unwrap();
    let text = e.to_string();
    assert!(text.contains("b:1") && text.contains("busy"), "{text}");
    drop(b);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_ends_its_streams_and_the_next_request_reloads() {
    let s = setup_with(&["a:1"], None, FakeEngine::stalling(2));
    let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
    let mut generation = generate(&lease);
    for _ in 0..2 {
        let ev = generation.next().await;
        assert!(matches!(ev, Some(StreamEvent::Token(_))), "{ev:?}");
    }
    let worker = s.engine.worker(0);
    worker.kill();
    // The death reaches the task from the host's routing thread, a real
    // thread; waiting for it on a blocking thread keeps the paused clock
    // still.
    let heard = worker.clone();
    tokio::task::spawn_blocking(move || heard.wait_end_heard())
        .await
        .unwrap();
    match generation.next().await {
        Some(StreamEvent::Error { kind, .. }) => assert_eq!(kind, StreamError::WorkerDied),
        other => panic!("{other:?}"),
    }
    drop(lease);
    assert!(loaded(&s.runtime).await.is_empty());
    let m = s.runtime.metrics.render(&crate::metrics::Gauges::default());
    assert!(m.contains("reason=\"worker_died\""), "{m}");
    let next = s.runtime.acquire(wish("a:1")).await.unwrap();
    assert_ne!(next.host.pid(), worker.pid());
    assert_eq!(s.engine.spawned(), 2);
}

/// A client that asks for its model again the instant its stream ends:
/// the stream's waker runs on the thread that delivers the end, and sends
/// the new request there and then, before that thread does anything more.
/// Whatever the thread does after ending the streams comes after the
/// request, every time.
struct AskAgainOnWake {
    runtime: Runtime,
    /// The request that is streaming; its end is released first, as the
    /// server drops a lease before the client hears the response end.
    lease: Mutex<Option<Lease>>,
    /// Where the answer to the new request goes; taken by the first wake.
    asked: Mutex<Option<oneshot::Sender<Answer>>>,
}

/// Where the task's answer to a request will come.
type Answer = oneshot::Receiver<Result<Lease, RuntimeError>>;

impl std::task::Wake for AskAgainOnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let Some(asked) = lock(&self.asked).take() else {
            return;
        };
        drop(lock(&self.lease).take());
        let (reply, answer) = Reply::new(Priority::Interactive);
        let _ = self.runtime.tx.send(Command::Acquire {
            wish: wish("a:1"),
            reply,
        });
        let _ = asked.send(answer);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Regression: a client that heard of its worker's death from its stream
/// and asked again at once could be handed the dead worker, when the
/// streams heard of the death before the task did.
#[tokio::test(start_paused = true)]
async fn a_request_right_after_a_worker_died_mid_stream_gets_a_new_worker() {
    let s = setup_with(&["a:1"], None, FakeEngine::stalling(2));
    let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
    let dead = lease.host.pid();
    let mut generation = generate(&lease);
    for _ in 0..2 {
        let ev = generation.next().await;
        assert!(matches!(ev, Some(StreamEvent::Token(_))), "{ev:?}");
    }
    let (asked_tx, asked) = oneshot::channel();
    let client = Arc::new(AskAgainOnWake {
        runtime: s.runtime.clone(),
        lease: Mutex::new(Some(lease)),
        asked: Mutex::new(Some(asked_tx)),
    });
    let mut end = Box::pin(generation.next());
    let waker = std::task::Waker::from(Arc::clone(&client));
    let poll = end
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    assert!(poll.is_pending(), "{poll:?}");
    let worker = s.engine.worker(0);
    worker.kill();
    tokio::task::spawn_blocking(move || worker.wait_end_heard())
        .await
        .unwrap();
    let answer = asked.await.unwrap();
    match end.await {
        Some(StreamEvent::Error { kind, .. }) => assert_eq!(kind, StreamError::WorkerDied),
        other => panic!("{other:?}"),
    }
    let next = answer.await.unwrap().unwrap();
    assert_ne!(next.host.pid(), dead, "the dead worker");
    assert_eq!(s.engine.spawned(), 2);
}

#[tokio::test]
async fn a_hold_survives_a_restart_of_the_runtime() {
    let home = tempfile::tempdir().unwrap();
    let start = |names: &[&str]| {
        let settings = crate::testing::synthetic_settings(
            home.path(),
            names,
            FakeEngine::new(2),
            RawServeConfig::default(),
            1 << 40,
        );
        Runtime::start(settings, Arc::new(Metrics::new()))
    };
    let first = start(&["a:1"]);
    drop(first.acquire(wish("a:1")).await.unwrap());
    assert!(first.unload("a:1", true).await.unwrap());
    first.shutdown().await;
    let holds = home.path().join(crate::server::HOLDS_FILE);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !holds.exists() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The model is already in the store: the second runtime imports none.
    let second = start(&[]);
    match second.acquire(wish("a:1")).await {
        Err(RuntimeError::Refused(Refusal::Held { model })) => assert_eq!(model, "a:1"),
        other => panic!("expected the hold to survive, got {:?}", other.err()),
    }
    assert_eq!(second.status().await.unwrap().held_unloaded, ["a:1"]);
    // Lifted, it is forgotten on disk too.
    second.load(wish("a:1")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&holds).unwrap().contains("a:1")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::read_to_string(&holds).unwrap().trim(), "[]");
}

#[tokio::test(start_paused = true)]
async fn the_daemon_keeps_the_machine_awake_only_while_a_request_holds_a_model() {
    let s = setup(&["a:1"], None);
    assert!(!s.runtime.status().await.unwrap().keeping_awake);
    let lease = s.runtime.acquire(wish("a:1")).await.unwrap();
    assert!(s.runtime.status().await.unwrap().keeping_awake);
    drop(lease);
    // The release reaches the task before the next status.
    assert!(!s.runtime.status().await.unwrap().keeping_awake);
}

/// The `SetThreads` a fake worker was sent, in order.
fn thread_orders(engine: &FakeEngine, n: usize) -> Vec<(u32, locara_core::threads::ThreadClass)> {
    engine
        .worker(n)
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            locara_engine::protocol::Request::SetThreads { threads, class } => {
                Some((threads, class))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn workers_are_told_their_share_of_the_cores_as_they_become_busy_or_idle() {
    use locara_core::threads::ThreadClass::{Background, Interactive};
    let home = tempfile::tempdir().unwrap();
    let engine = FakeEngine::new(3);
    let mut settings = crate::testing::synthetic_settings(
        home.path(),
        &["a:1", "b:1"],
        Arc::clone(&engine),
        RawServeConfig::default(),
        1 << 40,
    );
    settings.threads = 2;
    let rt = Runtime::start(settings, Arc::new(Metrics::new()));
    // Alone, `a` keeps the two threads it started with.
    let a = rt.acquire(wish("a:1")).await.unwrap();
    let b = rt.acquire(wish("b:1")).await.unwrap();
    // Both busy: one core each.
    assert_eq!(thread_orders(&engine, 0), vec![(1, Interactive)]);
    assert_eq!(thread_orders(&engine, 1), vec![(1, Interactive)]);
    // `a` done: `b` gets both; `a` is told nothing (it holds none).
    drop(a);
    rt.status().await.unwrap();
    assert_eq!(
        thread_orders(&engine, 1),
        vec![(1, Interactive), (2, Interactive)]
    );
    assert_eq!(thread_orders(&engine, 0), vec![(1, Interactive)]);
    // Background work on `a` waits for `b`'s interactive request, and the
    // release of its lease gives back a background place.
    let background = rt
        .acquire(ModelWish {
            priority: Priority::Background,
            ..wish("a:1")
        })
        .await
        .unwrap();
    assert_eq!(
        thread_orders(&engine, 0),
        vec![(1, Interactive), (0, Background)]
    );
    drop(b);
    rt.status().await.unwrap();
    assert_eq!(thread_orders(&engine, 0).last(), Some(&(2, Background)));
    drop(background);
    let again = rt.acquire(wish("a:1")).await.unwrap();
    assert_eq!(thread_orders(&engine, 0).last(), Some(&(2, Interactive)));
    drop(again);
}

/// The OS pressure watch counts the loaded models' mapped weights as not
/// available to other processes; the governor publishes them as measured,
/// and a model it lets go of counts no more.
#[tokio::test(start_paused = true)]
async fn the_loaded_models_mapped_weights_are_published_for_the_pressure_watch() {
    let home = tempfile::tempdir().unwrap();
    let mut settings = crate::testing::synthetic_settings(
        home.path(),
        &["a:1", "b:1"],
        FakeEngine::new(3),
        RawServeConfig::default(),
        1 << 40,
    );
    // Each fake worker maps 100 MiB of weights.
    settings.probe = Arc::new(crate::testing::fake_probe());
    let held = settings.held_mapped.clone();
    let rt = Runtime::start(settings, Arc::new(Metrics::new()));
    assert_eq!(held.get(), 0);
    drop(rt.acquire(wish("a:1")).await.unwrap());
    drop(rt.acquire(wish("b:1")).await.unwrap());
    let mut waited = 0;
    while held.get() != 200 << 20 && waited < 10 {
        tokio::time::sleep(task::MEASURE_EVERY).await;
        rt.status().await.unwrap();
        waited += 1;
    }
    assert_eq!(held.get(), 200 << 20, "both workers' weights, measured");
    assert!(rt.unload("a:1", false).await.unwrap());
    rt.status().await.unwrap();
    assert_eq!(
        held.get(),
        100 << 20,
        "the unloaded model's weights count no more"
    );
}
