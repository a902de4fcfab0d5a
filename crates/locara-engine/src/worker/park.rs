//! A worker with its models set aside: after memory pressure freed its
//! pool, the worker drops the llama.cpp models too and keeps only what
//! needs none ([`Parked`]); the first request that needs a model loads it
//! again from the same file ([`serve_parked`]).

use super::{
    error, give_back_freed_memory, resized_in_place, write_frame, Control, Engine, Kept, Sequence,
    Served, Settings, WorkerError,
};
use crate::drafter::{Drafter, ParkedDrafter};
use crate::embed::Embedder;
use crate::pool;
use crate::protocol::{ErrorKind, Event, LoadRequest, Request, SequenceInfo, WorkerStats};
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::{Instant, SystemTime};

/// After [`Engine::serve`]: the engine taken apart ([`Engine::park`]) when
/// it went to sleep; otherwise (Exit, the parent gone, an error) `None` or
/// the error, once its conversations are written to the disk tier.
pub(super) fn park_or_end(
    mut engine: Engine<'_>,
    served: Result<Served, WorkerError>,
    out: &mut impl Write,
) -> Result<Option<Parked>, WorkerError> {
    match served {
        Ok(Served::Asleep) => Ok(Some(engine.park())),
        ended => {
            // Unloading: the conversations go to disk.
            engine.write_disk_tier(out);
            ended.map(|_| None)
        }
    }
}

/// Serves with the models set aside: the pool was freed (memory pressure)
/// and the llama.cpp models went with it, their vocabularies and any
/// repacked weights too, while the files stay where they were. What needs
/// no model is answered from `parked` ([`Parked::wait`]); the first request
/// that needs one loads the model (and its draft) again, mapped from the
/// same files, from the page cache where the OS kept them. Each time the
/// pool is freed again, they are set aside again.
///
/// A file that changed since the first load ([`FileIdentity`]) is not
/// loaded again: the waiting request gets `load_failed` and the worker
/// ends, so that the daemon loads the model anew, through the guard.
pub(super) fn serve_parked(
    backend: &LlamaBackend,
    load: &LoadRequest,
    params: &LlamaModelParams,
    files: Vec<(PathBuf, FileIdentity)>,
    mut parked: Parked,
    rx: &Receiver<Request>,
    out: &mut impl Write,
) -> Result<(), WorkerError> {
    loop {
        let Some(first) = parked.wait(rx, out)? else {
            return Ok(());
        };
        let (model, draft) = match load_again(backend, load, params, &files) {
            Ok(models) => models,
            Err(message) => {
                let id = match &first {
                    Request::Generate(g) => Some(g.id),
                    Request::Embed(e) => Some(e.id),
                    _ => None,
                };
                error(out, id, ErrorKind::LoadFailed, message)?;
                return Ok(());
            }
        };
        let mut engine = Engine::unpark(backend, &model, draft.as_ref(), parked);
        let served = match engine.handle(first, out) {
            Ok(Control::Continue) => engine.serve(rx, out),
            Ok(Control::Exit) => Ok(Served::Exit),
            Err(e) => Err(e),
        };
        let Some(again) = park_or_end(engine, served, out)? else {
            return Ok(());
        };
        parked = again;
        drop(draft);
        drop(model);
        parked.settle(out)?;
    }
}

/// What tells a model file apart from one put in its place: device, inode,
/// size and modification time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileIdentity {
    device: u64,
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileIdentity {
    pub(super) fn of(path: &Path) -> std::io::Result<FileIdentity> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok(FileIdentity {
            device: m.dev(),
            inode: m.ino(),
            len: m.len(),
            modified: m.modified().ok(),
        })
    }
}

