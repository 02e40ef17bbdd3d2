//! Every byte string a socket can receive: the envelope, each message's
//! decoder, and the opener of sealed frames. None may panic, and whatever
//! decodes must encode back to the same message. The hand-written hot-path
//! decoders (jobs, results) accept nothing serde would read otherwise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ordergrid::protocol::{
    self, Acks, Hello, JobBatch, Progress, ResultBatch, ResultRecord, ResultsView, Welcome,
};
use ordergrid::seal::{Key, Sealer};
use std::sync::OnceLock;

/// A fixed test key (never a real one).
fn sealer() -> &'static Sealer {
    static SEALER: OnceLock<Sealer> = OnceLock::new();
    SEALER.get_or_init(|| Sealer::new(vec![Key::from_bytes([0x42; 32])]).unwrap())
}

/// Decodes `$body` as `$t`; when that works, encodes it and checks that the
/// encoding decodes to the same message.
macro_rules! round_trip {
    ($t:ty, $body:expr) => {{
        let value: Option<$t> = protocol::decode($body).ok();
        if let Some(value) = &value {
            let mut again = Vec::new();
            protocol::encode_into(&mut again, value);
            let back: $t = protocol::decode(&again).expect("a re-encoded message decodes");
            assert_eq!(&back, value, "re-encoding changes the message");
        }
        value
    }};
}

fn decode_body(body: &[u8]) {
    if let Some(batch) = round_trip!(JobBatch, body) {
        // Workers price what the frame carries, which skipped parse_line.
        for job in &batch.jobs {
            let _ = ordergrid::rules::price(&job.order);
        }
    }
    let results = round_trip!(ResultBatch, body);
    if let Ok(fast) = protocol::decode_jobs(body, &mut protocol::JobVecs::default()) {
        let batch: JobBatch = protocol::decode(body).expect("serde reads what decode_jobs reads");
        assert_eq!(fast, batch, "decode_jobs and serde disagree");
    }
    if let Ok(view) = ResultsView::decode(body) {
        let batch = results.expect("serde reads what ResultsView reads");
        assert_eq!(view.worker_id, batch.worker_id);
        let want: Vec<_> = batch.results.iter().map(ResultRecord::as_ref).collect();
        assert_eq!(view.iter().collect::<Vec<_>>(), want, "ResultsView and serde disagree");
    }
    round_trip!(Hello, body);
    round_trip!(Welcome, body);
    round_trip!(Progress, body);
    if let Some(acks) = round_trip!(Acks, body) {
        // Bounded: ranges may claim up to 2^64 seqs each.
        let _ = acks.seqs().take(1024).count();
    }
}

fn decode_frame(frame: &[u8]) {
    if let Ok((_header, body)) = protocol::split_frame(frame) {
        decode_body(body);
    }
}

fuzz_target!(|data: &[u8]| {
    // As a whole frame, and as a bare body (so the fuzzer need not find the
    // header before it reaches the decoders).
    decode_frame(data);
    decode_body(data);

    // As a frame arriving where a key is configured.
    let mut scratch = Vec::new();
    let opened = sealer().open(data, &mut scratch).map(<[u8]>::to_vec);
    let mut copy = data.to_vec();
    let in_place = sealer().open_in_place(&mut copy).map(<[u8]>::to_vec);
    assert_eq!(opened, in_place, "open and open_in_place disagree");
    if in_place.is_err() {
        assert_eq!(copy, data, "a failed open changed the frame");
    }
    if let Ok(plain) = opened {
        decode_frame(&plain);
    }

    // Anything at least a header long seals and opens back to itself.
    if data.len() >= protocol::HEADER_LEN {
        let sealed = sealer().seal(data);
        let mut scratch = Vec::new();
        let mut want = data.to_vec();
        want[3] &= !ordergrid::seal::SEALED_BIT;
        assert_eq!(sealer().open(&sealed, &mut scratch), Ok(&want[..]));
    }
});
