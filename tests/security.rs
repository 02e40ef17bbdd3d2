//! Security tests: a grid with a pre-shared key on real processes; a worker
//! with the wrong key; frames without the key (garbage, plain, forged,
//! tampered) and replayed ones sent at every bound socket; and the refusal to
//! go off loopback unsealed.

mod util;

use ordergrid::seal::{Key, Sealer};
use std::process::Command;
use util::{assert_tallies, oracle, Grid, BAD_FRAMES, TALLIED};

fn keygen(g: &Grid, name: &str) -> String {
    let path = g.path(name);
    let out = Command::new(util::bin("keygen"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path.to_str().unwrap().to_owned()
}

#[test]
fn keygen_writes_a_private_key_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt;
    let g = Grid::new("keygen");
    let key = keygen(&g, "grid.key");
    let text = std::fs::read_to_string(&key).unwrap();
    assert_eq!(text.len(), 65);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = Command::new(util::bin("keygen"))
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text, "unchanged");
    assert!(!String::from_utf8_lossy(&again.stderr).contains(text.trim_end()));
}

#[test]
fn a_keyed_grid_is_exact_and_a_wrong_key_gets_nothing() {
    let mut g = Grid::new("keyed");
    let key = keygen(&g, "grid.key");
    let other = keygen(&g, "other.key");
    let input = g.generate(20_000, 41, 0);
    let mut sink = g.sink(&["--key-file", &key]);
    // A worker with the wrong key: the ventilator cannot open its credit
    // reports, so it is sent nothing, and could open nothing anyway.
    let mut stranger = g.worker(&["--key-file", &other]);
    let mut vent = g.ventilator(&["--key-file", &key, "--input", input.to_str().unwrap()]);
    vent.wait_for_metric(BAD_FRAMES, 1);
    let _good = g.worker(&["--key-file", &key]);
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    assert_eq!(
        report["run"]["workers_seen"].as_u64(),
        Some(1),
        "only the keyed worker's results count"
    );
    // The stranger cannot even read "run over": it is still waiting, and
    // processed nothing.
    assert!(stranger.is_running());
    assert_eq!(
        stranger.metric("ordergrid_orders_processed_total"),
        Some(0.0)
    );
    stranger.signal("-TERM");
    stranger.success();
    // The key never shows in any log or the report.
    let secret = std::fs::read_to_string(&key).unwrap();
    for proc_log in [&sink.stderr, &vent.stderr, &stranger.stderr] {
        assert!(!std::fs::read_to_string(proc_log)
            .unwrap()
            .contains(secret.trim_end()));
    }
    assert!(!report.to_string().contains(secret.trim_end()));
}

#[test]
fn frames_without_the_key_or_replayed_change_nothing() {
    let mut g = Grid::new("forged");
    let key = keygen(&g, "grid.key");
    let input = g.generate(20_000, 42, 0);
    let mut sink = g.sink(&["--key-file", &key]);
    let slow = ["--gateway-latency-ms", "2", "--concurrency", "16"];
    let _w = g.worker(&[&["--key-file", &key[..]][..], &slow].concat());
    let mut vent = g.ventilator(&["--key-file", &key, "--input", input.to_str().unwrap()]);
    // No metric carries the run id: the sink's log line names it.
    let run = ordergrid::protocol::RunId(sink.run_started());
    sink.wait_for_metric(TALLIED, 2_000);

    let ours = Sealer::from_key_files(&[&key]).unwrap().0;
    let theirs = Sealer::new(vec![Key::generate().unwrap()]).unwrap();
    // A "paid" result for order 0 that would move money if it were believed.
    let forged_result = {
        let mut records = Vec::new();
        ordergrid::protocol::write_result_record(
            &mut records,
            0,
            0,
            "USD",
            i64::MAX,
            [("FORGED", 1000)].into_iter(),
        );
        let mut f = Vec::new();
        ordergrid::protocol::results_frame(&mut f, run, 99, 1, &records);
        f
    };
    let mut tampered = ours.seal(&forged_result);
    let n = tampered.len();
    tampered[n / 2] ^= 1;
    let without_key: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        forged_result.clone(),       // plain: no key
        theirs.seal(&forged_result), // another key
        tampered,                    // altered in flight
    ];
    let ctx = zmq::Context::new();
    let connect = |kind, ep: &str| {
        let s = ctx.socket(kind).unwrap();
        s.set_linger(1000).unwrap();
        s.connect(ep).unwrap();
        s
    };
    let results = connect(zmq::PUSH, &g.results);
    let acks = connect(zmq::DEALER, &g.acks);
    for frame in &without_key {
        results.send(&frame[..], 0).unwrap();
        acks.send(&frame[..], 0).unwrap();
    }
    // Replays: a genuinely sealed result for order 0 (already tallied by
    // now, the sink tallied >= 2000), sent three times.
    let replay = ours.seal(&forged_result);
    for _ in 0..3 {
        results.send(&replay[..], 0).unwrap();
    }
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    assert!(report["stock"].get("FORGED").is_none());
    let stats = &report["stats"];
    assert!(
        stats["unauthenticated_frames"].as_u64().unwrap() >= 2 * 3,
        "{stats}"
    );
    assert!(
        stats["duplicate_results"].as_u64().unwrap() >= 3
            || stats["invalid_results"].as_u64().unwrap() >= 3,
        "{stats}"
    );
}

#[test]
fn off_loopback_without_a_key_is_refused() {
    let g = Grid::new("insecure");
    let state = g.path("state");
    for (bin, args) in [
        (
            "sink",
            vec![
                "--results",
                "tcp://0.0.0.0:*",
                "--state",
                state.to_str().unwrap(),
            ],
        ),
        ("worker", vec!["--jobs", "tcp://10.1.2.3:5557"]),
        (
            "ventilator",
            vec!["--jobs", "tcp://0.0.0.0:*", "--generate", "5"],
        ),
    ] {
        let out = Command::new(util::bin(bin))
            .args(&args)
            .current_dir(&g.dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bin}: {err}");
        assert!(
            err.contains("refusing to use tcp://") && err.contains("without a key"),
            "{bin}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
}
