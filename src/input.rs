//! Where the ventilator's lines come from: a file (memory-mapped, streamed
//! without copying), standard input (read as it arrives), or the synthetic
//! generator. Each gives lines without their newline, numbered from 1, and
//! never holds more than one over-long line's worth of memory.

use crate::generator::{GeneratedOrder, Generator};
use crate::order::MAX_LINE_BYTES;
use crate::protocol::RunId;
use crate::{Error, Result};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// One raw line and its true length (which exceeds `bytes.len()` when only
/// the start of an over-long line was kept).
#[derive(Debug)]
pub struct RawLine<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    pub full_len: usize,
}

/// What the ventilator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputSpec {
    File(PathBuf),
    Stdin,
    Generate { count: u64, seed: u64, poison: u64 },
}

impl InputSpec {
    /// How the report names this input.
    pub fn describe(&self) -> String {
        match self {
            InputSpec::File(p) => format!("file:{}", p.display()),
            InputSpec::Stdin => "stdin".into(),
            InputSpec::Generate {
                count,
                seed,
                poison,
            } => {
                format!("generate:{count}:{seed}:{poison}")
            }
        }
    }
}

/// An open input.
pub enum LineSource {
    Mapped {
        map: Option<memmap2::Mmap>,
        at: usize,
        /// Pages before this offset were handed back to the kernel.
        released: usize,
        number: u64,
    },
    Stream {
        reader: Box<dyn Read + Send>,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        eof: bool,
        number: u64,
        skipping: Option<usize>,
    },
    Generated {
        generator: Generator,
        line: Vec<u8>,
        record: GeneratedOrder,
        number: u64,
    },
}

/// What a source gives: a raw line, or (from the generator) an order that
/// needs no parsing.
#[derive(Debug)]
pub enum SourceItem<'a> {
    Raw(RawLine<'a>),
    Generated {
        number: u64,
        order: &'a GeneratedOrder,
    },
}

impl LineSource {
    /// Opens the input and derives the run id: the digest of the file's
    /// content, of the generator's parameters, or `None` for a stream
    /// (whose content is not known ahead).
    pub fn open(spec: &InputSpec) -> Result<(LineSource, Option<RunId>)> {
        match spec {
            InputSpec::File(path) => open_file(path),
            InputSpec::Stdin => Ok((LineSource::stream(Box::new(io::stdin())), None)),
            InputSpec::Generate {
                count,
                seed,
                poison,
            } => {
                let id = xxhash_rust::xxh3::xxh3_64(spec.describe().as_bytes());
                let source = LineSource::Generated {
                    generator: Generator::new(*count, *seed).with_poison(*poison),
                    line: Vec::new(),
                    record: GeneratedOrder::default(),
                    number: 0,
                };
                Ok((source, Some(RunId(id))))
            }
        }
    }

    /// A source reading `reader` as it arrives.
    pub fn stream(reader: Box<dyn Read + Send>) -> LineSource {
        LineSource::Stream {
            reader,
            buf: vec![0; 4 * MAX_LINE_BYTES],
            start: 0,
            end: 0,
            eof: false,
            number: 0,
            skipping: None,
        }
    }

    /// True when the next [`next_line`](Self::next_line) may block (a stream
    /// with no complete line buffered): the caller flushes what it holds first.
    pub fn may_block(&self) -> bool {
        match self {
            LineSource::Stream {
                buf,
                start,
                end,
                eof,
                ..
            } => !*eof && !buf[*start..*end].contains(&b'\n'),
            _ => false,
        }
    }

