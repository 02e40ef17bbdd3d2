//! Fault tests: real processes, real kill signals, faults driven by the
//! progress the sink reports (not by sleeping), and the exact report
//! asserted against the oracle every time.

mod util;

use std::time::Duration;
use util::{assert_tallies, oracle, read_json, Grid, Proc};

/// Workers slow enough (a simulated gateway latency) that a run lasts a few
/// seconds, so a fault lands in the middle of it.
const SLOW: [&str; 4] = ["--gateway-latency-ms", "2", "--concurrency", "16"];
const SINK: [&str; 2] = ["--progress-ms", "50"];

#[test]
fn a_worker_killed_mid_run_loses_nothing() {
    let mut g = Grid::new("kill-worker");
    let input = g.generate(20_000, 21, 0);
    let mut sink = g.sink(&SINK);
    let mut doomed = g.worker(&SLOW);
    let _survivor = g.worker(&SLOW);
    let mut vent = g.ventilator(&[
        "--input",
        input.to_str().unwrap(),
        "--min-timeout-ms",
        "200",
    ]);
    sink.wait_for_count("progress", "done", 4_000);
    doomed.kill9();
    let _late = g.worker(&SLOW);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &oracle(&input));
    let line = vent.wait_for_log(&["run complete"]);
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
    let sink_args = ["--progress-ms", "50", "--compact-mib", "1"];
    let mut sink = g.sink(&sink_args);
    let _w1 = g.worker(&SLOW);
    let _w2 = g.worker(&SLOW);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_log(&["journal compacted"]);
    sink.wait_for_count("progress", "done", 30_000);
    sink.kill9();
    let mut sink = g.sink(&sink_args);
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
    let mut sink = g.sink(&SINK);
    let _w1 = g.worker(&SLOW);
    let _w2 = g.worker(&SLOW);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_count("progress", "done", 6_000);
    vent.kill9();
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    let accepted = vent.wait_for_log(&["the sink accepted the run"]);
    assert!(!accepted.contains("already_tallied=0"), "{accepted}");
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &oracle(&input));
}

#[test]
fn poison_orders_are_given_up_as_failed_while_workers_are_restarted() {
    let mut g = Grid::new("poison");
    let input = g.generate(6_000, 24, 2);
    let mut sink = g.sink(&SINK);
    let mut workers: Vec<Proc> = (0..2).map(|_| g.worker(&[])).collect();
    let mut vent = g.ventilator(&[
        "--input",
        input.to_str().unwrap(),
        "--min-timeout-ms",
        "200",
    ]);
    // Supervise: restart workers that die, as a launch script would.
    let mut restarts = 0;
    while sink.is_running() {
        for w in workers.iter_mut() {
            if !w.is_running() && sink.is_running() {
                *w = g.worker(&[]);
                restarts += 1;
                assert!(restarts < 50, "workers keep dying");
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.success();
    vent.success();
    let report = g.report();
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
    let mut sink = g.sink(&SINK);
    let mut stopping = g.worker(&SLOW);
    let _other = g.worker(&SLOW);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_count("progress", "done", 3_000);
    stopping.signal("-TERM");
    stopping.success();
    stopping.wait_for_log(&["worker stopped"]);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &oracle(&input));
}

#[test]
fn another_input_is_another_run_and_a_completed_run_is_reprinted() {
    let mut g = Grid::new("runs");
    let a = g.generate(4_000, 26, 0);
    let b = g.generate(3_000, 27, 0);
    let run = |g: &mut Grid, input: &std::path::Path| {
        let mut sink = g.sink(&[]);
        let _w = g.worker(&[]);
        let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
        vent.success();
        sink.success();
        g.report()
    };
    let first = run(&mut g, &a);
    assert_tallies(&first, &oracle(&a));
    let second = run(&mut g, &b);
    assert_tallies(&second, &oracle(&b));
    assert_ne!(first["run"]["id"], second["run"]["id"]);
    // Input A again: the sink reprints A's stored report and tallies nothing.
    let mut sink = g.sink(&[]);
    let mut vent = g.ventilator(&["--input", a.to_str().unwrap()]);
    vent.success();
    sink.success();
    sink.wait_for_log(&["already complete"]);
    let again = g.report();
    assert_eq!(again, first, "the stored report, unchanged");
    let stored = read_json(
        &g.path("state")
            .join("runs")
            .join(first["run"]["id"].as_str().unwrap())
            .join("report.json"),
    );
    assert_eq!(stored, first);
}
