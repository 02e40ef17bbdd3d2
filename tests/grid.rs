//! Integration tests: the real binaries over real ZeroMQ sockets (ipc, and
//! tcp on loopback), each test in its own folder with its own endpoints, the
//! report checked against the independent oracle (tests/oracle.py).

mod util;

use std::io::Write;
use std::process::Command;
use util::{assert_tallies, oracle, Grid};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/every_case.jsonl");

#[test]
fn every_contract_case_is_tallied_exactly() {
    let mut g = Grid::new("every-case");
    let mut sink = g.sink(&[]);
    let _w1 = g.worker(&[]);
    let _w2 = g.worker(&["--gateway-latency-ms", "2"]);
    let mut vent = g.ventilator(&["--input", DATA]);
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(DATA.as_ref()));
    // Numbers worked out by hand from the file, as a check on the oracle too.
    let o = &report["orders"];
    assert_eq!(
        (
            o["lines"].as_u64(),
            o["paid"].as_u64(),
            o["declined"].as_u64(),
            o["rejected"].as_u64(),
            o["duplicate"].as_u64(),
            o["malformed"].as_u64(),
            o["failed"].as_u64()
        ),
        (
            Some(58),
            Some(10),
            Some(1),
            Some(14),
            Some(2),
            Some(31),
            Some(0)
        )
    );
    let r = &report["rejected"];
    for (reason, n) in [
        ("bad_currency", 5),
        ("no_items", 1),
        ("bad_sku", 2),
        ("bad_quantity", 3),
        ("bad_price", 1),
        ("amount_overflow", 2),
    ] {
        assert_eq!(r[reason].as_u64(), Some(n), "{reason}");
    }
    // Two orders of i64::MAX cents: exact, past i64::MAX.
    assert_eq!(
        report["payments"]["JPY"]["captured_cents"].to_string(),
        "18446744073709551614"
    );
    assert_eq!(report["stock"]["SKU-1"].as_i64(), Some(-15));
    // Every malformed line is in the dead-letter file with its line number.
    let dead = std::fs::read_to_string(g.path("ordergrid-dead-letter.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 31);
    assert!(dead
        .lines()
        .all(|l| l.contains("\"line\":") && l.contains("\"reason\":")));
    // The human table is on stdout.
    let table = std::fs::read_to_string(&sink.stdout).unwrap();
    assert!(
        table.contains("malformed") && table.contains("JPY"),
        "{table}"
    );
}

#[test]
fn generated_orders_across_several_workers_match_the_oracle() {
    let mut g = Grid::new("several-workers");
    let input = g.generate(30_000, 11, 0);
    let mut sink = g.sink(&[]);
    // A slow gateway keeps the run long enough for every worker to join.
    let workers: Vec<_> = (0..3)
        .map(|_| g.worker(&["--gateway-latency-ms", "1", "--concurrency", "16"]))
        .collect();
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    vent.success();
    sink.success();
    for mut w in workers {
        w.success(); // each exits 0 once the sink says the run is over
    }
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    assert_eq!(report["run"]["workers_seen"].as_u64(), Some(3));
}

#[test]
fn roles_start_in_any_order() {
    let mut g = Grid::new("any-order");
    let input = g.generate(5_000, 5, 0);
    let expected = oracle(&input);
    // Ventilator first, then workers, the sink last.
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _w = g.worker(&[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut sink = g.sink(&[]);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &expected);

    // Workers first, then the sink, then the ventilator, a new state folder.
    let mut g = Grid::new("any-order-2");
    let _w = g.worker(&[]);
    let mut sink = g.sink(&[]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &expected);
}

#[test]
fn generate_flag_equals_the_generated_file_and_tcp_works() {
    let mut g = Grid::new("generate");
    let input = g.generate(20_000, 9, 0);
    // Over loopback TCP on ports the OS picks free for this test.
    let port = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let ports: Vec<u16> = (0..4).map(port).collect();
    g.jobs = format!("tcp://127.0.0.1:{}", ports[0]);
    g.results = format!("tcp://127.0.0.1:{}", ports[1]);
    g.acks = format!("tcp://127.0.0.1:{}", ports[2]);
    g.control = format!("tcp://127.0.0.1:{}", ports[3]);
    let mut sink = g.sink(&[]);
    let _w = g.worker(&[]);
    let mut vent = g.ventilator(&["--generate", "20000", "--seed", "9"]);
    vent.success();
    sink.success();
    assert_tallies(&g.report(), &oracle(&input));
}

#[test]
fn standard_input_is_streamed() {
    let mut g = Grid::new("stdin");
    let input = g.generate(3_000, 4, 0);
    let mut sink = g.sink(&[]);
    let _w = g.worker(&[]);
    let mut vent = g.start_piped("ventilator", &["--input", "-", "--run-id", "stdin-test"]);
    let data = std::fs::read(&input).unwrap();
    let mut stdin = vent.take_stdin();
    // Trickle the first lines, then the rest: a stream that goes quiet must not stall.
    let split = data.iter().position(|&b| b == b'\n').unwrap() + 1;
    stdin.write_all(&data[..split]).unwrap();
    stdin.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    stdin.write_all(&data[split..]).unwrap();
    drop(stdin);
    sink.success();
    vent.success();
    assert_tallies(&g.report(), &oracle(&input));
}

#[test]
fn bad_command_lines_exit_2_and_run_time_failures_exit_1() {
    let g = Grid::new("exit-codes");
    let run = |bin: &str, args: &[&str]| {
        let out = Command::new(util::bin(bin))
            .args(args)
            .current_dir(&g.dir)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (bin, args) in [
        ("ventilator", &["--bogus"][..]),
        ("ventilator", &[][..]),
        ("ventilator", &["--input", "x", "--generate", "5"][..]),
        ("worker", &["--concurrency", "0"][..]),
        ("worker", &["--concurrency", "many"][..]),
        ("sink", &["--compact-mib", "0"][..]),
        ("gen", &["--seed", "1"][..]),
    ] {
        let (code, err) = run(bin, args);
        assert_eq!(code, Some(2), "{bin} {args:?}: {err}");
    }
    let (code, err) = run("ventilator", &["--input", "/nonexistent/orders.jsonl"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("ordergrid-ventilator:"))
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("cannot open input /nonexistent/orders.jsonl"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // An endpoint already in use.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = format!("tcp://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let state = g.path("state");
    let (code, err) = run(
        "sink",
        &["--results", &busy, "--state", state.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot bind the results socket to {busy}")),
        "{err}"
    );
    // A malformed endpoint is a bad command line, said when it is read.
    let (code, err) = run("worker", &["--jobs", "nonsense", "--insecure"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("'nonsense' is not an endpoint"), "{err}");
}
