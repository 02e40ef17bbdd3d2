//! Dispatch on the real binaries: worker credit, a sink that comes back
//! with fewer orders than it acknowledged, and a ventilator that says when
//! the sink does not answer. Each run's report is checked against the oracle.

mod util;

use util::{assert_tallies, oracle, run_id, Grid, TALLIED};

const SINK: [&str; 2] = ["--progress-ms", "50"];

#[test]
fn a_slow_gateway_gets_each_order_once() {
    let mut g = Grid::new("slow-gateway-once");
    let input = g.generate(600, 51, 0);
    let slow = ["--gateway-latency-ms", "100", "--concurrency", "8"];
    // A short time-out that the old dispatcher would have resent by.
    let vent_args = ["--input", input.to_str().unwrap(), "--min-timeout-ms", "50"];
    let (report, mut vent) = g.run_to_completion(&vent_args, 2, &slow);
    assert_tallies(&report, &oracle(&input));
    assert_eq!(
        report["stats"]["duplicate_results"].as_u64(),
        Some(0),
        "{report}"
    );
    // The ventilator's last words (it has exited, so no metrics to ask).
    let done = vent.wait_for_log(&["run complete"]);
    assert!(done.contains("redelivered=0"), "{done}");
    assert!(done.contains(&run_id(&report)), "{done}");
}

#[test]
fn a_sink_that_comes_back_with_fewer_orders_than_it_acknowledged_gets_them_again() {
    let mut g = Grid::new("sink-forgets");
    let input = g.generate(40_000, 52, 0);
    let mut sink = g.sink(&SINK);
    let slow = ["--gateway-latency-ms", "2", "--concurrency", "16"];
    let _w1 = g.worker(&slow);
    let _w2 = g.worker(&slow);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_metric(TALLIED, 15_000);
    sink.kill9();
    // The state is gone: every acknowledgement the ventilator had is void.
    std::fs::remove_dir_all(g.path("state")).unwrap();
    let mut sink = g.sink(&SINK);
    vent.wait_for_log(&["the sink came back without orders it had acknowledged"]);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &oracle(&input));
}

#[test]
fn a_ventilator_without_a_sink_says_so() {
    let mut g = Grid::new("no-sink");
    let mut vent = g.ventilator(&["--generate", "10"]);
    let line = vent.wait_for_log(&["no answer from the sink at"]);
    assert!(line.contains(&g.acks), "{line}");
    assert!(vent.is_running());
}

#[test]
fn a_worker_without_a_ventilator_says_so() {
    let mut g = Grid::new("no-ventilator");
    g.jobs = "tcp://nohost.invalid:6557".into();
    let mut w = g.worker(&["--insecure"]);
    w.wait_for_log(&["no answer from the ventilator at tcp://nohost.invalid:6557"]);
    assert!(w.is_running());
}
