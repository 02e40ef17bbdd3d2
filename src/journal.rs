//! The sink's durable state for one run: an append-only journal of the result
//! frames it tallied, checkpointed into a snapshot so it does not grow without
//! bound, and replayed on restart.
//!
//! # Files (in `STATE/runs/<run id>/`)
//! - `run.json`: what the run is (input, when it started); written once.
//! - `journal-<generation>.log`: records `[len: u32 LE][crc32: u32 LE][payload]`,
//!   each payload one result batch body. A torn or corrupt tail (a crash in
//!   mid-write) is cut off at the last whole record on replay.
//! - `snapshot.bin`: `[b"OGSN"][crc32: u32 LE][payload]`, the whole tally as of
//!   the start of journal `generation`; written to a temporary file, fsynced
//!   and renamed, so it is either the old one or the new one.
//! - `report.json`: present once the run is complete.
//!
//! Writes and fsyncs happen on a writer thread ([`JournalWriter`]) so the
//! sink keeps receiving while the disk works; everything handed over while a
//! sync is under way goes into the next sync (group commit).

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const SNAPSHOT_MAGIC: &[u8; 4] = b"OGSN";
/// Largest journal record accepted on replay.
const MAX_RECORD: usize = 64 << 20;

/// What the sink records about a run when it first sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    pub input: String,
    /// Unix time in seconds when the run started (first hello).
    pub started_unix: f64,
}

/// The files of one run.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

/// Appends one framed record to `buf`.
pub fn push_record(buf: &mut Vec<u8>, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    buf.extend_from_slice(payload);
}

fn read_file(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync folder).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("cannot write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("cannot rename into", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("cannot fsync folder", dir, e))
}

impl RunDir {
    /// The folder of run `id` under `state`.
    pub fn new(state: &Path, id: &str) -> RunDir {
        RunDir {
            dir: state.join("runs").join(id),
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn exists(&self) -> bool {
        self.dir.join("run.json").exists()
    }

    /// Creates the folder and `run.json` (durably), unless they exist.
    pub fn create(&self, meta: &RunMeta) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("cannot create", &self.dir, e))?;
        if !self.exists() {
            let json = serde_json::to_vec_pretty(meta).expect("meta serialises");
            write_atomic(&self.dir.join("run.json"), &json)?;
            sync_dir(self.dir.parent().expect("runs folder"))?;
        }
        Ok(())
    }

    pub fn meta(&self) -> Result<RunMeta> {
        let path = self.dir.join("run.json");
        let bytes = read_file(&path)?
            .ok_or_else(|| Error::State(format!("{} is missing", path.display())))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::State(format!("{} is not a run description: {e}", path.display())))
    }

    pub fn report_path(&self) -> PathBuf {
        self.dir.join("report.json")
    }

    /// The stored report of a completed run.
    pub fn report(&self) -> Result<Option<Vec<u8>>> {
        read_file(&self.report_path())
    }

    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("journal-{generation}.log"))
    }

    /// Bytes in journal `generation` (0 when it does not exist).
    pub fn journal_len(&self, generation: u64) -> u64 {
        fs::metadata(self.journal_path(generation)).map_or(0, |m| m.len())
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join("snapshot.bin")
    }

    /// Loads the snapshot (if any) and replays the journal after it: calls
    /// `snapshot` with the snapshot payload, then `record` with each journal
    /// payload in order. Cuts off a torn tail. Returns the generation to
    /// continue writing and how many records were replayed.
    pub fn replay(
        &self,
        mut snapshot: impl FnMut(&[u8]) -> Result<()>,
        mut record: impl FnMut(&[u8]),
    ) -> Result<(u64, u64)> {
        let mut generation = 0;
        let snap_path = self.snapshot_path();
        if let Some(bytes) = read_file(&snap_path)? {
            let ok = bytes.len() >= 16
                && &bytes[0..4] == SNAPSHOT_MAGIC
                && crc32fast::hash(&bytes[8..])
                    == u32::from_le_bytes(bytes[4..8].try_into().expect("4"));
            if !ok {
                return Err(Error::State(format!("{} is corrupt", snap_path.display())));
            }
            generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8"));
            snapshot(&bytes[16..])?;
        }
        let path = self.journal_path(generation);
        let mut replayed = 0;
        let Some(bytes) = read_file(&path)? else {
            return Ok((generation, 0));
        };
        let mut at = 0;
        while let Some(header) = bytes.get(at..at + 8) {
            let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(header[4..8].try_into().expect("4"));
            let Some(payload) = bytes
                .get(at + 8..at + 8 + len)
                .filter(|_| len <= MAX_RECORD)
            else {
                break;
            };
            if crc32fast::hash(payload) != crc {
                break;
            }
            record(payload);
            replayed += 1;
            at += 8 + len;
        }
        if at < bytes.len() {
            tracing::warn!(
                journal = %path.display(),
                kept = at,
                dropped = bytes.len() - at,
                "journal has a torn tail; cutting it off"
            );
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("cannot open", &path, e))?;
            f.set_len(at as u64)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("cannot truncate", &path, e))?;
        }
        Ok((generation, replayed))
    }
}

