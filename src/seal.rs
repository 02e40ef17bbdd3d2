//! Sealing frames with a pre-shared key: XChaCha20-Poly1305 (RustCrypto's
//! `chacha20poly1305`) over every frame the grid sends, so that only holders
//! of the key can join a run, read its orders or forge its messages.
//!
//! # Key files
//! 64 hexadecimal characters (32 bytes from the OS's random source) and a
//! newline (`\r\n` is accepted too), mode 0600; `ordergrid-keygen FILE` writes
//! one. A role given several key files seals with the first and opens with
//! any: that is how a key is rotated (see [`Sealer`]). Key material is never
//! printed: [`Key`]'s `Debug` is redacted, errors name the file and the
//! problem but never echo its content, and a key is wiped from memory when
//! dropped (best effort: the cipher keeps short-lived copies on the stack).
//!
//! # Sealed frame
//! A plain frame (see [`crate::protocol`]) is a 12-byte header and a body. Its
//! sealed form is
//!
//! | bytes        | field      | meaning                                            |
//! |--------------|------------|----------------------------------------------------|
//! | 0..12        | header     | the plain header, with bit 0x80 of the kind byte set |
//! | 12..16       | key id     | [`KeyId`] of the sealing key                       |
//! | 16..40       | nonce      | 24 random bytes (XChaCha20's extended nonce)       |
//! | 40..len-16   | ciphertext | the body, encrypted                                |
//! | len-16..len  | tag        | Poly1305 tag over bytes 0..16 (associated data) and the ciphertext |
//!
//! so a sealed frame is [`OVERHEAD`] (44) bytes longer than the plain one.
//! Magic, version, kind and run id stay readable (for routing and logs) but
//! are authenticated: changing any bit of a sealed frame makes it fail to open.
//! A keyless role rejects a sealed frame as an unknown kind; a role with a key
//! rejects a plain one ([`OpenError::NotSealed`]). Nonces are random, so no
//! nonce state survives restarts (with 192-bit nonces, collisions are not a
//! concern at any plausible volume). The key id is the first 4 bytes of a
//! Poly1305 tag under the key over a fixed label: it tells which key sealed a
//! frame and reveals nothing about the key.
//!
//! # Threat model
//! Protects against anyone on the network without the key: they cannot read
//! orders or results, inject or alter frames (those are dropped and counted),
//! or join the grid as a worker, sink or ventilator. Not protected: anyone
//! holding the key (every role shares it, so any role can impersonate any
//! other); traffic analysis (header, sizes and timing are visible); replay of
//! captured frames (harmless: outcomes are idempotent per order and run);
//! floods of junk frames (each costs one failed tag check); a compromised key
//! exposes past traffic too (no forward secrecy).

use crate::protocol::HEADER_LEN;
use crate::{Error, Result};
use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, KeyInit, XChaCha20Poly1305, XNonce};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Key id length in bytes.
pub const KEY_ID_LEN: usize = 4;
/// Nonce length in bytes (XChaCha20).
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length in bytes.
pub const TAG_LEN: usize = 16;
/// The bit of the kind byte (byte 3) that marks a sealed frame.
pub const SEALED_BIT: u8 = 0x80;
/// What sealing adds to a frame: key id, nonce and tag.
pub const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;
/// The shortest sealed frame: header, key id, nonce, empty body and tag.
pub const MIN_SEALED_LEN: usize = HEADER_LEN + OVERHEAD;

/// Where the associated data ends (header + key id) and the nonce starts.
const AAD_END: usize = HEADER_LEN + KEY_ID_LEN;
/// Where the ciphertext starts.
const BODY_START: usize = AAD_END + NONCE_LEN;
/// The kind byte's offset in the header.
const KIND_BYTE: usize = 3;
/// The longest key file read before giving up on it.
const MAX_KEY_FILE_BYTES: usize = 4096;

/// Sets bytes to zero in a way the optimiser does not remove.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference to a u8.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// A byte buffer wiped on drop (key file text, hex being written).
struct Wiped(Vec<u8>);

impl Drop for Wiped {
    fn drop(&mut self) {
        // The whole capacity: a read may have left bytes past the length.
        let cap = self.0.capacity();
        self.0.resize(cap, 0);
        wipe(&mut self.0);
    }
}

/// Which key sealed a frame: 4 bytes derived from the key, safe to log.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 32-byte pre-shared key. Its `Debug` never shows the bytes, and it is
/// wiped when dropped.
#[derive(Clone)]
pub struct Key {
    bytes: [u8; KEY_LEN],
    id: KeyId,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(…redacted…)")
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        wipe(&mut self.bytes);
    }
}

