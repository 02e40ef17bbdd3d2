//! Fault tests: real processes, real kill signals, faults driven by the
//! progress the sink reports (not by sleeping), and the exact report
//! asserted against the oracle every time.

mod util;

use std::path::Path;
use std::time::Duration;
use util::{assert_tallies, oracle, read_json, run_id, Grid, Proc, Running, BAD_FRAMES, TALLIED};

/// Workers slow enough (a simulated gateway latency) that a run lasts a few
/// seconds, so a fault lands in the middle of it.
const SLOW: [&str; 4] = ["--gateway-latency-ms", "2", "--concurrency", "16"];

/// A run of `input` on two slow workers, the ventilator with `vent_args` too.
fn slow_run(g: &mut Grid, input: &Path, vent_args: &[&str]) -> Running {
    let args = [&["--input", input.to_str().unwrap()][..], vent_args].concat();
    g.launch(&args, 2, &SLOW)
}

#[test]
fn a_worker_killed_mid_run_loses_nothing() {
    let mut g = Grid::new("kill-worker");
    let input = g.generate(20_000, 21, 0);
    let mut run = slow_run(&mut g, &input, &["--min-timeout-ms", "200"]);
    run.sink.wait_for_metric(TALLIED, 4_000);
    run.workers[0].kill9();
    let _late = g.worker(&SLOW);
    assert_tallies(&run.finish(&g), &oracle(&input));
    // The ventilator's last words (it has exited, so no metrics to ask).
    let line = run.vent.wait_for_log(&["run complete"]);
    assert!(
        !line.contains("redelivered=0"),
        "the killed worker's orders were redelivered: {line}"
    );
}

#[test]
fn a_sink_killed_mid_run_resumes_from_its_journal() {
    let mut g = Grid::new("kill-sink");
    let input = g.generate(60_000, 22, 0);
    // A small compaction threshold: the restart replays a snapshot and a journal.
    let sink_args = ["--compact-mib", "1"];
    let mut sink = g.sink(&sink_args);
    let _w: Vec<Proc> = (0..2).map(|_| g.worker(&SLOW)).collect();
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    // No metric counts compactions: the sink's log line says it happened.
    sink.wait_for_log(&["journal compacted"]);
    sink.wait_for_metric(TALLIED, 30_000);
    sink.kill9();
    let mut sink = g.sink(&sink_args);
    // What the restarted sink did is in its log only.
    sink.wait_for_log(&["replayed the journal"]);
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    assert_eq!(report["run"]["sink_restarts"].as_u64(), Some(1));
}

#[test]
fn a_ventilator_killed_mid_run_resumes_without_tallying_twice() {
    let mut g = Grid::new("kill-vent");
    let input = g.generate(20_000, 23, 0);
    let mut run = slow_run(&mut g, &input, &[]);
    run.sink.wait_for_metric(TALLIED, 6_000);
    run.vent.kill9();
    run.vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    // How much the sink already had is only said in this line.
    let accepted = run.vent.wait_for_log(&["the sink accepted the run"]);
    assert!(!accepted.contains("already_tallied=0"), "{accepted}");
    assert_tallies(&run.finish(&g), &oracle(&input));
}

