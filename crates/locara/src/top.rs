//! `locara top`: a terminal view of a running daemon that a user leaves
//! open. A memory bar (what Locara's models hold, the rest of the system,
//! what is free), one row per model, the pressure level and Locara's
//! footprint over the last samples, the last events; keys unload, hold,
//! pin and load the selected model.
//!
//! Data comes from the daemon's HTTP API (`/locara/v1/status` and
//! `/locara/v1/history`) on a thread of its own, once a second, so keys
//! answer at once. [`draw`] is a pure function of [`TopData`] and
//! [`Selection`]: the tests render it on ratatui's `TestBackend`. The
//! terminal is restored on every way out, a panic included (a hook), and
//! crossterm needs no terminfo, so it works over SSH.

use crate::serve::{agent, api_error};
use anyhow::{Context, Result};
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use locara_core::history::{EventKind, HistoryEvent, Sample};
use locara_core::ladder::PressureLevel;
use locara_core::Bytes;
use locara_daemon::runtime::Status;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Row, Sparkline, Table};
use ratatui::Frame;
use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How often the view asks the daemon (its history has one sample a
/// second).
const REFRESH: Duration = Duration::from_secs(1);

/// Samples kept for the timeline: an hour at one a second, as the daemon.
const SAMPLES_KEPT: usize = 3600;

/// Events kept for the list.
const EVENTS_KEPT: usize = 200;

/// The daemon's API, as `locara top` uses it.
#[derive(Clone)]
pub struct Client {
    pub url: String,
    /// `Bearer <admin token>`.
    pub auth: String,
}

/// What the selected row's key asks of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Unload,
    /// Unload and keep unloaded until loaded again.
    Hold,
    /// Keep loaded while idle (`keep_alive` forever).
    Pin,
    /// Load (lifts a hold).
    Load,
}

impl Client {
    fn status(&self) -> Result<Status> {
        crate::serve::status(&self.url, &self.auth)
    }

    fn history(&self, since: u64) -> Result<(Vec<Sample>, Vec<HistoryEvent>)> {
        let v: serde_json::Value = agent()
            .get(&format!("{}/locara/v1/history", self.url))
            .set("Authorization", &self.auth)
            .query("since", &since.to_string())
            .call()
            .map_err(api_error)?
            .into_json()
            .context("reading the daemon's history")?;
        let samples = serde_json::from_value(v["samples"].clone())
            .context("reading the history's samples")?;
        let events =
            serde_json::from_value(v["events"].clone()).context("reading the history's events")?;
        Ok((samples, events))
    }

    /// Asks the daemon for `action` on `model`; says what was done.
    pub fn act(&self, action: Action, model: &str) -> Result<String> {
        let url = &self.url;
        let (path, query, done) = match action {
            Action::Unload => ("unload", ("hold", "false"), "unloaded"),
            Action::Hold => ("unload", ("hold", "true"), "unloaded and held"),
            Action::Pin => ("load", ("keep_alive", "-1"), "pinned (kept loaded)"),
            Action::Load => ("load", ("keep_alive", ""), "loaded"),
        };
        let mut request = agent()
            .post(&format!("{url}/locara/v1/models/{model}/{path}"))
            .set("Authorization", &self.auth)
            // A load waits for the worker; a large model takes a while.
            .timeout(Duration::from_secs(300));
        if !query.1.is_empty() {
            request = request.query(query.0, query.1);
        }
        request.call().map_err(api_error)?;
        Ok(format!("{model} {done}"))
    }
}

/// What the view shows: the last status, the samples and events so far.
#[derive(Debug, Clone, Default)]
pub struct TopData {
    pub url: String,
    pub status: Option<Status>,
    pub samples: VecDeque<Sample>,
    pub events: VecDeque<HistoryEvent>,
    /// The daemon's last answer failed: why.
    pub error: Option<String>,
}