    /// The next line or generated order, or `None` at the end of the input.
    pub fn next_item(&mut self) -> Result<Option<SourceItem<'_>>> {
        match self {
            LineSource::Generated {
                generator,
                line,
                record,
                number,
            } => {
                line.clear();
                let Some(is_order) = generator.next_record(line, record) else {
                    return Ok(None);
                };
                *number += 1;
                Ok(Some(if is_order {
                    SourceItem::Generated {
                        number: *number,
                        order: record,
                    }
                } else {
                    SourceItem::Raw(RawLine {
                        number: *number,
                        bytes: line,
                        full_len: line.len(),
                    })
                }))
            }
            other => Ok(other.next_line()?.map(SourceItem::Raw)),
        }
    }

    /// The next line, or `None` at the end of the input.
    pub fn next_line(&mut self) -> Result<Option<RawLine<'_>>> {
        match self {
            LineSource::Mapped {
                map,
                at,
                released,
                number,
            } => {
                let Some(map) = map else { return Ok(None) };
                if *at - *released >= RELEASE_CHUNK {
                    let to = *at / RELEASE_CHUNK * RELEASE_CHUNK;
                    release(map, *released, to);
                    *released = to;
                }
                let data: &[u8] = map;
                if *at >= data.len() {
                    return Ok(None);
                }
                let rest = &data[*at..];
                let len = memchr(rest).unwrap_or(rest.len());
                *at += len + 1;
                *number += 1;
                Ok(Some(RawLine {
                    number: *number,
                    bytes: &rest[..len],
                    full_len: len,
                }))
            }
            LineSource::Generated {
                generator,
                line,
                number,
                ..
            } => {
                line.clear();
                if !generator.next_line(line) {
                    return Ok(None);
                }
                *number += 1;
                Ok(Some(RawLine {
                    number: *number,
                    bytes: line,
                    full_len: line.len(),
                }))
            }
            LineSource::Stream {
                reader,
                buf,
                start,
                end,
                eof,
                number,
                skipping,
            } => {
                loop {
                    if let Some(pos) = memchr(&buf[*start..*end]) {
                        let line_start = *start;
                        *start += pos + 1;
                        if let Some(kept) = skipping.take() {
                            // The end of an over-long line: report it now.
                            *number += 1;
                            let full_len = kept + pos;
                            return Ok(Some(RawLine {
                                number: *number,
                                bytes: &buf[line_start..line_start],
                                full_len,
                            }));
                        }
                        *number += 1;
                        return Ok(Some(RawLine {
                            number: *number,
                            bytes: &buf[line_start..line_start + pos],
                            full_len: pos,
                        }));
                    }
                    if *eof {
                        if *start == *end && skipping.is_none() {
                            return Ok(None);
                        }
                        // The last line has no newline.
                        let line_start = *start;
                        let len = *end - *start;
                        *start = *end;
                        *number += 1;
                        let full_len = skipping.take().unwrap_or(0) + len;
                        let bytes = if full_len > len {
                            &buf[line_start..line_start]
                        } else {
                            &buf[line_start..line_start + len]
                        };
                        return Ok(Some(RawLine {
                            number: *number,
                            bytes,
                            full_len,
                        }));
                    }
                    // Keep at most one line's worth: past the limit, only count.
                    let pending = *end - *start;
                    if pending > MAX_LINE_BYTES + 1 {
                        *skipping = Some(skipping.unwrap_or(0) + pending);
                        *start = 0;
                        *end = 0;
                    } else if *start > 0 {
                        buf.copy_within(*start..*end, 0);
                        *end -= *start;
                        *start = 0;
                    }
                    match reader.read(&mut buf[*end..]) {
                        Ok(0) => *eof = true,
                        Ok(n) => *end += n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            return Err(Error::Io {
                                what: "cannot read standard input".into(),
                                source: e,
                            })
                        }
                    }
                }
            }
        }
    }
}

/// How much of a mapped input is read before its pages are handed back.
const RELEASE_CHUNK: usize = 8 << 20;

/// Hands the pages of `map[from..to]` back to the kernel, so a file larger
/// than memory streams through a bounded resident set (`from` is a multiple
/// of [`RELEASE_CHUNK`], so page-aligned).
fn release(map: &memmap2::Mmap, from: usize, to: usize) {
    if to <= from {
        return;
    }
    // SAFETY: the map is a read-only shared mapping of a file: dropped pages
    // are read back from the file if touched again, with the same bytes. No
    // line borrowed from this range is alive: lines are handed out one at a
    // time through `&mut self`, and released ranges lie before the current one.
    let _ =
        unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from) };
}

/// The first newline (SIMD search: line splitting is on the hot path).
fn memchr(data: &[u8]) -> Option<usize> {
    memchr::memchr(b'\n', data)
}

