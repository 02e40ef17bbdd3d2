//! Writes seed inputs into `corpus/<target>/` (git ignores it): valid lines
//! and valid frames, plain and sealed with the fuzz targets' test key, so the
//! fuzzers start from well-formed inputs. Run from `fuzz/`:
//! `cargo run --example seeds`.

use ordergrid::generator::Generator;
use ordergrid::order::{self, Line};
use ordergrid::protocol::{self, Acks, Empty, Hello, Job, Kind, Progress, RunId, Welcome};
use ordergrid::seal::{Key, Sealer};
use std::fs;
use std::path::Path;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).expect("write a seed");
}

fn main() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines_dir = here.join("corpus/order_line");
    let frames_dir = here.join("corpus/frame_decoder");
    fs::create_dir_all(&lines_dir).unwrap();
    fs::create_dir_all(&frames_dir).unwrap();

    // Lines: the test data's every case, and a generated stream (which has
    // malformed lines, rejections and duplicates among ordinary orders).
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let every_case = fs::read(here.join("../tests/data/every_case.jsonl")).unwrap_or_default();
    lines.extend(every_case.split(|&b| b == b'\n').map(<[u8]>::to_vec));
    let mut generator = Generator::new(300, 7).with_poison(3);
    let mut line = Vec::new();
    while {
        line.clear();
        generator.next_line(&mut line)
    } {
        lines.push(line.clone());
    }
    lines.retain(|l| !l.is_empty());
    for (i, l) in lines.iter().enumerate() {
        write(&lines_dir, &format!("line-{i:04}"), l);
    }

    // Frames: every kind, plain and sealed.
    let sealer = Sealer::new(vec![Key::from_bytes([0x42; 32])]).unwrap();
    let run = RunId(0x5eed);
    let orders: Vec<_> = lines
        .iter()
        .filter_map(|l| match order::parse_line(l) {
            Line::Order(o) => Some(o),
            _ => None,
        })
        .collect();
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    for (n, chunk) in [1usize, 3, 20].into_iter().zip(orders.chunks(20)) {
        let jobs: Vec<Job> = chunk
            .iter()
            .take(n)
            .enumerate()
            .map(|(i, o)| Job {
                seq: i as u64 * 1000,
                order: o.clone(),
            })
            .collect();
        let batch = protocol::JobBatch {
            isolate: n == 1,
            jobs,
        };
        frames.push((
            format!("jobs-{n}"),
            protocol::frame(Kind::Jobs, run, &batch),
        ));
    }
    let mut records = Vec::new();
    protocol::write_result_record(
        &mut records,
        5,
        0,
        "USD",
        1999,
        [("SKU-1", 2i64)].into_iter(),
    );
    protocol::write_result_record(&mut records, 6, 3, "", 0, std::iter::empty());
    let mut results = Vec::new();
    protocol::results_frame(&mut results, run, 3, 2, &records);
    frames.push(("results".into(), results));
    let hello = Hello {
        input: "generate:300:7".into(),
        expected: Some(300),
        expected_is_estimate: false,
    };
    frames.push(("hello".into(), protocol::frame(Kind::Hello, run, &hello)));
    let welcome = Welcome {
        first_word: 0,
        words: vec![0b1011, u64::MAX],
        last: true,
    };
    frames.push((
        "welcome".into(),
        protocol::frame(Kind::Welcome, run, &welcome),
    ));
    for total in [None, Some(300)] {
        let progress = Progress {
            horizon: 120,
            total,
        };
        frames.push((
            format!("progress-{}", total.is_some()),
            protocol::frame(Kind::Progress, run, &progress),
        ));
    }
    let mut acks = Acks::default();
    for seq in [1, 2, 3, 9, 400] {
        acks.push(seq);
    }
    frames.push(("acks".into(), protocol::frame(Kind::Acks, run, &acks)));
    for kind in [Kind::Complete, Kind::Busy, Kind::RunOver] {
        frames.push((
            format!("{kind:?}").to_lowercase(),
            protocol::frame(kind, run, &Empty),
        ));
    }
    for (name, frame) in &frames {
        write(&frames_dir, &format!("plain-{name}"), frame);
        write(&frames_dir, &format!("sealed-{name}"), &sealer.seal(frame));
        write(
            &frames_dir,
            &format!("body-{name}"),
            &frame[protocol::HEADER_LEN..],
        );
    }
    println!(
        "wrote {} lines to {} and {} frames to {}",
        lines.len(),
        lines_dir.display(),
        frames.len() * 3,
        frames_dir.display()
    );
}