impl Key {
    /// A key from its bytes (tests, fuzzing; roles load key files).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let id = key_id(&bytes);
        Key { bytes, id }
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Key> {
        let mut bytes = [0u8; KEY_LEN];
        fill_random(&mut bytes)?;
        let key = Key::from_bytes(bytes);
        wipe(&mut bytes);
        Ok(key)
    }

    /// The key's id, carried in every frame it seals; safe to log.
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Reads a key file: 64 hexadecimal characters, then nothing or a newline
    /// (`\n` or `\r\n`). Errors name the file and what is wrong with it,
    /// never its content.
    pub fn load(path: &Path) -> Result<Key> {
        Key::load_checked(path).map(|(key, _)| key)
    }

    /// Like [`Key::load`], and also returns a warning to log when the file is
    /// readable or writable by its group or by others.
    pub fn load_checked(path: &Path) -> Result<(Key, Option<String>)> {
        let mut file = File::open(path).map_err(|e| Error::io("cannot read key file", path, e))?;
        let warning = loose_permissions(&file, path)?;
        let mut text = Wiped(Vec::with_capacity(128));
        (&mut file)
            .take(MAX_KEY_FILE_BYTES as u64 + 1)
            .read_to_end(&mut text.0)
            .map_err(|e| Error::io("cannot read key file", path, e))?;
        let key = parse_key_text(&text.0)
            .map_err(|what| Error::Config(format!("key file {}: {what}", path.display())))?;
        Ok((key, warning))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.bytes.into())
    }
}

/// The key id: the first bytes of a Poly1305 tag, under the key and a fixed
/// nonce, over a fixed label and an empty message (a PRF of the key).
fn key_id(bytes: &[u8; KEY_LEN]) -> KeyId {
    const LABEL: &[u8] = b"ordergrid key id v1";
    const NONCE: [u8; NONCE_LEN] = *b"ordergrid/key-id/nonce/1";
    let cipher = XChaCha20Poly1305::new(&(*bytes).into());
    let tag = cipher
        .encrypt_inout_detached(&XNonce::from(NONCE), LABEL, InOutBuf::from(&mut [][..]))
        .expect("an empty message is never too long");
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&tag[..KEY_ID_LEN]);
    KeyId(id)
}

/// Parses key file text; the error says what is wrong without the content.
fn parse_key_text(text: &[u8]) -> std::result::Result<Key, String> {
    const WANT: &str = "expected 64 hexadecimal characters and a newline";
    if text.is_empty() {
        return Err(format!("the file is empty; {WANT}"));
    }
    if text.len() > MAX_KEY_FILE_BYTES {
        return Err(format!(
            "the file is over {MAX_KEY_FILE_BYTES} bytes long; {WANT}"
        ));
    }
    let hex = text
        .strip_suffix(b"\r\n")
        .or_else(|| text.strip_suffix(b"\n"))
        .unwrap_or(text);
    if let Some(i) = hex
        .iter()
        .take(2 * KEY_LEN)
        .position(|b| !b.is_ascii_hexdigit())
    {
        return Err(format!("byte {} is not a hexadecimal digit; {WANT}", i + 1));
    }
    if hex.len() < 2 * KEY_LEN {
        return Err(format!(
            "holds only {} hexadecimal characters; {WANT}",
            hex.len()
        ));
    }
    if hex.len() > 2 * KEY_LEN {
        let extra = hex.len() - 2 * KEY_LEN;
        return Err(format!(
            "has {extra} unexpected byte{} after the 64 hexadecimal characters; {WANT}",
            if extra == 1 { "" } else { "s" }
        ));
    }
    let mut bytes = [0u8; KEY_LEN];
    for (byte, pair) in bytes.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_value(pair[0]) << 4) | hex_value(pair[1]);
    }
    if bytes == [0u8; KEY_LEN] {
        return Err("holds the all-zero key, which is no secret; \
                    write a fresh key with ordergrid-keygen"
            .into());
    }
    let key = Key::from_bytes(bytes);
    wipe(&mut bytes);
    Ok(key)
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

#[cfg(unix)]
fn loose_permissions(file: &File, path: &Path) -> Result<Option<String>> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file
        .metadata()
        .map_err(|e| Error::io("cannot inspect key file", path, e))?
        .permissions()
        .mode();
    Ok((mode & 0o077 != 0).then(|| {
        format!(
            "key file {} is accessible by group or others (mode {:04o}); \
             restrict it with: chmod 600 {}",
            path.display(),
            mode & 0o7777,
            path.display()
        )
    }))
}