impl TopData {
    /// Asks the daemon for its status and the history since the last
    /// sample seen.
    pub fn refresh(&mut self, client: &Client) {
        self.url = client.url.clone();
        let last_sample = self.samples.back().map_or(0, |s| s.at_unix_ms);
        // A few seconds of overlap: an event stamped just before the last
        // sample may have been kept after it was read.
        let since = last_sample.saturating_sub(5000);
        match client
            .status()
            .and_then(|s| Ok((s, client.history(since)?)))
        {
            Ok((status, (samples, events))) => {
                self.status = Some(status);
                for s in samples.into_iter().filter(|s| s.at_unix_ms > last_sample) {
                    if self.samples.len() == SAMPLES_KEPT {
                        self.samples.pop_front();
                    }
                    self.samples.push_back(s);
                }
                for e in events {
                    if self.events.iter().rev().take(EVENTS_KEPT).any(|x| *x == e) {
                        continue;
                    }
                    if self.events.len() == EVENTS_KEPT {
                        self.events.pop_front();
                    }
                    self.events.push_back(e);
                }
                self.error = None;
            }
            Err(e) => self.error = Some(format!("{e:#}")),
        }
    }

    /// The rows of the model table: loaded and loading models, then the
    /// held ones.
    pub fn rows(&self) -> Vec<ModelRow> {
        let Some(s) = &self.status else {
            return Vec::new();
        };
        let last = self.samples.back();
        let mut rows: Vec<ModelRow> = s
            .models
            .iter()
            .map(|m| {
                let sampled = last.and_then(|l| l.models.iter().find(|x| x.name == m.name));
                ModelRow {
                    name: m.name.clone(),
                    state: m.state.as_str().to_string(),
                    footprint: m.footprint,
                    mapped_weights: m.mapped_weights,
                    kv: m.pool.as_ref().map(|p| (p.used_cells, p.cells)),
                    busy: m.sequences_busy,
                    tokens_per_second: sampled.map_or(0.0, |x| x.tokens_per_second),
                    pinned: m.pinned,
                    held: false,
                }
            })
            .collect();
        rows.extend(s.held_unloaded.iter().map(|name| ModelRow {
            name: name.clone(),
            state: "held".into(),
            held: true,
            ..ModelRow::default()
        }));
        rows
    }
}

/// One row of the model table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRow {
    pub name: String,
    pub state: String,
    pub footprint: Option<u64>,
    pub mapped_weights: Option<u64>,
    /// K/V pool cells in use and allocated.
    pub kv: Option<(u32, u32)>,
    pub busy: u32,
    pub tokens_per_second: f64,
    pub pinned: bool,
    /// Unloaded and kept so (`locara stop --hold`).
    pub held: bool,
}

/// The row the keys act on, and the last thing said at the bottom.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub row: usize,
    pub message: String,
}

/// What a key asks of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOutcome {
    Quit,
    /// Ask the daemon for this, on this model.
    Act(Action, String),
    /// Only the view changed (selection).
    Redraw,
    Ignored,
}

/// What `key` means with `rows` on screen; moves the selection.
pub fn on_key(key: KeyEvent, rows: &[ModelRow], sel: &mut Selection) -> KeyOutcome {
    if key.kind == KeyEventKind::Release {
        return KeyOutcome::Ignored;
    }
    let selected = rows.get(sel.row.min(rows.len().saturating_sub(1)));
    let act = |a: Action| match selected {
        Some(r) => KeyOutcome::Act(a, r.name.clone()),
        None => KeyOutcome::Ignored,
    };
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => KeyOutcome::Quit,
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => KeyOutcome::Quit,
        KeyCode::Down | KeyCode::Char('j') => {
            sel.row = (sel.row + 1).min(rows.len().saturating_sub(1));
            KeyOutcome::Redraw
        }
        KeyCode::Up | KeyCode::Char('k') => {
            sel.row = sel.row.saturating_sub(1);
            KeyOutcome::Redraw
        }
        KeyCode::Char('u') => act(Action::Unload),
        KeyCode::Char('h') => act(Action::Hold),
        KeyCode::Char('p') => act(Action::Pin),
        KeyCode::Char('l') => act(Action::Load),
        _ => KeyOutcome::Ignored,
    }
}

fn level_color(level: PressureLevel) -> Color {
    match level {
        PressureLevel::Normal => Color::Green,
        PressureLevel::Warn => Color::Yellow,
        PressureLevel::Critical => Color::Red,
    }
}

fn opt_bytes(b: Option<u64>) -> String {
    b.map_or_else(|| "-".into(), |b| Bytes(b).to_string())
}

