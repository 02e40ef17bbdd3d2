//! The sink's durable state for one run: an append-only journal of the result
//! frames it tallied, checkpointed into a snapshot so it does not grow without
//! bound, and replayed on restart.
//!
//! # Files (in `STATE/runs/<run id>/`)
//! - `run.json`: what the run is (input, when it started); written once.
//! - `journal-<generation>.log`: records `[len: u32 LE][crc32: u32 LE][payload]`,
//!   each payload one result batch body. A torn tail (a crash in mid-write)
//!   is cut off at the last whole record on replay; damage followed by
//!   intact records is kept as evidence and only the intact records are
//!   recovered (see [`RunDir::replay`]).
//! - `snapshot.bin`: `[b"OGSN"][crc32: u32 LE][payload]`, the whole tally as of
//!   the start of journal `generation`; written to a temporary file, fsynced
//!   and renamed, so it is either the old one or the new one.
//! - `report.json`: present once the run is complete.
//!
//! Writes and fsyncs happen on a writer thread ([`JournalWriter`]) so the
//! sink keeps receiving while the disk works; everything handed over while a
//! sync is under way goes into the next sync (group commit). A write or
//! fsync that fails (a full disk) is retried until it succeeds, the file cut
//! back to its last durable length each time; meanwhile nothing new becomes
//! durable, so nothing new is acknowledged, and [`JournalHealth`] says why.
//! The writer tells the sink loop what became durable with tickets on an
//! inproc socket ([`Tickets`]); a snapshot's payload is a [`Snapshot`].

use crate::transport::{self, SocketSpec};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SNAPSHOT_MAGIC: &[u8; 4] = b"OGSN";
/// Largest journal record accepted on replay.
const MAX_RECORD: usize = crate::protocol::MAX_FRAME_BYTES;

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
    sync_dir(parent_folder(path))
}

/// The folder holding `path`: `.` for a bare relative name such as `r.json`.
pub fn parent_folder(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
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

    /// Counts one more sink process taking this run over; returns the count.
    pub fn count_restart(&self) -> Result<u64> {
        let path = self.dir.join("restarts");
        let before = match read_file(&path)? {
            Some(bytes) => String::from_utf8_lossy(&bytes).trim().parse().unwrap_or(0),
            None => 0,
        };
        let now: u64 = before + 1;
        write_atomic(&path, format!("{now}\n").as_bytes())?;
        Ok(now)
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
    /// `snapshot` with the snapshot payload, then `record` with each intact
    /// journal payload in order. A torn tail (a crash in mid-write) is cut
    /// off. Damage *followed by intact records* is never cut silently: the
    /// file is kept as evidence (`journal-N.log.damaged-<unix time>`), the
    /// intact records are recovered into a fresh journal, and the damage is
    /// reported in the result (the orders it held are no longer tallied, so
    /// they are delivered again).
    pub fn replay(
        &self,
        mut snapshot: impl FnMut(&[u8]) -> Result<()>,
        mut record: impl FnMut(&[u8]),
    ) -> Result<Replayed> {
        let mut generation = 0;
        let snap_path = self.snapshot_path();
        if let Some(bytes) = read_file(&snap_path)? {
            let ok = bytes.len() >= 16
                && &bytes[0..4] == SNAPSHOT_MAGIC
                && crc32fast::hash(&bytes[8..])
                    == u32::from_le_bytes(bytes[4..8].try_into().expect("4"));
            if !ok {
                return Err(Error::State(format!(
                    "{} is damaged (its checksum does not match), so the tally of run {} cannot be \
                     restored; to start this run again from nothing, move the folder {} aside \
                     and restart the sink and the ventilator",
                    snap_path.display(),
                    self.id(),
                    self.dir.display()
                )));
            }
            generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8"));
            snapshot(&bytes[16..])?;
        }
        let path = self.journal_path(generation);
        let Some(bytes) = read_file(&path)? else {
            return Ok(Replayed {
                generation,
                records: 0,
                damage: None,
            });
        };
        let scan = scan_records(&bytes);
        for range in &scan.records {
            record(&bytes[range.clone()]);
        }
        let records = scan.records.len() as u64;
        let damage = if scan.damaged_bytes > 0 {
            Some(self.set_damaged_journal_aside(&path, &bytes, &scan)?)
        } else {
            if scan.torn_tail > 0 {
                let keep = bytes.len() - scan.torn_tail;
                tracing::warn!(
                    journal = %path.display(),
                    kept = keep,
                    dropped = scan.torn_tail,
                    "journal has a torn tail (a write cut short by a crash); cutting it off"
                );
                truncate(&path, keep as u64)?;
            }
            None
        };
        Ok(Replayed {
            generation,
            records,
            damage,
        })
    }

    /// The run id this folder is named after.
    fn id(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }

    /// Keeps a damaged journal as evidence and writes its intact records
    /// into a fresh journal of the same generation.
    fn set_damaged_journal_aside(&self, path: &Path, bytes: &[u8], scan: &Scan) -> Result<Damage> {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut kept_as = path.as_os_str().to_owned();
        kept_as.push(format!(".damaged-{unix}"));
        let kept_as = PathBuf::from(kept_as);
        fs::rename(path, &kept_as)
            .map_err(|e| Error::io("cannot keep damaged journal as", &kept_as, e))?;
        let mut clean = Vec::with_capacity(bytes.len());
        for range in &scan.records {
            push_record(&mut clean, &bytes[range.clone()]);
        }
        write_atomic(path, &clean)?;
        let damage = Damage {
            journal: path.to_path_buf(),
            kept_as,
            first_offset: scan.first_damage,
            damaged_bytes: scan.damaged_bytes as u64,
            recovered_records: scan.records.len() as u64,
        };
        tracing::error!(
            journal = %damage.journal.display(),
            "{damage}"
        );
        Ok(damage)
    }
}

/// What [`RunDir::replay`] found.
#[derive(Debug)]
pub struct Replayed {
    /// The journal generation to continue writing.
    pub generation: u64,
    /// Intact journal records replayed.
    pub records: u64,
    /// Damage found between intact records, if any.
    pub damage: Option<Damage>,
}

/// A journal damaged in the middle (not a torn tail): what was done about it.
#[derive(Debug, Clone)]
pub struct Damage {
    pub journal: PathBuf,
    /// Where the damaged file was kept, untouched.
    pub kept_as: PathBuf,
    /// Offset of the first unreadable byte.
    pub first_offset: u64,
    /// Unreadable bytes in all.
    pub damaged_bytes: u64,
    pub recovered_records: u64,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "journal {} is damaged: {} bytes from offset {} are unreadable between intact records; \
             kept the file untouched as {}, recovered the {} intact records; the orders of the \
             damaged records are no longer counted as tallied and will be delivered again",
            self.journal.display(),
            self.damaged_bytes,
            self.first_offset,
            self.kept_as.display(),
            self.recovered_records
        )
    }
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    f.set_len(len)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("cannot truncate", path, e))
}