/// The model and its draft loaded again for [`serve_parked`], each file
/// checked to be the one loaded first; the message says what failed.
fn load_again(
    backend: &LlamaBackend,
    load: &LoadRequest,
    params: &LlamaModelParams,
    files: &[(PathBuf, FileIdentity)],
) -> Result<(LlamaModel, Option<LlamaModel>), String> {
    for (path, first) in files {
        let now = FileIdentity::of(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if now != *first {
            return Err(format!(
                "{} changed since this worker loaded it; the model is loaded anew in a new worker",
                path.display()
            ));
        }
    }
    let again = |path: &Path| {
        LlamaModel::load_from_file(backend, path, params)
            .map_err(|e| format!("llama.cpp could not load {} again: {e}", path.display()))
    };
    let model = again(&load.path)?;
    let draft = load.draft.as_deref().map(again).transpose()?;
    Ok((model, draft))
}

/// An engine without its models: the pool was freed ([`Engine::sleep`]),
/// nothing runs or waits, and the worker set the llama.cpp models aside
/// ([`serve_parked`]). What it keeps here is what no model is needed for:
/// the settings the model and the load gave, the counters, the RAM and disk
/// tiers, the daemon's share of the cores.
pub(super) struct Parked {
    settings: Settings,
    seqs: Vec<Sequence>,
    clock: u64,
    kept: Kept,
    /// The pool's size at the next request.
    cells: u32,
    sleep_report: Option<SleepReport>,
    embedder: Embedder,
    drafter: Option<ParkedDrafter>,
}

/// What the report of a freed pool says: the cells it had, the sequences
/// it dropped, and when the freeing began.
#[derive(Debug, Clone, Copy)]
pub(super) struct SleepReport {
    pub(super) previous: u32,
    pub(super) dropped: u32,
    pub(super) started: Instant,
}

impl SleepReport {
    pub(super) fn write(self, out: &mut impl Write) -> Result<(), WorkerError> {
        resized_in_place(out, 0, self.previous, self.dropped, self.started)
    }
}

impl Parked {
    /// Once the models are dropped: gives the freed heap back to the OS,
    /// then writes the freed pool's report, if it is still to be written.
    pub(super) fn settle(&mut self, out: &mut impl Write) -> Result<(), WorkerError> {
        give_back_freed_memory();
        match self.sleep_report.take() {
            Some(r) => r.write(out),
            None => Ok(()),
        }
    }

    /// Answers what needs no model, as the engine would while its pool is
    /// freed; returns the first request that needs the model (a generation
    /// or an embedding), or `None` at Exit or when the parent is gone.
    fn wait(
        &mut self,
        rx: &Receiver<Request>,
        out: &mut impl Write,
    ) -> Result<Option<Request>, WorkerError> {
        loop {
            let Ok(req) = rx.recv() else { return Ok(None) };
            match req {
                Request::Generate(_) | Request::Embed(_) => return Ok(Some(req)),
                Request::Exit => return Ok(None),
                Request::Stats => write_frame(out, &Event::Stats(self.stats()))?,
                Request::Sequences => write_frame(
                    out,
                    &Event::Sequences {
                        sequences: self.sequence_infos(),
                    },
                )?,
                Request::Resize { cells } => {
                    // As an engine asleep: the next request makes the pool
                    // at this size.
                    if cells > 0 {
                        self.cells = cells;
                    }
                    resized_in_place(out, 0, 0, 0, Instant::now())?;
                }
                Request::DropTier { .. } => {
                    // Its conversations went to the disk tier, where there
                    // is one, when the pool was freed.
                    self.kept.tier = pool::RamTier::new(self.kept.tier.budget());
                    give_back_freed_memory();
                    write_frame(out, &Event::Stats(self.stats()))?;
                }
                Request::SetThreads { threads, class } => {
                    self.kept.class = class;
                    self.kept.paused = threads == 0;
                    if !self.kept.paused {
                        self.settings.shape.threads = i32::try_from(threads).unwrap_or(i32::MAX);
                    }
                }
                // Nothing runs, waits or grows.
                Request::Cancel { .. } | Request::DenyGrowth => {}
                Request::Load(_) => error(
                    out,
                    None,
                    ErrorKind::BadRequest,
                    "a model is already loaded; a worker holds one model",
                )?,
            }
        }
    }

    fn stats(&self) -> WorkerStats {
        self.kept
            .stats(self.settings.pool_max, self.settings.shape.threads)
    }

    fn sequence_infos(&self) -> Vec<SequenceInfo> {
        self.seqs
            .iter()
            .enumerate()
            .map(|(i, s)| SequenceInfo {
                seq: i as u32,
                id: None,
                tokens: Vec::new(),
                exact: 0,
                pos_min: -1,
                pos_max: -1,
                last_used: s.last_used,
            })
            .collect()
    }
}

impl<'m> Engine<'m> {
    /// Takes an engine whose pool is freed and that has nothing running
    /// or waiting apart from its models ([`Served::Asleep`]).
    fn park(self) -> Parked {
        let Engine {
            backend: _,
            model: _,
            ctx,
            settings,
            pool_cells: _,
            seqs,
            slots,
            queue,
            batch: _,
            clock,
            growth_pending: _,
            stalled: _,
            kept,
            asleep,
            sleep_report,
            disk_growth: _,
            embedder,
            drafter,
        } = self;
        debug_assert!(ctx.is_none() && slots.is_empty() && queue.is_empty());
        Parked {
            settings,
            seqs,
            clock,
            kept,
            cells: asleep.unwrap_or(0),
            sleep_report,
            embedder,
            drafter: drafter.map(Drafter::park),
        }
    }

    /// The engine of [`Engine::park`] again, over the model (and draft)
    /// loaded anew, asleep: the next request makes its pool.
    fn unpark(
        backend: &'m LlamaBackend,
        model: &'m LlamaModel,
        draft: Option<&'m LlamaModel>,
        p: Parked,
    ) -> Engine<'m> {
        Engine {
            backend,
            model,
            ctx: None,
            settings: p.settings,
            pool_cells: 0,
            seqs: p.seqs,
            slots: Vec::new(),
            queue: VecDeque::new(),
            // Made with the pool, at its batch size.
            batch: LlamaBatch::new(1, 1),
            clock: p.clock,
            growth_pending: false,
            stalled: false,
            kept: p.kept,
            asleep: Some(p.cells),
            sleep_report: p.sleep_report,
            disk_growth: None,
            embedder: p.embedder,
            drafter: p
                .drafter
                .zip(draft)
                .map(|(d, model)| Drafter::unpark(model, d)),
        }
    }
}