#[cfg(not(unix))]
fn loose_permissions(_file: &File, _path: &Path) -> Result<Option<String>> {
    Ok(None)
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Io {
        what: "cannot read the operating system's random source".into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Writes a fresh key file at `path`: 64 hexadecimal characters and a
/// newline, mode 0600. Refuses to overwrite anything already there (a
/// dangling symbolic link included).
pub fn generate_key_file(path: &Path) -> Result<()> {
    let key = Key::generate()?;
    let mut text = Wiped(Vec::with_capacity(2 * KEY_LEN + 1));
    for b in key.bytes {
        text.0.push(HEX[usize::from(b >> 4)]);
        text.0.push(HEX[usize::from(b & 0x0f)]);
    }
    text.0.push(b'\n');

    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Config(format!(
                "{} exists; refusing to overwrite it",
                path.display()
            ))
        } else {
            Error::io("cannot create key file", path, e)
        }
    })?;
    let written = (|| {
        // The umask may have taken bits away; make it exactly 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(&text.0)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(Error::io("cannot write key file", path, e));
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// True when the frame's kind byte carries [`SEALED_BIT`].
pub fn is_sealed(frame: &[u8]) -> bool {
    frame.get(KIND_BYTE).is_some_and(|k| k & SEALED_BIT != 0)
}

/// Why a received frame did not open. Such a frame is dropped, counted and
/// never decoded further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenError {
    /// A plain frame where a key is configured.
    NotSealed,
    /// Sealed with a key none of ours has the id of.
    UnknownKey(KeyId),
    /// Authentication failed: forged, altered, truncated or a different key
    /// with the same id.
    Forged,
    /// Too short for a sealed frame (its length is given).
    TooShort(usize),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::NotSealed => write!(f, "frame is not sealed but a key is configured"),
            OpenError::UnknownKey(id) => write!(f, "frame is sealed with an unknown key (id {id})"),
            OpenError::Forged => write!(f, "frame failed authentication (forged or altered)"),
            OpenError::TooShort(n) => write!(
                f,
                "frame of {n} bytes is shorter than the shortest sealed frame ({MIN_SEALED_LEN})"
            ),
        }
    }
}

impl std::error::Error for OpenError {}

/// Seals outgoing frames with the first of its keys and opens incoming frames
/// sealed with any of them.
///
/// To rotate a key without stopping the grid, restart every role three times,
/// finishing each step on every role before starting the next:
/// 1. `--key-file OLD --key-file NEW`: still seals with OLD, opens NEW too;
/// 2. `--key-file NEW --key-file OLD`: seals with NEW, which every role can
///    now open, and still opens OLD from roles not yet at this step;
/// 3. `--key-file NEW` alone.
///
/// (Between runs, stopping every role and starting it with the new key is
/// enough.)
#[derive(Clone)]
pub struct Sealer {
    keys: Vec<Key>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<KeyId> = self.key_ids().collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

impl Sealer {
    /// A sealer that seals with `keys[0]` and opens with any key; the same
    /// key given twice counts once. Fails when `keys` is empty.
    pub fn new(keys: Vec<Key>) -> Result<Sealer> {
        let mut unique: Vec<Key> = Vec::with_capacity(keys.len());
        for key in keys {
            if !unique.iter().any(|k| k.bytes == key.bytes) {
                unique.push(key);
            }
        }
        if unique.is_empty() {
            return Err(Error::Config("no key given to seal frames with".into()));
        }
        Ok(Sealer { keys: unique })
    }

    /// Loads the key files in order (the first seals) and returns the
    /// warnings to log about loose permissions.
    pub fn from_key_files<P: AsRef<Path>>(paths: &[P]) -> Result<(Sealer, Vec<String>)> {
        let mut keys = Vec::with_capacity(paths.len());
        let mut warnings = Vec::new();
        for path in paths {
            let (key, warning) = Key::load_checked(path.as_ref())?;
            keys.push(key);
            warnings.extend(warning);
        }
        Ok((Sealer::new(keys)?, warnings))
    }

    /// The id of the key that seals.
    pub fn sealing_key_id(&self) -> KeyId {
        self.keys[0].id
    }

    /// The ids of every key, the sealing one first.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> + '_ {
        self.keys.iter().map(|k| k.id)
    }

    /// Seals a plain frame (header and body) into a new buffer.
    ///
    /// # Panics
    /// When `frame` is shorter than the header (frames come from
    /// [`crate::protocol::begin_frame`], so that is a bug), or when the OS's
    /// random source fails (see [`Sealer::seal_into`]).
    pub fn seal(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.seal_into(frame, &mut out);
        out
    }