/// The record framing read back: where the intact records are, how many
/// bytes between them are unreadable, and how long a torn tail is.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// Payload byte ranges of intact records, in file order.
    records: Vec<std::ops::Range<usize>>,
    /// Unreadable bytes followed by intact records (damage).
    damaged_bytes: usize,
    /// Offset of the first damaged byte (when `damaged_bytes > 0`).
    first_damage: u64,
    /// Unreadable bytes at the end with no intact record after them.
    torn_tail: usize,
}

/// The payload range of an intact record at `at`, if there is one.
fn record_at(bytes: &[u8], at: usize) -> Option<std::ops::Range<usize>> {
    let header = bytes.get(at..at.checked_add(8)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4")) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4"));
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let range = at + 8..at + 8 + len;
    let payload = bytes.get(range.clone())?;
    (crc32fast::hash(payload) == crc).then_some(range)
}

/// True when an intact record starts at `at` and either ends the file or is
/// followed by another intact record: a chance match of both checksums in
/// damaged bytes is out of the question (about 2^-64).
fn resumes_at(bytes: &[u8], at: usize) -> bool {
    record_at(bytes, at).is_some_and(|r| r.end == bytes.len() || record_at(bytes, r.end).is_some())
}

fn scan_records(bytes: &[u8]) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0;
    while at < bytes.len() {
        if let Some(range) = record_at(bytes, at) {
            at = range.end;
            scan.records.push(range);
            continue;
        }
        // Unreadable at `at`: damage if intact records follow, a torn tail if not.
        match (at + 1..bytes.len()).find(|&p| resumes_at(bytes, p)) {
            Some(next) => {
                if scan.damaged_bytes == 0 {
                    scan.first_damage = at as u64;
                }
                scan.damaged_bytes += next - at;
                at = next;
            }
            None => {
                scan.torn_tail = bytes.len() - at;
                break;
            }
        }
    }
    scan
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