fn clock(unix_ms: u64) -> String {
    let t = locara_platform::time::utc(unix_ms);
    format!("{:02}:{:02}:{:02}", t.hour, t.minute, t.second)
}

/// Draws the whole view into `frame`, whatever its size: sections that do
/// not fit are left out, the model table and the events first shrink.
pub fn draw(frame: &mut Frame, data: &TopData, sel: &Selection) {
    let area = frame.area();
    let rows = data.rows();
    let table_height = (rows.len().max(1) as u16).saturating_add(3);
    // Sections in screen order; a short terminal gives its lines in
    // priority order (header, keys, models, memory, timeline, events).
    let wants = [1, 2, table_height, 4, u16::MAX, 1];
    let priority = [0, 5, 2, 1, 3, 4];
    let mut heights = [0u16; 6];
    let mut left = area.height;
    for i in priority {
        heights[i] = wants[i].min(left);
        left -= heights[i];
    }
    let [header, memory, models, timeline, events, footer] =
        Layout::vertical(heights.map(Constraint::Length)).areas(area);
    draw_header(frame, header, data);
    draw_memory(frame, memory, data);
    draw_models(frame, models, &rows, sel);
    draw_timeline(frame, timeline, data);
    draw_events(frame, events, data);
    let keys = "↑↓ select  u unload  h hold  p pin  l load  q quit";
    let text = if sel.message.is_empty() {
        keys.to_string()
    } else {
        format!("{}  │  {keys}", sel.message)
    };
    frame.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::REVERSED)),
        footer,
    );
}