    /// Seals a plain frame into `out` (cleared first; reuse it to avoid an
    /// allocation per frame).
    ///
    /// # Panics
    /// When `frame` is shorter than the header, which is a bug. When the
    /// operating system's random source fails, which on Linux cannot happen
    /// once it is seeded: sending with a repeated or predictable nonce would
    /// be worse than stopping.
    pub fn seal_into(&self, frame: &[u8], out: &mut Vec<u8>) {
        assert!(
            frame.len() >= HEADER_LEN,
            "sealing a frame of {} bytes, shorter than the header",
            frame.len()
        );
        let key = &self.keys[0];
        out.clear();
        out.reserve(frame.len() + OVERHEAD);
        out.extend_from_slice(&frame[..HEADER_LEN]);
        out[KIND_BYTE] |= SEALED_BIT;
        out.extend_from_slice(&key.id.0);
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&frame[HEADER_LEN..]);
        let (aad, rest) = out.split_at_mut(AAD_END);
        let tag = key
            .cipher()
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                aad,
                InOutBuf::from(&mut rest[NONCE_LEN..]),
            )
            .expect("a frame under 256 GiB is never too long for XChaCha20");
        out.extend_from_slice(&tag);
    }

    /// Opens a sealed frame into `scratch` (reused across calls) and returns
    /// the plain frame: the header with [`SEALED_BIT`] cleared, then the body.
    pub fn open<'a>(
        &self,
        frame: &[u8],
        scratch: &'a mut Vec<u8>,
    ) -> std::result::Result<&'a [u8], OpenError> {
        let (key, nonce, tag) = self.check(frame)?;
        scratch.clear();
        scratch.extend_from_slice(&frame[..HEADER_LEN]);
        scratch[KIND_BYTE] &= !SEALED_BIT;
        scratch.extend_from_slice(&frame[BODY_START..frame.len() - TAG_LEN]);
        // Only the opening key's tag check decides; the body is decrypted only
        // once it passed, so a failure leaves ciphertext, never garbage.
        self.decrypt(key, frame, nonce, tag, &mut scratch[HEADER_LEN..])?;
        Ok(scratch)
    }

    /// Opens a sealed frame where it lies (a received `zmq::Message` is
    /// mutable) and returns the plain frame, a sub-slice of `frame`. On error
    /// `frame` is left unchanged.
    pub fn open_in_place<'a>(
        &self,
        frame: &'a mut [u8],
    ) -> std::result::Result<&'a [u8], OpenError> {
        let (key, nonce, tag) = self.check(frame)?;
        let end = frame.len() - TAG_LEN;
        let (head, body) = frame[..end].split_at_mut(BODY_START);
        self.decrypt(key, head, nonce, tag, body)?;
        // The plain header goes just before the body, over the nonce.
        let start = BODY_START - HEADER_LEN;
        frame.copy_within(..HEADER_LEN, start);
        frame[start + KIND_BYTE] &= !SEALED_BIT;
        Ok(&frame[start..end])
    }

    /// Checks length, sealed bit and key id (one of ours); returns the key
    /// id, the nonce and the tag.
    fn check(
        &self,
        frame: &[u8],
    ) -> std::result::Result<(KeyId, [u8; NONCE_LEN], [u8; TAG_LEN]), OpenError> {
        if frame.len() < HEADER_LEN {
            return Err(OpenError::TooShort(frame.len()));
        }
        if !is_sealed(frame) {
            return Err(OpenError::NotSealed);
        }
        if frame.len() < MIN_SEALED_LEN {
            return Err(OpenError::TooShort(frame.len()));
        }
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&frame[HEADER_LEN..AAD_END]);
        let id = KeyId(id);
        if !self.keys.iter().any(|k| k.id == id) {
            return Err(OpenError::UnknownKey(id));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&frame[AAD_END..BODY_START]);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&frame[frame.len() - TAG_LEN..]);
        Ok((id, nonce, tag))
    }

    /// Tries every key with the frame's id (two keys share an id with
    /// probability 2^-32) on `body` in place; `head` holds the associated
    /// data in its first 16 bytes.
    fn decrypt(
        &self,
        id: KeyId,
        head: &[u8],
        nonce: [u8; NONCE_LEN],
        tag: [u8; TAG_LEN],
        body: &mut [u8],
    ) -> std::result::Result<(), OpenError> {
        let aad = &head[..AAD_END];
        let nonce = XNonce::from(nonce);
        let tag = tag.into();
        for key in self.keys.iter().filter(|k| k.id == id) {
            let opened =
                key.cipher()
                    .decrypt_inout_detached(&nonce, aad, InOutBuf::from(&mut *body), &tag);
            if opened.is_ok() {
                return Ok(());
            }
        }
        Err(OpenError::Forged)
    }
}