/// Whether the journal can be written, shared between the writer thread and
/// the sink (progress, metrics, `/healthz`).
#[derive(Debug, Default)]
pub struct JournalHealth {
    /// The last write or fsync failed and is being retried.
    failing: AtomicBool,
    /// Why, as one line naming the file and the free space.
    reason: Mutex<String>,
    /// Set when the writer is being closed: stop retrying.
    closing: AtomicBool,
}

impl JournalHealth {
    /// `Some(reason)` while writes are failing and being retried.
    pub fn failing(&self) -> Option<String> {
        self.failing
            .load(Ordering::Relaxed)
            .then(|| self.reason.lock().map(|r| r.clone()).unwrap_or_default())
    }

    fn set_failing(&self, reason: String) {
        if let Ok(mut r) = self.reason.lock() {
            *r = reason;
        }
        self.failing.store(true, Ordering::Relaxed);
    }
}

/// How long the writer waits before retrying a failed write, at most.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often a write that keeps failing is logged again.
const FAILING_LOG_EVERY: Duration = Duration::from_secs(5);

/// A snapshot's payload: the run's whole tally and the workers seen
/// (MessagePack, inside the `snapshot.bin` framing above).
#[derive(Serialize, Deserialize)]
pub struct Snapshot {
    pub ledger: crate::ledger::Ledger,
    pub workers: Vec<u64>,
}

impl Snapshot {
    pub fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec(self).map_err(|e| Error::State(format!("cannot encode snapshot: {e}")))
    }

    pub fn decode(payload: &[u8]) -> std::result::Result<Snapshot, String> {
        rmp_serde::from_slice(payload).map_err(|e| format!("snapshot does not decode: {e}"))
    }
}

/// The sink loop's end of the journal writer's tickets: an inproc PAIR,
/// bound once per sink process; each run's writer connects its own end
/// ([`Tickets::writer_end`]) and sends 8-byte little-endian tickets on it.
pub struct Tickets {
    socket: zmq::Socket,
    endpoint: String,
}

impl Tickets {
    const SPEC: SocketSpec<'static> = SocketSpec::new(zmq::PAIR, "journal notify");

    pub fn bind(ctx: &zmq::Context) -> Result<Tickets> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let endpoint = format!("inproc://journal-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let socket = transport::bind(ctx, Self::SPEC, &endpoint)?;
        Ok(Tickets { socket, endpoint })
    }

    /// A new writer's end, to hand to [`JournalWriter::start`].
    pub fn writer_end(&self, ctx: &zmq::Context) -> Result<zmq::Socket> {
        transport::connect(ctx, Self::SPEC, &self.endpoint)
    }

    /// The socket, to poll it.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// The next ticket waiting, without blocking.
    pub fn try_recv(&self, msg: &mut zmq::Message) -> Result<Option<u64>> {
        while crate::transport::try_recv(&self.socket, msg, "journal notify")? {
            if let Ok(ticket) = <[u8; 8]>::try_from(&msg[..]) {
                return Ok(Some(u64::from_le_bytes(ticket)));
            }
        }
        Ok(None)
    }
}

/// Handle on the journal's writer thread.
pub struct JournalWriter {
    requests: Option<mpsc::Sender<(u64, Request)>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
    next_ticket: u64,
    health: Arc<JournalHealth>,
}

impl JournalWriter {
    /// Starts the writer for `run` at `generation`; it reports progress as
    /// 8-byte tickets on `notify` (a [`Tickets::writer_end`])
    /// and hands the last sync's figures through `synced`.
    pub fn start(
        run: &RunDir,
        generation: u64,
        notify: zmq::Socket,
        synced: mpsc::Sender<Synced>,
    ) -> Result<JournalWriter> {
        let path = run.journal_path(generation);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open journal", &path, e))?;
        let durable_len = file
            .metadata()
            .map_err(|e| Error::io("cannot read the length of", &path, e))?
            .len();
        let health = Arc::new(JournalHealth::default());
        let (tx, rx) = mpsc::channel::<(u64, Request)>();
        let files = JournalFiles {
            run: run.clone(),
            generation,
            file,
            durable_len,
            unsure_len: false,
        };
        let thread = thread::Builder::new()
            .name("journal".into())
            .spawn({
                let span = tracing::Span::current();
                let health = health.clone();
                move || span.in_scope(|| writer_loop(files, rx, notify, synced, &health))
            })
            .map_err(|e| Error::Config(format!("cannot start the journal thread: {e}")))?;
        Ok(JournalWriter {
            requests: Some(tx),
            thread: Some(thread),
            next_ticket: 0,
            health,
        })
    }