fn draw_header(frame: &mut Frame, area: Rect, data: &TopData) {
    let mut spans = vec![Span::styled(
        "locara top ",
        Style::default().add_modifier(Modifier::BOLD),
    )];
    spans.push(Span::raw(format!("{} ", data.url)));
    if let Some(e) = &data.error {
        spans.push(Span::styled(
            format!("daemon unreachable: {e}"),
            Style::default().fg(Color::Red),
        ));
    } else if let Some(s) = &data.status {
        let level = s.pressure.level;
        spans.push(Span::raw("pressure "));
        spans.push(Span::styled(
            level.as_str(),
            Style::default()
                .fg(level_color(level))
                .add_modifier(Modifier::BOLD),
        ));
        if s.pressure.simulated.is_some() {
            spans.push(Span::raw(" (simulated)"));
        }
        spans.push(Span::raw(format!(
            "  held {} of {} budget",
            Bytes(s.held),
            Bytes(s.effective_budget)
        )));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The memory bar: Locara's models, the rest of the system, free.
fn draw_memory(frame: &mut Frame, area: Rect, data: &TopData) {
    let Some(s) = &data.status else { return };
    let Some(sys) = &s.system else {
        frame.render_widget(Paragraph::new("memory: the OS gives no figures"), area);
        return;
    };
    let models: u64 = s.models.iter().filter_map(|m| m.footprint).sum();
    let used = sys.total.saturating_sub(sys.available);
    let rest = used.saturating_sub(models);
    let free = sys.available;
    let label = "Memory ";
    let width = area.width.saturating_sub(label.len() as u16) as u64;
    let cells = |b: u64| b.saturating_mul(width).checked_div(sys.total).unwrap_or(0) as usize;
    // A model that holds anything shows as at least one cell.
    let m_cells = cells(models).max(usize::from(models > 0));
    let r_cells = cells(rest);
    let f_cells = (width as usize).saturating_sub(m_cells + r_cells);
    let bar = Line::from(vec![
        Span::styled(label, Style::default().add_modifier(Modifier::BOLD)),
        Span::styled("█".repeat(m_cells), Style::default().fg(Color::Cyan)),
        Span::styled("▓".repeat(r_cells), Style::default().fg(Color::Magenta)),
        Span::styled("░".repeat(f_cells), Style::default().fg(Color::Green)),
    ]);
    let legend = Line::from(vec![
        Span::styled("█ ", Style::default().fg(Color::Cyan)),
        Span::raw(format!("models {}  ", Bytes(models))),
        Span::styled("▓ ", Style::default().fg(Color::Magenta)),
        Span::raw(format!("rest of system {}  ", Bytes(rest))),
        Span::styled("░ ", Style::default().fg(Color::Green)),
        Span::raw(format!(
            "free {} of {}  cached files {}  swap {}",
            Bytes(free),
            Bytes(sys.total),
            Bytes(sys.cached_files),
            Bytes(sys.swap_used)
        )),
    ]);
    frame.render_widget(Paragraph::new(vec![bar, legend]), area);
}

fn draw_models(frame: &mut Frame, area: Rect, rows: &[ModelRow], sel: &Selection) {
    let header = Row::new([
        "MODEL",
        "STATE",
        "FOOTPRINT",
        "MAPPED",
        "K/V CELLS",
        "BUSY",
        "TOK/S",
        "PIN",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let selected = sel.row.min(rows.len().saturating_sub(1));
    let body: Vec<Row> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let row = Row::new([
                r.name.clone(),
                r.state.clone(),
                opt_bytes(r.footprint),
                opt_bytes(r.mapped_weights),
                r.kv.map_or("-".into(), |(u, c)| format!("{u}/{c}")),
                r.busy.to_string(),
                format!("{:.1}", r.tokens_per_second),
                if r.pinned { "yes" } else { "" }.to_string(),
            ]);
            if i == selected {
                row.style(Style::default().add_modifier(Modifier::REVERSED))
            } else {
                row
            }
        })
        .collect();
    let empty = body.is_empty();
    let table = Table::new(
        body,
        [
            Constraint::Min(14),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(7),
            Constraint::Length(4),
        ],
    )
    .header(header)
    .block(Block::default().borders(Borders::ALL).title(if empty {
        " Models: none loaded "
    } else {
        " Models "
    }));
    frame.render_widget(table, area);
}

/// The pressure level and Locara's footprint, one column per sample, the
/// newest at the right.
fn draw_timeline(frame: &mut Frame, area: Rect, data: &TopData) {
    let block = Block::default().borders(Borders::ALL).title(format!(
        " Pressure and models' footprint, last {} s ",
        data.samples
            .len()
            .min(area.width.saturating_sub(2) as usize)
    ));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let n = (inner.width as usize).min(data.samples.len());
    let recent: Vec<&Sample> = data.samples.iter().skip(data.samples.len() - n).collect();
    let levels: Vec<Span> = recent
        .iter()
        .map(|s| {
            let c = match s.level {
                PressureLevel::Normal => "▁",
                PressureLevel::Warn => "▅",
                PressureLevel::Critical => "█",
            };
            Span::styled(c, Style::default().fg(level_color(s.level)))
        })
        .collect();
    let [strip, spark] = Layout::vertical([Constraint::Length(1), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(Line::from(levels)), strip);
    let footprints: Vec<u64> = recent.iter().map(|s| s.footprint_total).collect();
    frame.render_widget(
        Sparkline::default()
            .data(&footprints)
            .style(Style::default().fg(Color::Cyan)),
        spark,
    );
}

fn draw_events(frame: &mut Frame, area: Rect, data: &TopData) {
    let block = Block::default()
        .borders(Borders::ALL)
        .title(" Events (UTC) ");
    let room = block.inner(area).height as usize;
    let lines: Vec<Line> = data
        .events
        .iter()
        .rev()
        .take(room)
        .map(|e| {
            let kind = serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let color = match e.kind {
                EventKind::Refused | EventKind::LoadFailed | EventKind::WorkerDied => Color::Red,
                EventKind::Level => e.level.map_or(Color::Reset, level_color),
                EventKind::Loaded => Color::Green,
                _ => Color::Reset,
            };
            let mut text = format!("{} {kind:<14}", clock(e.at_unix_ms));
            if let Some(m) = &e.model {
                text.push_str(&format!(" {m}"));
            }
            if let Some(l) = e.level {
                if e.kind != EventKind::Level {
                    text.push_str(&format!(" [{l}]"));
                }
            }
            if let Some(b) = e.bytes {
                text.push_str(&format!(" {}", Bytes(b)));
            }
            if !e.detail.is_empty() {
                text.push_str(&format!(" {}", e.detail));
            }
            Line::styled(text, Style::default().fg(color))
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

/// Whether the terminal is in raw mode on the alternate screen now.
static TERMINAL_TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Puts the terminal back as it was: raw mode off, the main screen, the
/// cursor shown. Only the first call after taking it acts: leaving the
/// alternate screen twice would move the cursor back over what the panic
/// hook printed between the two.
fn restore_terminal() {
    if !TERMINAL_TAKEN.swap(false, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// Restores the terminal when dropped (every way out of [`top`] but a
/// panic, which the hook covers).
struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// `locara top`.
pub fn top() -> Result<ExitCode> {
    let (url, auth) = crate::serve::require_daemon()?;
    let client = Client { url, auth };
    // A daemon that does not answer is said before the screen is taken.
    client.status()?;
    let data = Arc::new(Mutex::new(TopData::default()));
    data.lock()
        .unwrap_or_else(|p| p.into_inner())
        .refresh(&client);

    // The panic message must reach a normal terminal, not the alternate
    // screen about to be left.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    crossterm::terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
    TERMINAL_TAKEN.store(true, std::sync::atomic::Ordering::SeqCst);
    let _guard = TerminalGuard;
    crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::EnterAlternateScreen,
        crossterm::cursor::Hide
    )
    .context("taking the alternate screen")?;
    let mut terminal =
        ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;

    // The fetch thread: once a second, and at once after an action.
    let (wake, woken) = mpsc::channel::<()>();
    let (said, hear) = mpsc::channel::<String>();
    {
        let data = Arc::clone(&data);
        let client = client.clone();
        std::thread::spawn(move || loop {
            let mut fresh = data.lock().unwrap_or_else(|p| p.into_inner()).clone();
            fresh.refresh(&client);
            *data.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
            match woken.recv_timeout(REFRESH) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        });
    }
    let mut sel = Selection::default();
    loop {
        while let Ok(m) = hear.try_recv() {
            sel.message = m;
        }
        let snapshot = data.lock().unwrap_or_else(|p| p.into_inner()).clone();
        terminal.draw(|f| draw(f, &snapshot, &sel))?;
        // Short polls keep the view a second fresh; a resize redraws.
        if !event::poll(Duration::from_millis(250))? {
            continue;
        }
        match event::read()? {
            TermEvent::Key(key) => match on_key(key, &snapshot.rows(), &mut sel) {
                KeyOutcome::Quit => break,
                KeyOutcome::Act(action, model) => {
                    sel.message = format!("{model}: asking the daemon…");
                    let client = client.clone();
                    let said = said.clone();
                    let wake = wake.clone();
                    std::thread::spawn(move || {
                        let m = client
                            .act(action, &model)
                            .unwrap_or_else(|e| format!("{model}: {e:#}"));
                        let _ = said.send(m);
                        let _ = wake.send(());
                    });
                }
                KeyOutcome::Redraw | KeyOutcome::Ignored => {}
            },
            TermEvent::Resize(..) => terminal.autoresize()?,
            _ => {}
        }
    }
    drop(terminal);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use locara_daemon::testing::{FakeDaemon, FakeEngine};
    use ratatui::backend::TestBackend;
    use std::time::Instant;

    fn screen(data: &TopData, sel: &Selection, w: u16, h: u16) -> String {
        let mut t = ratatui::Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, data, sel)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Refreshes until `until` holds, for up to 20 s.
    fn refresh_until(data: &mut TopData, client: &Client, until: impl Fn(&TopData) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            data.refresh(client);
            if until(data) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited 20 s; last: {:?} {:?}",
                data.error,
                data.rows()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    #[test]
    fn the_view_follows_a_daemon_of_fake_workers_at_every_size() {
        let home = tempfile::tempdir().unwrap();
        let daemon = FakeDaemon::start(home.path(), &["fake:a", "fake:b"], FakeEngine::new(3));
        let client = Client {
            url: daemon.url.clone(),
            auth: daemon.admin.clone(),
        };
        client.act(Action::Load, "fake:a").unwrap();
        let mut data = TopData::default();
        refresh_until(&mut data, &client, |d| {
            d.rows()
                .iter()
                .any(|r| r.name == "fake:a" && r.footprint.is_some())
                && d.samples
                    .iter()
                    .any(|s| s.models.iter().any(|m| m.name == "fake:a"))
                && d.events.iter().any(|e| e.kind == EventKind::Loaded)
        });
        let sel = Selection::default();

        let big = screen(&data, &sel, 120, 40);
        assert!(big.contains("fake:a"), "{big}");
        // The fake worker's footprint, as the simulated OS measures it.
        assert!(big.contains("96.0 MiB"), "{big}");
        assert!(big.contains("models 96.0 MiB"), "{big}");
        assert!(big.contains("pressure normal"), "{big}");
        assert!(big.contains("rest of system"), "{big}");
        assert!(big.contains("Events"), "{big}");
        assert!(big.contains("loaded"), "{big}");
        assert!(big.contains("u unload"), "{big}");
        // The level strip has one column per sample.
        assert!(big.contains('▁'), "{big}");

        let usual = screen(&data, &sel, 80, 24);
        assert!(usual.contains("fake:a"), "{usual}");
        assert!(usual.contains("Memory █"), "{usual}");
        assert!(usual.contains("Pressure"), "{usual}");

        // Small terminals keep the model row before the timeline and events.
        let small = screen(&data, &sel, 50, 10);
        assert!(small.contains("fake:a"), "{small}");
        for (w, h) in [(20, 4), (1, 1), (200, 3), (10, 60)] {
            screen(&data, &sel, w, h);
        }

        // Pin, hold, then the unload key on the selected row.
        client.act(Action::Pin, "fake:a").unwrap();
        refresh_until(&mut data, &client, |d| {
            d.rows().iter().any(|r| r.name == "fake:a" && r.pinned)
        });
        assert!(screen(&data, &sel, 120, 40).contains("yes"));
        client.act(Action::Hold, "fake:b").unwrap();
        refresh_until(&mut data, &client, |d| {
            d.rows().iter().any(|r| r.name == "fake:b" && r.held)
        });
        let mut sel = Selection::default();
        let rows = data.rows();
        assert_eq!(rows[0].name, "fake:a", "{rows:?}");
        let outcome = on_key(key('u'), &rows, &mut sel);
        assert_eq!(outcome, KeyOutcome::Act(Action::Unload, "fake:a".into()));
        client.act(Action::Unload, "fake:a").unwrap();
        refresh_until(&mut data, &client, |d| {
            d.rows().iter().all(|r| r.name != "fake:a")
        });
        let after = screen(&data, &sel, 120, 40);
        assert!(after.contains("unloaded"), "{after}");
        assert!(after.contains("held"), "{after}");

        // A warn shows in the header, the strip and the events.
        agent()
            .post(&format!("{}/locara/v1/pressure/simulate", client.url))
            .set("Authorization", &client.auth)
            .send_json(serde_json::json!({"level": "warn", "for": "60s"}))
            .unwrap();
        refresh_until(&mut data, &client, |d| {
            d.samples
                .back()
                .is_some_and(|s| s.level == PressureLevel::Warn)
        });
        let warned = screen(&data, &sel, 120, 40);
        assert!(warned.contains("pressure warn (simulated)"), "{warned}");
        assert!(warned.contains('▅'), "{warned}");
        assert!(warned.contains("level"), "{warned}");
    }

    #[test]
    fn keys_move_the_selection_within_the_rows() {
        let rows = vec![
            ModelRow {
                name: "a".into(),
                ..ModelRow::default()
            },
            ModelRow {
                name: "b".into(),
                ..ModelRow::default()
            },
        ];
        let mut sel = Selection::default();
        let down = KeyEvent::new(KeyCode::Down, KeyModifiers::NONE);
        on_key(down, &rows, &mut sel);
        on_key(down, &rows, &mut sel);
        assert_eq!(sel.row, 1);
        assert_eq!(
            on_key(key('h'), &rows, &mut sel),
            KeyOutcome::Act(Action::Hold, "b".into())
        );
        assert_eq!(
            on_key(key('p'), &[], &mut sel),
            KeyOutcome::Ignored,
            "no row, no action"
        );
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(on_key(ctrl_c, &rows, &mut sel), KeyOutcome::Quit);
    }

    #[test]
    fn an_unreachable_daemon_is_said_in_the_header() {
        let mut data = TopData::default();
        data.refresh(&Client {
            url: "http://127.0.0.1:1".into(),
            auth: "Bearer x".into(),
        });
        let s = screen(&data, &Selection::default(), 100, 12);
        assert!(s.contains("daemon unreachable"), "{s}");
    }
}