/// What the sink hands the writer thread.
enum Request {
    /// Append these framed records, then fsync.
    Append(Vec<u8>),
    /// Write this snapshot payload, then start a new journal generation.
    Compact(Vec<u8>),
}

/// The writer thread's answer: everything handed over up to `ticket` is durable.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    pub ticket: u64,
    pub syncs: u64,
    pub sync_time: Duration,
}

/// Handle on the journal's writer thread.
pub struct JournalWriter {
    requests: Option<mpsc::Sender<(u64, Request)>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
    next_ticket: u64,
}

impl JournalWriter {
    /// Starts the writer for `run` at `generation`; it reports progress as
    /// 8-byte tickets on `notify` (an inproc PAIR socket connected to the sink loop)
    /// and hands the last sync's figures through `synced`.
    pub fn start(
        run: &RunDir,
        generation: u64,
        notify: zmq::Socket,
        synced: mpsc::Sender<Synced>,
    ) -> Result<JournalWriter> {
        let run = run.clone();
        let path = run.journal_path(generation);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open journal", &path, e))?;
        let (tx, rx) = mpsc::channel::<(u64, Request)>();
        let thread = thread::Builder::new()
            .name("journal".into())
            .spawn({
                let span = tracing::Span::current();
                move || span.in_scope(|| writer_loop(run, generation, file, rx, notify, synced))
            })
            .map_err(|e| Error::Config(format!("cannot start the journal thread: {e}")))?;
        Ok(JournalWriter {
            requests: Some(tx),
            thread: Some(thread),
            next_ticket: 0,
        })
    }

    fn send(&mut self, request: Request) -> Result<u64> {
        self.next_ticket += 1;
        let sent = self
            .requests
            .as_ref()
            .is_some_and(|tx| tx.send((self.next_ticket, request)).is_ok());
        if sent {
            Ok(self.next_ticket)
        } else {
            Err(self.stop_with_error())
        }
    }

    /// Hands framed records over; returns the ticket that will say they are durable.
    pub fn append(&mut self, records: Vec<u8>) -> Result<u64> {
        self.send(Request::Append(records))
    }

    /// Hands a snapshot over; later appends go to a new journal generation.
    pub fn compact(&mut self, snapshot: Vec<u8>) -> Result<u64> {
        self.send(Request::Compact(snapshot))
    }

    /// The writer's error once it has stopped.
    fn stop_with_error(&mut self) -> Error {
        self.requests = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            _ => Error::State("the journal writer stopped".into()),
        }
    }

    /// Finishes what was handed over and stops the thread.
    pub fn close(mut self) -> Result<()> {
        self.requests = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::State("the journal writer panicked".into())),
            None => Ok(()),
        }
    }
}