fn open_file(path: &Path) -> Result<(LineSource, Option<RunId>)> {
    let file = File::open(path).map_err(|e| Error::io("cannot open input", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?
        .len();
    if !file
        .metadata()
        .map_err(|e| Error::io("cannot read", path, e))?
        .is_file()
    {
        return Err(Error::Config(format!(
            "input {} is not a regular file (use --input - for a stream)",
            path.display()
        )));
    }
    let map = if len == 0 {
        None
    } else {
        // SAFETY: the map is read-only; a concurrent writer truncating the
        // input is outside the contract (the run id is the content's digest).
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io("cannot map", path, e))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        Some(map)
    };
    // The digest streams over the file, handing pages back as it goes.
    let digest = map.as_ref().map_or(0, |map| {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for (i, chunk) in map.chunks(RELEASE_CHUNK).enumerate() {
            hasher.update(chunk);
            release(map, i * RELEASE_CHUNK, i * RELEASE_CHUNK + chunk.len());
        }
        hasher.digest()
    });
    Ok((
        LineSource::Mapped {
            map,
            at: 0,
            released: 0,
            number: 0,
        },
        Some(RunId(digest)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(src: &mut LineSource) -> Vec<(u64, Vec<u8>, usize)> {
        let mut out = Vec::new();
        while let Some(l) = src.next_line().unwrap() {
            out.push((l.number, l.bytes.to_vec(), l.full_len));
        }
        out
    }

    /// A reader that hands out at most `chunk` bytes per read.
    struct Trickle(Vec<u8>, usize, usize);
    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.2.min(buf.len()).min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn stream_keeps_lines_and_measures_over_long_ones() {
        let long = vec![b'x'; MAX_LINE_BYTES * 5 + 3];
        let mut data = b"a\r\nbb\n\n".to_vec();
        data.extend_from_slice(&long);
        data.extend_from_slice(b"\nlast");
        for chunk in [1, 7, 4096, 1 << 20] {
            let mut src = LineSource::stream(Box::new(Trickle(data.clone(), 0, chunk)));
            let got = lines(&mut src);
            assert_eq!(got.len(), 5, "chunk {chunk}");
            assert_eq!(got[0], (1, b"a\r".to_vec(), 2));
            assert_eq!(got[1], (2, b"bb".to_vec(), 2));
            assert_eq!(got[2], (3, b"".to_vec(), 0));
            assert_eq!(got[3].2, long.len(), "chunk {chunk}");
            assert_eq!(got[4], (5, b"last".to_vec(), 4));
        }
    }

    #[test]
    fn a_file_larger_than_the_release_chunk_reads_whole() {
        let dir = std::env::temp_dir().join(format!("ordergrid-input-big-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("big.jsonl");
        let mut data = Vec::new();
        let mut n = 0u64;
        while data.len() < 2 * RELEASE_CHUNK + 12_345 {
            data.extend_from_slice(
                format!("line {n} {}\n", "x".repeat((n % 300) as usize)).as_bytes(),
            );
            n += 1;
        }
        std::fs::write(&path, &data).unwrap();
        let (mut file, id) = LineSource::open(&InputSpec::File(path.clone())).unwrap();
        assert_eq!(
            id,
            Some(RunId(xxhash_rust::xxh3::xxh3_64(&data))),
            "streamed digest = one-shot digest"
        );
        let mut stream = LineSource::stream(Box::new(Trickle(data, 0, 1 << 16)));
        let (a, b) = (lines(&mut file), lines(&mut stream));
        assert_eq!(a.len() as u64, n);
        assert_eq!(a, b);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_and_stream_agree_and_digest_content() {
        let dir = std::env::temp_dir().join(format!("ordergrid-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("in.jsonl");
        std::fs::write(&path, b"one\ntwo\r\n\nthree").unwrap();
        let (mut file, id) = LineSource::open(&InputSpec::File(path.clone())).unwrap();
        let mut stream = LineSource::stream(Box::new(Trickle(std::fs::read(&path).unwrap(), 0, 3)));
        assert_eq!(lines(&mut file), lines(&mut stream));
        std::fs::write(&path, b"one\ntwo\r\n\nthreE").unwrap();
        let (_, other) = LineSource::open(&InputSpec::File(path.clone())).unwrap();
        assert_ne!(id, other);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