/// Counts frames that failed to open and says when to log: the first at
/// once, then at most one summary per interval. Call [`RejectLog::flush`] at
/// the end to log what is still pending.
#[derive(Debug)]
pub struct RejectLog {
    every: Duration,
    total: u64,
    pending: u64,
    last_logged: Option<Instant>,
    last_error: Option<OpenError>,
}

/// What to log about rejected frames: how many since the last line, the
/// latest reason, and the total so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectSummary {
    pub dropped: u64,
    pub latest: OpenError,
    pub total: u64,
}

impl fmt::Display for RejectSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dropped {} frame{} that failed to open ({}); {} in all",
            self.dropped,
            if self.dropped == 1 { "" } else { "s" },
            self.latest,
            self.total
        )
    }
}

impl RejectLog {
    /// Logs at most once per `every`.
    pub fn new(every: Duration) -> RejectLog {
        RejectLog {
            every,
            total: 0,
            pending: 0,
            last_logged: None,
            last_error: None,
        }
    }

    /// Counts one rejected frame; returns what to log now, if anything.
    pub fn record(&mut self, error: OpenError) -> Option<RejectSummary> {
        self.record_at(error, Instant::now())
    }

    fn record_at(&mut self, error: OpenError, now: Instant) -> Option<RejectSummary> {
        self.total += 1;
        self.pending += 1;
        self.last_error = Some(error);
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= self.every);
        if due {
            self.last_logged = Some(now);
            self.take()
        } else {
            None
        }
    }

    /// What is counted but not yet logged, if anything.
    pub fn flush(&mut self) -> Option<RejectSummary> {
        self.take()
    }

    /// Every frame rejected so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn take(&mut self) -> Option<RejectSummary> {
        if self.pending == 0 {
            return None;
        }
        let summary = RejectSummary {
            dropped: self.pending,
            latest: self.last_error?,
            total: self.total,
        };
        self.pending = 0;
        Some(summary)
    }
}

/// The `--key-file` flag, for a role to flatten into its arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KeyArgs {
    /// Pre-shared key file (64 hexadecimal characters; write one with
    /// ordergrid-keygen). Every frame sent is sealed with it and frames not
    /// sealed with it are dropped. During a key rotation give two (repeat the
    /// flag, or separate them with commas): the first seals, either opens.
    #[arg(
        long = "key-file",
        env = "ORDERGRID_KEY_FILE",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub key_files: Vec<PathBuf>,
}

impl KeyArgs {
    /// The sealer and the warnings to log, or `None` without a key file.
    pub fn load(&self) -> Result<Option<(Sealer, Vec<String>)>> {
        if self.key_files.is_empty() {
            return Ok(None);
        }
        Sealer::from_key_files(&self.key_files).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, Kind, Progress, RunId};

