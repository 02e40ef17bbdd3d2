//! A standing grid (`--serve`): one sink and its workers stay up while runs
//! are submitted to them one after another and several at once; each run's
//! report (the one the sink sends back to `--report`) equals the oracle's,
//! queued runs go in submission order, and workers and the sink die and come
//! back without a run losing or double-counting an order.

mod util;

use std::path::Path;
use std::time::SystemTime;
use util::{assert_tallies, oracle, read_json, run_id, Grid, Proc, TALLIED};

/// A submission: a ventilator for `input` whose report comes back to `report`.
fn submit(g: &mut Grid, input: &Path, report: &str) -> Proc {
    let dead_letter = format!("{report}.dead.jsonl");
    g.ventilator(&[
        "--input",
        input.to_str().unwrap(),
        "--report",
        report,
        "--dead-letter",
        &dead_letter,
    ])
}

/// Waits for the submission and checks its report against the oracle.
fn check(g: &Grid, vent: &mut Proc, input: &Path, report: &str) -> serde_json::Value {
    vent.success();
    let got = read_json(&g.path(report));
    assert_tallies(&got, &oracle(input));
    got
}

/// When the sink wrote a run's report into its state folder.
fn finished_at(g: &Grid, report: &serde_json::Value) -> SystemTime {
    let path = g
        .path("state")
        .join("runs")
        .join(run_id(report))
        .join("report.json");
    std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn twenty_runs_on_one_standing_sink_with_workers_killed_between_and_during_runs() {
    let mut g = Grid::new("standing-twenty");
    let mut sink = g.sink(&["--serve", "--progress-ms", "50"]);
    let worker_args = [
        "--serve",
        "--gateway-latency-ms",
        "1",
        "--concurrency",
        "16",
    ];
    let mut workers: Vec<Proc> = (0..3).map(|_| g.worker(&worker_args)).collect();

    // Run 1 is long enough to kill a worker in the middle of it.
    let big = g.generate(20_000, 100, 0);
    let mut vent = submit(&mut g, &big, "report-1.json");
    sink.wait_for_metric(TALLIED, 3_000);
    workers[0].kill9();
    workers[0] = g.worker(&worker_args);
    check(&g, &mut vent, &big, "report-1.json");

    // Runs 2 to 17, one after another; a worker killed and replaced between two.
    for n in 2..=17u64 {
        if n == 6 {
            workers[1].kill9();
            workers[1] = g.worker(&worker_args);
        }
        let input = g.generate(2_000, n, 0);
        let report = format!("report-{n}.json");
        let mut vent = submit(&mut g, &input, &report);
        check(&g, &mut vent, &input, &report);
    }

    // Runs 18 to 20 submitted at once: they queue and run in that order.
    let inputs: Vec<_> = (18..=20).map(|n| g.generate(5_000, n, 0)).collect();
    // No metric tells a ventilator's place in the queue; its log line does.
    let mut first = submit(&mut g, &inputs[0], "report-18.json");
    first.wait_for_log(&["the sink accepted the run"]);
    let mut second = submit(&mut g, &inputs[1], "report-19.json");
    second.wait_for_log(&["queued behind run", "position 1"]);
    let mut third = submit(&mut g, &inputs[2], "report-20.json");
    third.wait_for_log(&["queued behind run", "position 2"]);
    let r18 = check(&g, &mut first, &inputs[0], "report-18.json");
    let r19 = check(&g, &mut second, &inputs[1], "report-19.json");
    let r20 = check(&g, &mut third, &inputs[2], "report-20.json");
    assert!(finished_at(&g, &r18) <= finished_at(&g, &r19));
    assert!(finished_at(&g, &r19) <= finished_at(&g, &r20));

    // Still standing: every role is up, and a completed run submitted again
    // is answered with its stored report at once.
    assert!(sink.is_running(), "{}", sink.logs());
    for w in &mut workers {
        assert!(w.is_running(), "{}", w.logs());
    }
    let mut again = submit(&mut g, &inputs[0], "report-18-again.json");
    check(&g, &mut again, &inputs[0], "report-18-again.json");
    assert_eq!(
        run_id(&read_json(&g.path("report-18-again.json"))),
        run_id(&r18)
    );

    // A stop request: a serving sink with no run exits 0, so do its workers.
    sink.signal("-INT");
    sink.success();
    for w in &mut workers {
        w.signal("-INT");
        w.success();
    }
}

#[test]
fn a_sink_killed_during_a_run_with_two_queued_completes_all_three_after_restart() {
    let mut g = Grid::new("standing-sink-kill");
    let mut sink = g.sink(&["--serve", "--progress-ms", "50"]);
    // About 2,400 orders/s: the first run lasts a few seconds.
    let worker_args = ["--serve", "--gateway-latency-ms", "5", "--concurrency", "6"];
    let mut workers: Vec<Proc> = (0..2).map(|_| g.worker(&worker_args)).collect();
    let inputs: Vec<_> = (1..=4)
        .map(|n| g.generate(if n == 1 { 16_000 } else { 4_000 }, 40 + n, 0))
        .collect();

    // No metric tells a ventilator's place in the queue; its log line does.
    let mut first = submit(&mut g, &inputs[0], "report-1.json");
    first.wait_for_log(&["the sink accepted the run"]);
    let mut second = submit(&mut g, &inputs[1], "report-2.json");
    second.wait_for_log(&["queued behind run", "position 1"]);
    let mut third = submit(&mut g, &inputs[2], "report-3.json");
    third.wait_for_log(&["queued behind run", "position 2"]);
    // A fourth gives up while queued: it leaves the queue.
    let mut quitter = submit(&mut g, &inputs[3], "report-4.json");
    quitter.wait_for_log(&["queued behind run", "position 3"]);
    quitter.signal("-INT");
    assert_eq!(quitter.wait().code(), Some(130), "{}", quitter.logs());
    sink.wait_for_log(&["a queued ventilator stopped saying hello"]);

    sink.wait_for_metric(TALLIED, 2_000);
    sink.kill9();
    let mut sink = g.sink(&["--serve", "--progress-ms", "50"]);
    // What the restarted sink did is in its log only.
    sink.wait_for_log(&["resuming the run in progress"]);

    let reports = [
        check(&g, &mut first, &inputs[0], "report-1.json"),
        check(&g, &mut second, &inputs[1], "report-2.json"),
        check(&g, &mut third, &inputs[2], "report-3.json"),
    ];
    // One of them (the first, unless the machine is very slow) lived
    // through the restart.
    let restarts: Vec<_> = reports
        .iter()
        .map(|r| r["run"]["sink_restarts"].clone())
        .collect();
    assert_eq!(
        restarts.iter().filter_map(|r| r.as_u64()).sum::<u64>(),
        1,
        "{restarts:?}"
    );
    sink.signal("-TERM");
    sink.success();
    for w in &mut workers {
        w.signal("-TERM");
        w.success();
    }
}