    /// Whether the journal is being written, shared with the writer thread.
    pub fn health(&self) -> Arc<JournalHealth> {
        self.health.clone()
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

    /// Finishes what was handed over and stops the thread. A write that is
    /// failing is not retried any more: what it held was never acknowledged.
    pub fn close(mut self) -> Result<()> {
        self.health.closing.store(true, Ordering::Relaxed);
        self.requests = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(Error::State("the journal writer panicked".into())),
            None => Ok(()),
        }
    }
}

/// The writer thread's files: the journal being appended to and how much of
/// it is known to be on disk.
struct JournalFiles {
    run: RunDir,
    generation: u64,
    file: File,
    /// Bytes of the journal made durable by a successful fsync. After a
    /// failed write or fsync the file is cut back to this length and the
    /// whole group written again (a failed fsync may have dropped pages that
    /// a later fsync would not report: only a rewrite is safe).
    durable_len: u64,
    /// Set after a failed attempt: the file may be longer than
    /// `durable_len`, so the next append looks (otherwise it need not ask
    /// the file system for the length before every group).
    unsure_len: bool,
}

impl JournalFiles {
    fn path(&self) -> PathBuf {
        self.run.journal_path(self.generation)
    }

    /// Writes `groups` (framed records) and fsyncs once: group commit.
    fn append(&mut self, groups: &[Vec<u8>]) -> Result<()> {
        let path = self.path();
        if self.unsure_len {
            let len = self
                .file
                .metadata()
                .map_err(|e| Error::io("cannot read the length of", &path, e))?
                .len();
            if len != self.durable_len {
                // Left over from a failed attempt: the file is opened for
                // append, so later writes land right after the durable part.
                self.file
                    .set_len(self.durable_len)
                    .map_err(|e| Error::io("cannot cut back", &path, e))?;
            }
            self.unsure_len = false;
        }
        let mut written = 0;
        for bytes in groups {
            self.file
                .write_all(bytes)
                .map_err(|e| Error::io("cannot write journal", &path, e))?;
            written += bytes.len() as u64;
        }
        self.file
            .sync_data()
            .map_err(|e| Error::io("cannot fsync journal", &path, e))?;
        self.durable_len += written;
        Ok(())
    }

    /// Writes the snapshot and starts the next generation. Nothing changes
    /// until the snapshot is renamed into place, so a failure can be retried.
    fn compact(&mut self, snapshot: &[u8]) -> Result<()> {
        let next = self.generation + 1;
        let mut bytes = Vec::with_capacity(snapshot.len() + 16);
        bytes.extend_from_slice(SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&[0; 4]);
        bytes.extend_from_slice(&next.to_le_bytes());
        bytes.extend_from_slice(snapshot);
        let crc = crc32fast::hash(&bytes[8..]);
        bytes[4..8].copy_from_slice(&crc.to_le_bytes());
        let new_path = self.run.journal_path(next);
        let new_file = File::create(&new_path)
            .map_err(|e| Error::io("cannot create journal", &new_path, e))?;
        write_atomic(&self.run.snapshot_path(), &bytes)?;
        let old = self.path();
        self.generation = next;
        self.file = new_file;
        self.durable_len = 0;
        if let Err(e) = fs::remove_file(&old) {
            // Harmless: replay starts from the snapshot's generation.
            tracing::warn!(journal = %old.display(), error = %e, "cannot remove the journal a snapshot replaced");
        }
        Ok(())
    }