    fn key(n: u8) -> Key {
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = n.wrapping_mul(31).wrapping_add(i as u8) | 1;
        }
        Key::from_bytes(bytes)
    }

    fn sealer(ns: &[u8]) -> Sealer {
        Sealer::new(ns.iter().map(|&n| key(n)).collect()).unwrap()
    }

    fn plain() -> Vec<u8> {
        protocol::frame(
            Kind::Progress,
            RunId(0x0123_4567_89ab_cdef),
            &Progress {
                horizon: 7,
                total: Some(9),
                in_flight: 0,
                redelivered: 0,
            },
        )
    }

    fn opens(s: &Sealer, sealed: &[u8]) -> std::result::Result<Vec<u8>, OpenError> {
        let mut scratch = Vec::new();
        let copied = s.open(sealed, &mut scratch).map(<[u8]>::to_vec);
        let mut in_place = sealed.to_vec();
        let placed = s.open_in_place(&mut in_place).map(<[u8]>::to_vec);
        assert_eq!(copied, placed, "open and open_in_place agree");
        if placed.is_err() {
            assert_eq!(in_place, sealed, "a failed open leaves the frame as it was");
        }
        copied
    }

    /// A temporary folder removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("ordergrid-seal-{name}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn round_trip() {
        let s = sealer(&[1]);
        for frame in [plain(), plain()[..HEADER_LEN].to_vec(), {
            let mut big = plain();
            big.extend(std::iter::repeat_n(0xa5, 70_000));
            big
        }] {
            let sealed = s.seal(&frame);
            assert_eq!(sealed.len(), frame.len() + OVERHEAD);
            assert_eq!(&sealed[..3], &frame[..3]);
            assert_eq!(sealed[3], frame[3] | SEALED_BIT);
            assert_eq!(&sealed[4..12], &frame[4..12]);
            assert_eq!(&sealed[12..16], &s.sealing_key_id().0);
            assert!(is_sealed(&sealed) && !is_sealed(&frame));
            if frame.len() > HEADER_LEN + 8 {
                assert_ne!(
                    &sealed[BODY_START..BODY_START + 8],
                    &frame[HEADER_LEN..][..8]
                );
            }
            assert_eq!(opens(&s, &sealed).unwrap(), frame);
        }
        // The opened frame decodes like the plain one.
        let sealed = s.seal(&plain());
        let mut scratch = Vec::new();
        let opened = s.open(&sealed, &mut scratch).unwrap();
        let (h, body) = protocol::split_frame(opened).unwrap();
        assert_eq!(h.kind, Kind::Progress);
        assert_eq!(
            protocol::decode::<Progress>(body).unwrap(),
            Progress {
                horizon: 7,
                total: Some(9),
                in_flight: 0,
                redelivered: 0,
            }
        );
        // A keyless role sees an unknown kind.
        assert_eq!(
            protocol::split_frame(&sealed).unwrap_err(),
            protocol::FrameError::Kind(Kind::Progress as u8 | SEALED_BIT)
        );
    }

    #[test]
    fn nonces_differ_between_frames() {
        let s = sealer(&[1]);
        let a = s.seal(&plain());
        let b = s.seal(&plain());
        assert_ne!(&a[AAD_END..BODY_START], &b[AAD_END..BODY_START]);
        assert_ne!(a, b);
    }

    #[test]
    fn seal_into_reuses_its_buffer() {
        let s = sealer(&[1]);
        let mut out = vec![9; 3];
        s.seal_into(&plain(), &mut out);
        assert_eq!(opens(&s, &out).unwrap(), plain());
        let cap = out.capacity();
        s.seal_into(&plain(), &mut out);
        assert_eq!(out.capacity(), cap);
        assert_eq!(opens(&s, &out).unwrap(), plain());
    }

    #[test]
    fn any_flipped_bit_fails() {
        let s = sealer(&[1]);
        let sealed = s.seal(&plain());
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[i] ^= 1 << bit;
                let err = opens(&s, &bad).unwrap_err();
                let want = if i == KIND_BYTE && bit == 7 {
                    OpenError::NotSealed
                } else if (HEADER_LEN..AAD_END).contains(&i) {
                    OpenError::UnknownKey(KeyId(bad[HEADER_LEN..AAD_END].try_into().unwrap()))
                } else {
                    OpenError::Forged
                };
                assert_eq!(err, want, "byte {i} bit {bit}");
            }
        }
        // Truncated or extended frames fail too.
        for len in MIN_SEALED_LEN..sealed.len() {
            assert_eq!(opens(&s, &sealed[..len]), Err(OpenError::Forged), "{len}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(opens(&s, &longer), Err(OpenError::Forged));
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = sealer(&[1]).seal(&plain());
        let other = sealer(&[2]);
        assert_eq!(
            opens(&other, &sealed),
            Err(OpenError::UnknownKey(key(1).id()))
        );
        // Even with a matching id (forged by the sender), a different key fails.
        let mut forged_id = sealer(&[2]).seal(&plain());
        forged_id[HEADER_LEN..AAD_END].copy_from_slice(&key(1).id().0);
        assert_eq!(opens(&sealer(&[1]), &forged_id), Err(OpenError::Forged));
    }

    #[test]
    fn a_plain_frame_is_refused() {
        let s = sealer(&[1]);
        assert_eq!(opens(&s, &plain()), Err(OpenError::NotSealed));
        assert_eq!(opens(&s, &plain()[..HEADER_LEN]), Err(OpenError::NotSealed));
    }

    #[test]
    fn short_frames_are_refused() {
        let s = sealer(&[1]);
        let sealed = s.seal(&plain());
        for len in 0..HEADER_LEN {
            assert_eq!(opens(&s, &sealed[..len]), Err(OpenError::TooShort(len)));
        }
        for len in HEADER_LEN..MIN_SEALED_LEN {
            assert_eq!(opens(&s, &sealed[..len]), Err(OpenError::TooShort(len)));
        }
        let empty_body = s.seal(&plain()[..HEADER_LEN]);
        assert_eq!(empty_body.len(), MIN_SEALED_LEN);
        assert_eq!(opens(&s, &empty_body).unwrap(), &plain()[..HEADER_LEN]);
    }

    #[test]
    fn rotation_opens_old_and_new_and_seals_with_the_first() {
        let old = sealer(&[1]);
        let new = sealer(&[2]);
        let both = sealer(&[2, 1]);
        assert_eq!(both.sealing_key_id(), key(2).id());
        assert_eq!(opens(&both, &old.seal(&plain())).unwrap(), plain());
        assert_eq!(opens(&both, &new.seal(&plain())).unwrap(), plain());
        let sealed = both.seal(&plain());
        assert_eq!(opens(&new, &sealed).unwrap(), plain());
        assert!(opens(&old, &sealed).is_err());
        assert_eq!(
            both.key_ids().collect::<Vec<_>>(),
            vec![key(2).id(), key(1).id()]
        );
        // A repeated key counts once; no key is an error.
        assert_eq!(sealer(&[1, 1]).key_ids().count(), 1);
        assert!(Sealer::new(vec![]).is_err());
    }

    #[test]
    fn keys_sharing_an_id_are_both_tried() {
        // Ids collide with probability 2^-32; make one by hand.
        let a = key(1);
        let mut b = key(2);
        b.id = a.id;
        let s = Sealer::new(vec![b.clone(), a.clone()]).unwrap();
        let sealed_by_a = Sealer::new(vec![a]).unwrap().seal(&plain());
        assert_eq!(opens(&s, &sealed_by_a).unwrap(), plain());
        let sealed_by_b = Sealer::new(vec![b]).unwrap().seal(&plain());
        assert_eq!(opens(&s, &sealed_by_b).unwrap(), plain());
    }

    #[test]
    fn key_ids_are_stable_and_distinct() {
        assert_eq!(key(1).id(), key(1).id());
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(key(1).id().to_string().len(), 8);
        // Pinned: changing the derivation would split a grid of mixed builds.
        let k = Key::from_bytes([0x11; KEY_LEN]);
        assert_eq!(k.id().to_string(), "4f058a69");
        assert_eq!(format!("{:?}", k.id()), format!("KeyId({})", k.id()));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let k = Key::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{k:?} {k:#?} {:?}", Sealer::new(vec![k.clone()]).unwrap());
        assert!(shown.contains("Key(…redacted…)"), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains("171,"), "{shown}");
        assert!(shown.contains(&k.id().to_string()), "{shown}");
    }

    const HEX_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    fn write(dir: &TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.0.join(name);
        std::fs::write(&path, content).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        path
    }

    #[test]
    fn key_files_parse() {
        let dir = TempDir::new("parse");
        let want = Key::from_bytes([
            0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb,
            0xcc, 0xdd, 0xee, 0xff,
        ]);
        for ending in ["\n", "\r\n", ""] {
            let path = write(&dir, "good", format!("{HEX_KEY}{ending}").as_bytes());
            let (k, warning) = Key::load_checked(&path).unwrap();
            assert_eq!(k.bytes, want.bytes, "{ending:?}");
            assert_eq!(warning, None);
        }
    }

    #[test]
    fn bad_key_files_say_what_is_wrong_without_the_content() {
        let dir = TempDir::new("bad");
        let secret = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
        let cases: Vec<(&str, String, &str)> = vec![
            ("empty", String::new(), "is empty"),
            (
                "short",
                format!("{}\n", &secret[..62]),
                "only 62 hexadecimal",
            ),
            (
                "nonhex",
                format!("{}zz{}\n", &secret[..10], &secret[12..]),
                "byte 11 is not a hexadecimal digit",
            ),
            (
                "spaces",
                format!(" {}\n", &secret[..63]),
                "byte 1 is not a hexadecimal digit",
            ),
            (
                "extra",
                format!("{secret}\n{secret}\n"),
                "65 unexpected bytes after",
            ),
            (
                "trailing",
                format!("{secret} \n"),
                "1 unexpected byte after",
            ),
            (
                "twonewlines",
                format!("{secret}\n\n"),
                "1 unexpected byte after",
            ),
            ("zero", format!("{}\n", "0".repeat(64)), "all-zero key"),
            ("huge", "5ec7".repeat(2000), "over 4096 bytes long"),
        ];
        for (name, content, want) in cases {
            let path = write(&dir, name, content.as_bytes());
            let err = Key::load(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            assert!(!err.contains("5ec7e"), "{name} leaks the key: {err}");
        }
        let missing = dir.0.join("missing");
        let err = Key::load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read key file {}: ", missing.display())),
            "{err}"
        );
        let err = Key::load(&dir.0).unwrap_err().to_string();
        assert!(err.contains("cannot read key file"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn loose_permissions_draw_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("perm");
        let path = write(&dir, "key", format!("{HEX_KEY}\n").as_bytes());
        for (mode, warns) in [(0o600, false), (0o400, false), (0o640, true), (0o604, true)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let (_, warning) = Key::load_checked(&path).unwrap();
            assert_eq!(warning.is_some(), warns, "{mode:o}");
            if let Some(w) = warning {
                assert!(w.contains(&format!("{mode:04o}")), "{w}");
                assert!(w.contains("chmod 600"), "{w}");
                assert!(!w.contains("aabb"), "{w}");
            }
        }
        let (sealer, warnings) = Sealer::from_key_files(&[&path, &path]).unwrap();
        assert_eq!(sealer.key_ids().count(), 1);
        assert_eq!(warnings.len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn generate_writes_0600_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("gen");
        let path = dir.0.join("new.key");
        generate_key_file(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let text = std::fs::read(&path).unwrap();
        assert_eq!(text.len(), 65);
        assert_eq!(text[64], b'\n');
        assert!(text[..64]
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
        let (first, warning) = Key::load_checked(&path).unwrap();
        assert_eq!(warning, None);

        let err = generate_key_file(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("{} exists; refusing to overwrite it", path.display())
        );
        assert_eq!(std::fs::read(&path).unwrap(), text, "left as it was");

        let other = dir.0.join("other.key");
        generate_key_file(&other).unwrap();
        assert_ne!(Key::load(&other).unwrap().bytes, first.bytes, "fresh keys");

        // A dangling symbolic link is not followed.
        let link = dir.0.join("link.key");
        std::os::unix::fs::symlink(dir.0.join("nowhere"), &link).unwrap();
        assert!(generate_key_file(&link).is_err());
        assert!(!dir.0.join("nowhere").exists());

        let err = generate_key_file(&dir.0.join("no/such/dir.key"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot create key file "), "{err}");
    }

    #[test]
    fn reject_log_is_rate_limited() {
        let mut log = RejectLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let first = log.record_at(OpenError::Forged, t0).unwrap();
        assert_eq!(
            first,
            RejectSummary {
                dropped: 1,
                latest: OpenError::Forged,
                total: 1
            }
        );
        assert_eq!(
            first.to_string(),
            "dropped 1 frame that failed to open \
             (frame failed authentication (forged or altered)); 1 in all"
        );
        for i in 1..100 {
            assert_eq!(
                log.record_at(OpenError::NotSealed, t0 + Duration::from_millis(i)),
                None
            );
        }
        let later = log
            .record_at(OpenError::TooShort(3), t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            later,
            RejectSummary {
                dropped: 100,
                latest: OpenError::TooShort(3),
                total: 101
            }
        );
        assert_eq!(log.flush(), None);
        assert_eq!(
            log.record_at(OpenError::NotSealed, t0 + Duration::from_secs(11)),
            None
        );
        assert_eq!(log.flush().unwrap().dropped, 1);
        assert_eq!(log.total(), 102);
    }

    #[test]
    fn key_args_take_a_list_or_repeats() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[command(flatten)]
            keys: KeyArgs,
        }
        let a = Args::try_parse_from(["x", "--key-file", "new,old"]).unwrap();
        assert_eq!(
            a.keys.key_files,
            [PathBuf::from("new"), PathBuf::from("old")]
        );
        let a = Args::try_parse_from(["x", "--key-file", "new", "--key-file", "old"]).unwrap();
        assert_eq!(
            a.keys.key_files,
            [PathBuf::from("new"), PathBuf::from("old")]
        );
        let a = Args::try_parse_from(["x"]).unwrap();
        assert!(a.keys.load().unwrap().is_none());
    }

    /// Seal and open cost: `cargo test --release --lib seal::tests::bench -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench() {
        let s = sealer(&[1]);
        for size in [200usize, 16 * 1024] {
            let mut frame = plain()[..HEADER_LEN].to_vec();
            frame.resize(size, 0x5a);
            let mut sealed = Vec::new();
            let mut scratch = Vec::new();
            let rounds = (200 * 1024 * 1024 / size).min(1_000_000);
            let t = Instant::now();
            for _ in 0..rounds {
                s.seal_into(std::hint::black_box(&frame), &mut sealed);
            }
            let seal = t.elapsed() / rounds as u32;
            let t = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(s.open(std::hint::black_box(&sealed), &mut scratch).unwrap());
            }
            let open = t.elapsed() / rounds as u32;
            let t = Instant::now();
            for _ in 0..rounds {
                let mut copy = sealed.clone();
                std::hint::black_box(s.open_in_place(&mut copy).unwrap());
            }
            let in_place = t.elapsed() / rounds as u32;
            let t = Instant::now();
            let mut nonce = [0u8; NONCE_LEN];
            for _ in 0..rounds {
                getrandom::fill(&mut nonce).unwrap();
            }
            let random = t.elapsed() / rounds as u32;
            let mb = |d: Duration| size as f64 / d.as_secs_f64() / 1e6;
            println!(
                "{size:>6} B: seal {seal:?} ({:.0} MB/s), open {open:?} ({:.0} MB/s), \
                 open_in_place incl. clone {in_place:?}, getrandom(24) {random:?}",
                mb(seal),
                mb(open)
            );
        }
    }
}