#[test]
fn poison_orders_are_given_up_as_failed_while_workers_are_restarted() {
    let mut g = Grid::new("poison");
    let input = g.generate(6_000, 24, 2);
    let vent_args = [
        "--input",
        input.to_str().unwrap(),
        "--min-timeout-ms",
        "200",
    ];
    let mut run = g.launch(&vent_args, 2, &[]);
    // Supervise: restart workers that die, as a launch script would.
    let mut restarts = 0;
    while run.sink.is_running() {
        for w in run.workers.iter_mut() {
            if !w.is_running() && run.sink.is_running() {
                *w = g.worker(&[]);
                restarts += 1;
                assert!(restarts < 50, "workers keep dying");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = run.finish(&g);
    assert_tallies(&report, &oracle(&input));
    assert_eq!(report["orders"]["failed"].as_u64(), Some(2));
    assert!(
        restarts >= 2 * 3 - 1,
        "each poison order crashed a worker on each delivery"
    );
    let dead = std::fs::read_to_string(g.path("ordergrid-dead-letter.jsonl")).unwrap();
    assert_eq!(
        dead.lines().filter(|l| l.contains("poison")).count(),
        2,
        "{dead}"
    );
}

#[test]
fn a_worker_stopped_with_sigterm_finishes_what_it_holds_and_exits_0() {
    let mut g = Grid::new("sigterm-worker");
    let input = g.generate(15_000, 25, 0);
    let mut run = slow_run(&mut g, &input, &[]);
    run.sink.wait_for_metric(TALLIED, 3_000);
    let stopping = &mut run.workers[0];
    stopping.signal("-TERM");
    stopping.success();
    // Its last words, as an operator reads them.
    stopping.wait_for_log(&["worker stopped"]);
    assert_tallies(&run.finish(&g), &oracle(&input));
}

#[test]
fn another_input_is_another_run_and_a_completed_run_is_reprinted() {
    let mut g = Grid::new("runs");
    let a = g.generate(4_000, 26, 0);
    let b = g.generate(3_000, 27, 0);
    let (input_a, input_b) = (
        ["--input", a.to_str().unwrap()],
        ["--input", b.to_str().unwrap()],
    );
    let (first, _) = g.run_to_completion(&input_a, 1, &[]);
    assert_tallies(&first, &oracle(&a));
    let (second, _) = g.run_to_completion(&input_b, 1, &[]);
    assert_tallies(&second, &oracle(&b));
    assert_ne!(run_id(&first), run_id(&second));
    // Input A again: the sink reprints A's stored report and tallies nothing.
    let mut again = g.launch(&input_a, 0, &[]);
    assert_eq!(again.finish(&g), first, "the stored report, unchanged");
    again.sink.wait_for_log(&["already complete"]);
    let stored = read_json(
        &g.path("state")
            .join("runs")
            .join(run_id(&first))
            .join("report.json"),
    );
    assert_eq!(stored, first);
}

/// A socket of the test's own, sending raw bytes at a grid endpoint.
fn raw_socket(kind: zmq::SocketType, endpoint: &str) -> (zmq::Context, zmq::Socket) {
    let ctx = zmq::Context::new();
    let s = ctx.socket(kind).unwrap();
    s.set_linger(1000).unwrap();
    s.set_sndtimeo(5000).unwrap();
    s.connect(endpoint).unwrap();
    (ctx, s)
}

fn header(kind: u8, run: u64) -> Vec<u8> {
    let mut f = b"OG\x03".to_vec();
    f.push(kind);
    f.extend_from_slice(&run.to_le_bytes());
    f
}

#[test]
fn garbage_on_every_socket_changes_nothing_and_is_counted() {
    let mut g = Grid::new("garbage");
    let input = g.generate(20_000, 28, 0);
    let mut sink = g.sink(&[]);
    // A fake ventilator feeds the first worker garbage before the real one binds.
    let fake_ctx = zmq::Context::new();
    let fake = fake_ctx.socket(zmq::ROUTER).unwrap();
    fake.set_linger(1000).unwrap();
    fake.set_rcvtimeo(60_000).unwrap();
    fake.bind(&g.jobs).unwrap();
    let mut w1 = g.worker(&SLOW);
    // The worker's first credit report names it.
    let identity = fake.recv_multipart(0).unwrap().remove(0);
    for frame in [
        b"garbage".to_vec(),
        vec![],
        header(1, 5),
        [header(1, 5), vec![0xc1, 0x00]].concat(),
        [header(9, 5), vec![0x90]].concat(),
        b"OG\x07\x01xxxxxxxx".to_vec(),
    ] {
        fake.send_multipart([&identity[..], &frame[..]], 0).unwrap();
    }
    w1.wait_for_metric(BAD_FRAMES, 6);
    drop(fake);
    drop(fake_ctx);

    let (_ctx, results) = raw_socket(zmq::PUSH, &g.results);
    let (_ctx2, acks) = raw_socket(zmq::DEALER, &g.acks);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    let _w2 = g.worker(&SLOW);
    // No metric carries the run id: the sink's log line names it.
    let run = sink.run_started();
    sink.wait_for_metric(TALLIED, 2_000);

    let record = |seq: u64, outcome: u8| {
        // [worker_id, [[seq, outcome, "", 0, []]]]
        let mut body = vec![0x92, 0x07, 0x91, 0x95];
        body.push(0xcf);
        body.extend_from_slice(&seq.to_be_bytes());
        body.extend_from_slice(&[outcome, 0xa0, 0x00, 0x90]);
        body
    };
    let garbage: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        vec![],
        header(2, run)[..7].to_vec(), // truncated header
        [b"OG\x09".to_vec(), header(2, run)[3..].to_vec()].concat(), // unknown version
        [header(2, run), vec![0x92, 0x07]].concat(), // truncated body
        [header(2, run), record(1, 0)[..9].to_vec()].concat(), // truncated record
        [header(2, run ^ 1), record(3, 1)].concat(), // another run
        [header(2, run), record(1 << 39, 1)].concat(), // an order never sent
        [header(2, run), record(5, 99)].concat(), // no such outcome
        [header(2, run), record(6, 10)].concat(), // "malformed" from a worker
        [header(2, run), record(7, 0)].concat(), // "paid" without currency or items
        [header(42, run), vec![0x90]].concat(), // unknown kind
    ];
    for frame in &garbage {
        results.send(&frame[..], 0).unwrap();
        acks.send(&frame[..], 0).unwrap();
    }
    // An oversized frame: the sink's ZMQ_MAXMSGSIZE drops it (and that connection).
    let (_ctx3, big) = raw_socket(zmq::PUSH, &g.results);
    big.send(vec![0u8; 5 << 20], 0).unwrap();

    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    let stats = &report["stats"];
    let n = |k: &str| stats[k].as_u64().unwrap();
    assert!(n("bad_frames") >= 2 * 6, "{stats}");
    assert!(n("other_run_results") >= 2, "{stats}");
    assert!(n("unknown_order_results") >= 2, "{stats}");
    assert!(n("invalid_results") >= 5, "{stats}");
    assert!(
        w1.is_running() || w1.wait().success(),
        "the worker fed garbage carried on"
    );
}

#[test]
fn a_stuck_worker_does_not_stall_the_run() {
    let mut g = Grid::new("stuck-worker");
    let input = g.generate(20_000, 29, 0);
    let mut run = slow_run(&mut g, &input, &["--min-timeout-ms", "200"]);
    run.sink.wait_for_metric(TALLIED, 4_000);
    // Frozen, holding orders: they must be redelivered to the other worker.
    run.workers[0].signal("-STOP");
    let report = run.finish(&g);
    run.workers[0].signal("-CONT");
    assert_tallies(&report, &oracle(&input));
}

#[test]
fn orders_held_by_a_slow_worker_are_never_resent() {
    let mut g = Grid::new("late-not-lost");
    let input = g.generate(3_000, 30, 0);
    // One slow worker and a short time-out: the old dispatcher resent most
    // orders from its queue. With credit, none waits there long and none is resent.
    let vent_args = [
        "--input",
        input.to_str().unwrap(),
        "--min-timeout-ms",
        "50",
        "--max-deliveries",
        "1",
    ];
    let worker_args = ["--gateway-latency-ms", "5", "--concurrency", "8"];
    let (report, mut vent) = g.run_to_completion(&vent_args, 1, &worker_args);
    assert_tallies(&report, &oracle(&input));
    assert_eq!(report["orders"]["failed"].as_u64(), Some(0));
    assert_eq!(
        report["stats"]["duplicate_results"].as_u64(),
        Some(0),
        "{report}"
    );
    // The ventilator's last words (it has exited, so no metrics to ask).
    let done = vent.wait_for_log(&["run complete"]);
    assert!(done.contains("redelivered=0"), "{done}");
}

/// The seqs of a results frame, sent by a worker or the ventilator.
fn result_seqs(frame: &[u8]) -> Vec<u64> {
    use ordergrid::protocol::{split_frame, Kind, ResultsView};
    match split_frame(frame) {
        Ok((h, body)) if h.kind == Kind::Results => ResultsView::decode(body)
            .map(|batch| batch.iter().map(|r| r.seq).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The sink drops results for seqs past the horizon it knows, and the
/// ventilator's progress and the workers' results come on different
/// connections, in either order: so nothing is dispatched past the horizon
/// the sink confirmed. Here the test is the sink and confirms 200 seqs,
/// then all of them.
#[test]
fn nothing_is_dispatched_past_the_horizon_the_sink_confirmed() {
    use ordergrid::protocol::{frame, split_frame, Acks, Kind, Welcome};
    let mut g = Grid::new("confirmed-horizon");
    let input = g.generate(3_000, 47, 0);
    let ctx = zmq::Context::new();
    let acks = ctx.socket(zmq::ROUTER).unwrap();
    acks.bind(&g.acks).unwrap();
    let results = ctx.socket(zmq::PULL).unwrap();
    results.bind(&g.results).unwrap();
    let _worker = g.worker(&[]);
    let _vent = g.ventilator(&["--input", input.to_str().unwrap(), "--batch", "50"]);
    let (mut limit, mut received, mut highest) = (200u64, 0usize, 0u64);
    let mut confined_until: Option<std::time::Instant> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while highest < 2_500 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}\nreceived {received}, highest {highest}",
            g.logs()
        );
        let mut items = [
            acks.as_poll_item(zmq::POLLIN),
            results.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, 100).unwrap();
        let mut seqs = Vec::new();
        while let Ok(parts) = acks.recv_multipart(zmq::DONTWAIT) {
            let (identity, body) = (&parts[0], &parts[1]);
            let Ok((h, _)) = split_frame(body) else {
                continue;
            };
            let answer = match h.kind {
                Kind::Hello => frame(
                    Kind::Welcome,
                    h.run,
                    &Welcome {
                        first_word: 0,
                        words: vec![],
                        last: true,
                    },
                ),
                Kind::Progress => frame(
                    Kind::Acks,
                    h.run,
                    &Acks {
                        horizon: Some(limit),
                        ..Acks::default()
                    },
                ),
                _ => {
                    seqs.extend(result_seqs(body));
                    continue;
                }
            };
            acks.send_multipart([&identity[..], &answer[..]], 0)
                .unwrap();
        }
        while let Ok(body) = results.recv_bytes(zmq::DONTWAIT) {
            seqs.extend(result_seqs(&body));
        }
        for seq in seqs {
            assert!(
                seq < limit,
                "a result for seq {seq} while the sink had confirmed {limit}\n{}",
                g.logs()
            );
            received += 1;
            highest = highest.max(seq);
        }
        // Once most of the first 200 came back, half a second more of
        // listening for any past them, then the rest is confirmed.
        if limit == 200 && received >= 150 {
            let until = *confined_until
                .get_or_insert_with(|| std::time::Instant::now() + Duration::from_millis(500));
            if std::time::Instant::now() >= until {
                limit = u64::MAX;
            }
        }
    }
}