    /// Free space where the journal lives, for error messages.
    fn free_space(&self) -> String {
        free_space(self.run.path()).map_or_else(
            || "free space unknown".into(),
            |bytes| format!("{:.1} MiB free", bytes as f64 / (1 << 20) as f64),
        )
    }
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Runs `attempt` until it succeeds, pausing between tries and saying why
/// (at once, then every few seconds); gives up only when the writer closes.
fn until_written(
    files: &mut JournalFiles,
    health: &JournalHealth,
    mut attempt: impl FnMut(&mut JournalFiles) -> Result<()>,
) -> Result<()> {
    let mut pause = Duration::from_millis(50);
    let mut failing_since: Option<Instant> = None;
    let mut last_log: Option<Instant> = None;
    loop {
        match attempt(files) {
            Ok(()) => {
                if let Some(since) = failing_since {
                    tracing::info!(
                        journal = %files.path().display(),
                        failed_for_seconds = since.elapsed().as_secs(),
                        "the journal is writable again; acknowledging resumes"
                    );
                    health.failing.store(false, Ordering::Relaxed);
                }
                return Ok(());
            }
            Err(e) => {
                files.unsure_len = true;
                if health.closing.load(Ordering::Relaxed) {
                    return Err(e);
                }
                let since = *failing_since.get_or_insert_with(Instant::now);
                let reason = format!("{e} ({})", files.free_space());
                if last_log.is_none_or(|t| t.elapsed() >= FAILING_LOG_EVERY) {
                    last_log = Some(Instant::now());
                    tracing::error!(
                        failing_for_seconds = since.elapsed().as_secs(),
                        "{reason}; nothing new is acknowledged until it can be written; retrying"
                    );
                }
                health.set_failing(reason);
                thread::sleep(pause);
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }
}

fn writer_loop(
    mut files: JournalFiles,
    rx: mpsc::Receiver<(u64, Request)>,
    notify: zmq::Socket,
    synced: mpsc::Sender<Synced>,
    health: &JournalHealth,
) -> Result<()> {
    let mut syncs = 0;
    while let Ok(first) = rx.recv() {
        // Group commit: take everything already waiting into this sync.
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let last_ticket = batch.last().map_or(0, |(t, _)| *t);
        let started = Instant::now();
        let mut appends: Vec<Vec<u8>> = Vec::new();
        for (_, request) in batch {
            match request {
                Request::Append(bytes) => appends.push(bytes),
                Request::Compact(snapshot) => {
                    if !appends.is_empty() {
                        until_written(&mut files, health, |f| f.append(&appends))?;
                        appends.clear();
                    }
                    until_written(&mut files, health, |f| f.compact(&snapshot))?;
                }
            }
        }
        if !appends.is_empty() {
            until_written(&mut files, health, |f| f.append(&appends))?;
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

    /// A state folder of its own and a created run in it.
    fn fresh_run(name: &str, id: &str) -> (PathBuf, RunDir) {
        let state = temp_dir(name);
        let run = RunDir::new(&state, id);
        run.create(&RunMeta {
            input: "x".into(),
            started_unix: 1.0,
        })
        .unwrap();
        (state, run)
    }

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
        let (state, run) = fresh_run("torn", "r1");
        let (mut w, notify, _synced, _ctx) = writer(&run, 0);
        let t = w.append(framed(&[b"one", b"two"])).unwrap();
        let mut got = [0u8; 8];
        notify.recv_into(&mut got, 0).unwrap();
        assert_eq!(u64::from_le_bytes(got), t);
        w.close().unwrap();
        // A torn write: half a record at the end.
        let path = run.journal_path(0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let mut seen = Vec::new();
        let replayed = run.replay(|_| Ok(()), |p| seen.push(p.to_vec())).unwrap();
        assert_eq!((replayed.generation, replayed.records), (0, 2));
        assert!(replayed.damage.is_none(), "a torn tail is not damage");
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
        let (state, run) = fresh_run("compact", "r2");
        let (mut w, notify, _synced, _ctx) = writer(&run, 0);
        w.append(framed(&[b"before"])).unwrap();
        w.compact(b"SNAP".to_vec()).unwrap();
        let last = w.append(framed(&[b"after"])).unwrap();
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
        let replayed = run
            .replay(
                |s| {
                    snap = s.to_vec();
                    Ok(())
                },
                |p| seen.push(p.to_vec()),
            )
            .unwrap();
        assert_eq!((replayed.generation, replayed.records), (1, 1));
        assert_eq!(snap, b"SNAP");
        assert_eq!(seen, vec![b"after".to_vec()]);
        assert!(!run.journal_path(0).exists());
        fs::remove_dir_all(state).unwrap();
    }

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for p in payloads {
            push_record(&mut buf, p);
        }
        buf
    }

    #[test]
    fn scan_tells_a_torn_tail_from_damage() {
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 40 + usize::from(i)]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        let clean = framed(&refs);
        let intact = scan_records(&clean);
        assert_eq!(intact.records.len(), 20);
        assert_eq!((intact.damaged_bytes, intact.torn_tail), (0, 0));

        // Every cut of the last record is a torn tail, never damage.
        let last_start = clean.len() - (8 + 40 + 19);
        for cut in last_start + 1..clean.len() {
            let scan = scan_records(&clean[..cut]);
            assert_eq!(scan.records.len(), 19, "cut at {cut}");
            assert_eq!((scan.damaged_bytes, scan.torn_tail), (0, cut - last_start));
        }

        // Any single flipped byte in any record but the last is damage: the
        // records after it are recovered, only the damaged one is lost.
        for at in 0..last_start {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x5a;
            let scan = scan_records(&bytes);
            assert!(scan.damaged_bytes > 0, "flip at {at} not seen as damage");
            assert_eq!(scan.torn_tail, 0, "flip at {at}");
            assert_eq!(scan.records.len(), 19, "flip at {at}");
            let record_start = scan.first_damage as usize;
            assert!(record_start <= at, "flip at {at}");
        }

        // Zeros over the middle of the file (a lost page): damage too.
        let mut bytes = clean.clone();
        bytes[300..700].fill(0);
        let scan = scan_records(&bytes);
        assert!(scan.damaged_bytes >= 400 && scan.torn_tail == 0);
        assert!(scan.records.len() >= 20 - 9);
    }

    #[test]
    fn a_damaged_journal_is_kept_and_its_intact_records_recovered() {
        let (state, run) = fresh_run("damaged", "r3");
        let path = run.journal_path(0);
        let mut bytes = framed(&[b"one", b"two", b"three", b"four"]);
        let damaged_at = 8 + 3 + 8 + 1; // inside "two"
        bytes[damaged_at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let replayed = run.replay(|_| Ok(()), |p| seen.push(p.to_vec())).unwrap();
        assert_eq!(
            seen,
            vec![b"one".to_vec(), b"three".to_vec(), b"four".to_vec()]
        );
        let damage = replayed.damage.expect("damage reported");
        assert_eq!(damage.first_offset, 8 + 3);
        assert_eq!(damage.recovered_records, 3);
        assert_eq!(
            fs::read(&damage.kept_as).unwrap(),
            bytes,
            "evidence kept untouched"
        );
        assert!(damage.to_string().contains("delivered again"), "{damage}");
        // The fresh journal holds exactly the intact records, and replays clean.
        let mut again = Vec::new();
        let replayed = run.replay(|_| Ok(()), |p| again.push(p.to_vec())).unwrap();
        assert!(replayed.damage.is_none());
        assert_eq!(again, seen);
        fs::remove_dir_all(state).unwrap();
    }

    #[test]
    fn a_damaged_snapshot_refuses_with_the_way_out() {
        let (state, run) = fresh_run("badsnap", "r4");
        fs::write(run.snapshot_path(), b"OGSN\0\0\0\0garbage-garbage").unwrap();
        let err = run.replay(|_| Ok(()), |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("is damaged") && err.contains("move the folder"),
            "{err}"
        );
        fs::remove_dir_all(state).unwrap();
    }

    #[test]
    fn a_failing_write_is_retried_until_it_succeeds() {
        let (state, run) = fresh_run("retry", "r5");
        let path = run.journal_path(0);
        let mut files = JournalFiles {
            run: run.clone(),
            generation: 0,
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap(),
            durable_len: 0,
            unsure_len: false,
        };
        files.append(&[framed(&[b"kept"])]).unwrap();
        let health = JournalHealth::default();
        let mut failures = 3;
        let group = [framed(&[b"later"])];
        until_written(&mut files, &health, |f| {
            if failures > 0 {
                failures -= 1;
                // A half-written group, as a full disk leaves it.
                f.file.write_all(&group[0][..5]).unwrap();
                assert!(health.failing().is_none() || failures < 2);
                return Err(Error::io(
                    "cannot write journal",
                    &f.path(),
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
            f.append(&group)
        })
        .unwrap();
        assert!(health.failing().is_none(), "healthy again");
        let mut seen = Vec::new();
        let replayed = run.replay(|_| Ok(()), |p| seen.push(p.to_vec())).unwrap();
        assert!(replayed.damage.is_none());
        assert_eq!(
            seen,
            vec![b"kept".to_vec(), b"later".to_vec()],
            "half writes cut back"
        );
        // Closing stops the retries.
        health.closing.store(true, Ordering::Relaxed);
        let err = until_written(&mut files, &health, |f| {
            Err(Error::io(
                "cannot write journal",
                &f.path(),
                std::io::Error::from_raw_os_error(libc::ENOSPC),
            ))
        });
        assert!(err.is_err());
        fs::remove_dir_all(state).unwrap();
    }
}