fn writer_loop(
    run: RunDir,
    mut generation: u64,
    mut file: File,
    rx: mpsc::Receiver<(u64, Request)>,
    notify: zmq::Socket,
    synced: mpsc::Sender<Synced>,
) -> Result<()> {
    let mut syncs = 0;
    while let Ok(first) = rx.recv() {
        // Group commit: take everything already waiting into this sync.
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let mut last_ticket = 0;
        let mut dirty = false;
        let started = Instant::now();
        for (ticket, request) in batch {
            last_ticket = ticket;
            match request {
                Request::Append(bytes) => {
                    let path = run.journal_path(generation);
                    file.write_all(&bytes)
                        .map_err(|e| Error::io("cannot write journal", &path, e))?;
                    dirty = true;
                }
                Request::Compact(snapshot) => {
                    if dirty {
                        let path = run.journal_path(generation);
                        file.sync_data()
                            .map_err(|e| Error::io("cannot fsync journal", &path, e))?;
                        dirty = false;
                    }
                    let old = run.journal_path(generation);
                    generation += 1;
                    let mut bytes = Vec::with_capacity(snapshot.len() + 16);
                    bytes.extend_from_slice(SNAPSHOT_MAGIC);
                    bytes.extend_from_slice(&[0; 4]);
                    bytes.extend_from_slice(&generation.to_le_bytes());
                    bytes.extend_from_slice(&snapshot);
                    let crc = crc32fast::hash(&bytes[8..]);
                    bytes[4..8].copy_from_slice(&crc.to_le_bytes());
                    let new = run.journal_path(generation);
                    file = File::create(&new)
                        .map_err(|e| Error::io("cannot create journal", &new, e))?;
                    write_atomic(&run.snapshot_path(), &bytes)?;
                    fs::remove_file(&old)
                        .map_err(|e| Error::io("cannot remove old journal", &old, e))?;
                }
            }
        }
        if dirty {
            let path = run.journal_path(generation);
            file.sync_data()
                .map_err(|e| Error::io("cannot fsync journal", &path, e))?;
        }
        syncs += 1;
        let _ = synced.send(Synced {
            ticket: last_ticket,
            syncs,
            sync_time: started.elapsed(),
        });
        // The sink loop may be gone (shutting down); that is fine.
        let _ = notify.send(&last_ticket.to_le_bytes()[..], 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("ordergrid-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn writer(
        run: &RunDir,
        generation: u64,
    ) -> (
        JournalWriter,
        zmq::Socket,
        mpsc::Receiver<Synced>,
        zmq::Context,
    ) {
        let ctx = zmq::Context::new();
        let ep = format!("inproc://journal-test-{}", run.path().display());
        let rx = ctx.socket(zmq::PAIR).unwrap();
        rx.bind(&ep).unwrap();
        let tx = ctx.socket(zmq::PAIR).unwrap();
        tx.connect(&ep).unwrap();
        let (stx, srx) = mpsc::channel();
        (
            JournalWriter::start(run, generation, tx, stx).unwrap(),
            rx,
            srx,
            ctx,
        )
    }

    #[test]
    fn records_survive_and_torn_tail_is_cut() {
        let state = temp_dir("torn");
        let run = RunDir::new(&state, "r1");
        run.create(&RunMeta {
            input: "x".into(),
            started_unix: 1.0,
        })
        .unwrap();
        let (mut w, notify, _synced, _ctx) = writer(&run, 0);
        let mut buf = Vec::new();
        push_record(&mut buf, b"one");
        push_record(&mut buf, b"two");
        let t = w.append(buf).unwrap();
        let mut got = [0u8; 8];
        notify.recv_into(&mut got, 0).unwrap();
        assert_eq!(u64::from_le_bytes(got), t);
        w.close().unwrap();
        // A torn write: half a record at the end.
        let path = run.journal_path(0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let mut seen = Vec::new();
        let (generation, n) = run.replay(|_| Ok(()), |p| seen.push(p.to_vec())).unwrap();
        assert_eq!((generation, n), (0, 2));
        assert_eq!(seen, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            2 * 8 + 6,
            "tail cut off"
        );
        fs::remove_dir_all(state).unwrap();
    }

    #[test]
    fn compaction_starts_a_new_generation() {
        let state = temp_dir("compact");
        let run = RunDir::new(&state, "r2");
        run.create(&RunMeta {
            input: "x".into(),
            started_unix: 1.0,
        })
        .unwrap();
        let (mut w, notify, _synced, _ctx) = writer(&run, 0);
        let mut buf = Vec::new();
        push_record(&mut buf, b"before");
        w.append(buf).unwrap();
        w.compact(b"SNAP".to_vec()).unwrap();
        let mut buf = Vec::new();
        push_record(&mut buf, b"after");
        let last = w.append(buf).unwrap();
        let mut got = [0u8; 8];
        loop {
            notify.recv_into(&mut got, 0).unwrap();
            if u64::from_le_bytes(got) == last {
                break;
            }
        }
        w.close().unwrap();
        let mut snap = Vec::new();
        let mut seen = Vec::new();
        let (generation, n) = run
            .replay(
                |s| {
                    snap = s.to_vec();
                    Ok(())
                },
                |p| seen.push(p.to_vec()),
            )
            .unwrap();
        assert_eq!((generation, n), (1, 1));
        assert_eq!(snap, b"SNAP");
        assert_eq!(seen, vec![b"after".to_vec()]);
        assert!(!run.journal_path(0).exists());
        fs::remove_dir_all(state).unwrap();
    }
}
