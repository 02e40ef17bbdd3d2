//! The HTTP gateway on the real binaries: workers pay through
//! `ordergrid-paysim` (or a tiny fake PSP in this file) over loopback TCP on
//! ports picked per test, while workers and the PSP are killed with -9. The
//! report must equal the oracle's, and the PSP's ledger must equal the
//! report: every paid order charged exactly once.

mod util;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use util::{assert_tallies, oracle, Grid, Proc, PATIENCE, TALLIED};

const SINK: [&str; 2] = ["--progress-ms", "50"];

/// Starts paysim on `listen` (port 0: any) and waits for its address.
fn paysim(g: &mut Grid, name: &str, listen: &str, args: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ordergrid-paysim"));
    cmd.args(["--listen", listen]).args(args);
    let mut p = g.spawn(cmd, name);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let out = std::fs::read_to_string(&p.stdout).unwrap_or_default();
        if let Some(addr) = out.lines().find_map(|l| l.strip_prefix("listening on ")) {
            return (p, addr.trim().to_string());
        }
        assert!(
            Instant::now() < deadline && p.is_running(),
            "paysim did not start\n{}",
            p.all_logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET /v1/ledger` (the test's own one-shot HTTP/1.1 request).
fn ledger(addr: &str) -> Value {
    let body = ledger_text(addr);
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("ledger is not JSON: {e}: {body}"))
}

/// The ledger's JSON text as paysim wrote it (exact integers past u64 too).
fn ledger_text(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("paysim answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /v1/ledger HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// paysim's ledger equals the report: charges and amounts per currency,
/// distinct keys charged = paid orders, and each key in the journal once.
fn assert_ledger_matches(ledger: &Value, report: &Value, journal: &Path) {
    let payments = report["payments"].as_object().unwrap();
    let captured = ledger["captured"].as_object().unwrap();
    assert_eq!(
        captured.keys().collect::<Vec<_>>(),
        payments.keys().collect::<Vec<_>>(),
        "currencies\nledger: {ledger}\nreport: {report}"
    );
    for (currency, p) in payments {
        let c = &captured[currency];
        assert_eq!(c["charges"], p["orders"], "{currency} charges");
        // Exact integers, compared as JSON numbers (they may pass i64::MAX).
        assert_eq!(
            c["amount_cents"].to_string(),
            p["captured_cents"].to_string(),
            "{currency} amount"
        );
    }
    assert_eq!(ledger["charges"], report["orders"]["paid"], "{ledger}");
    let text = std::fs::read_to_string(journal).unwrap();
    let mut keys = std::collections::HashSet::new();
    let mut charged = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: Value = serde_json::from_str(line).unwrap();
        let key = entry["key"].as_str().unwrap().to_string();
        assert!(keys.insert(key.clone()), "key {key} journaled twice");
        charged += u64::from(entry["captured"] == true);
    }
    assert_eq!(Some(charged), report["orders"]["paid"].as_u64());
}

fn gateway_args(addr: &str) -> Vec<String> {
    [
        "--gateway",
        &format!("http://{addr}"),
        "--gateway-timeout-ms",
        "300",
        "--gateway-backoff-ms",
        "20",
        "--concurrency",
        "32",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn paid_orders_are_charged_once_through_psp_faults_and_worker_kills() {
    let mut g = Grid::new("http-faults");
    let input = g.generate(20_000, 31, 0);
    let journal = g.path("paysim.jsonl");
    let (_psp, addr) = paysim(
        &mut g,
        "paysim",
        "127.0.0.1:0",
        &[
            "--latency-ms",
            "2",
            "--fail-rate",
            "0.05",
            "--late-rate",
            "0.01",
            // Far past the workers' 300 ms time-out: their retries must be replays.
            "--late-hold-ms",
            "5000",
            "--journal",
            journal.to_str().unwrap(),
        ],
    );
    let args = gateway_args(&addr);
    let mut sink = g.sink(&SINK);
    let mut doomed = g.worker(&strs(&args));
    let _survivor = g.worker(&strs(&args));
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_metric(TALLIED, 4_000);
    doomed.kill9();
    let mut doomed = g.worker(&strs(&args));
    sink.wait_for_metric(TALLIED, 10_000);
    doomed.kill9();
    let _late = g.worker(&strs(&args));
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    let ledger = ledger(&addr);
    assert_ledger_matches(&ledger, &report, &journal);
    assert!(ledger["replays"].as_u64() > Some(0), "{ledger}");
    assert_eq!(ledger["conflicts"].as_u64(), Some(0), "{ledger}");
}

#[test]
fn a_psp_down_for_seconds_makes_orders_late_not_failed() {
    let mut g = Grid::new("http-down");
    let input = g.generate(12_000, 32, 0);
    let journal = g.path("paysim.jsonl");
    let journal_arg = ["--latency-ms", "2", "--journal", journal.to_str().unwrap()];
    let (mut psp, addr) = paysim(&mut g, "paysim-1", "127.0.0.1:0", &journal_arg);
    // The default back-off (1 s doubling, jittered) and 8 attempts.
    let args = [
        "--gateway".to_string(),
        format!("http://{addr}"),
        "--concurrency".into(),
        "32".into(),
    ];
    let mut sink = g.sink(&SINK);
    let _w1 = g.worker(&strs(&args));
    let _w2 = g.worker(&strs(&args));
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    sink.wait_for_metric(TALLIED, 3_000);
    psp.kill9();
    std::thread::sleep(Duration::from_secs(4));
    // Back on the same address, its ledger replayed from the journal.
    let (_psp, again) = paysim(&mut g, "paysim-2", &addr, &journal_arg);
    assert_eq!(again, addr);
    vent.success();
    sink.success();
    let report = g.report();
    assert_tallies(&report, &oracle(&input));
    assert_eq!(report["orders"]["failed"].as_u64(), Some(0));
    assert_ledger_matches(&ledger(&addr), &report, &journal);
}

/// A fake PSP answering every request with `response` (keep-alive);
/// returns its address and the number of requests it answered.
fn fake_psp(response: &'static str) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU64::new(0));
    let counted = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let counted = counted.clone();
            std::thread::spawn(move || serve_fake(stream, response, &counted));
        }
    });
    (addr, count)
}

fn serve_fake(stream: TcpStream, response: &str, count: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, Ordering::SeqCst);
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Runs `input` through one worker paying at `addr`; returns the report and
/// the dead letter.
fn run_against(g: &mut Grid, input: &Path, addr: &str, extra: &[&str]) -> (Value, String) {
    let mut sink = g.sink(&SINK);
    let mut args = strs(&gateway_args(addr))
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let _w = g.worker(&strs(&args));
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    vent.success();
    sink.success();
    let dead = std::fs::read_to_string(g.path("ordergrid-dead-letter.jsonl")).unwrap_or_default();
    (g.report(), dead)
}

/// Every order that reaches the gateway (the oracle's paid and declined).
fn reaching_the_gateway(expected: &Value) -> u64 {
    let o = &expected["orders"];
    o["paid"].as_u64().unwrap() + o["declined"].as_u64().unwrap()
}

#[test]
fn a_psp_answering_400_fails_orders_with_the_status_in_the_dead_letter() {
    let mut g = Grid::new("http-400");
    let input = g.generate(300, 33, 0);
    let expected = oracle(&input);
    let (addr, requests) = fake_psp(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    );
    let (report, dead) = run_against(&mut g, &input, &addr, &[]);
    let failed = reaching_the_gateway(&expected);
    assert!(failed > 200, "the input has orders to pay");
    assert_eq!(report["orders"]["failed"].as_u64(), Some(failed));
    assert_eq!(report["orders"]["paid"].as_u64(), Some(0));
    assert_eq!(report["payments"], serde_json::json!({}));
    let with_status = dead
        .lines()
        .filter(|l| l.contains(r#""reason":"HTTP 400 Bad Request""#))
        .count() as u64;
    assert_eq!(with_status, failed, "{dead}");
    // Failed at once: one attempt per order (a redelivery may add some).
    assert!(requests.load(Ordering::SeqCst) >= failed);
    assert!(requests.load(Ordering::SeqCst) < 2 * failed);
}

#[test]
fn a_200_that_is_not_json_is_retried_then_failed_with_the_reason() {
    let mut g = Grid::new("http-not-json");
    let input = g.generate(100, 34, 0);
    let expected = oracle(&input);
    let (addr, requests) = fake_psp(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\ncaptured",
    );
    let (report, dead) = run_against(&mut g, &input, &addr, &["--gateway-attempts", "3"]);
    let failed = reaching_the_gateway(&expected);
    assert!(failed > 50, "the input has orders to pay");
    assert_eq!(report["orders"]["failed"].as_u64(), Some(failed));
    assert_eq!(report["orders"]["paid"].as_u64(), Some(0));
    let reason = "gave up after 3 attempts: HTTP 200 OK with a body that is not a JSON object";
    let with_reason = dead.lines().filter(|l| l.contains(reason)).count() as u64;
    assert_eq!(with_reason, failed, "{dead}");
    assert!(requests.load(Ordering::SeqCst) >= 3 * failed);
}

/// One request on its own connection: (status, body).
fn request(addr: &str, head: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("paysim answers");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text}"));
    (
        status,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    )
}

fn charge(addr: &str, key: &str, order: &str, amount: i64, token: &str) -> (u16, String) {
    let body = format!(
        r#"{{"order_id": "{order}", "amount_cents": {amount}, "currency": "JPY", "payment_token": "{token}"}}"#
    );
    request(
        addr,
        &format!(
            "POST /v1/charges HTTP/1.1\r\nContent-Type: application/json\r\nIdempotency-Key: {key}"
        ),
        &body,
    )
}

#[test]
fn paysim_is_idempotent_and_its_ledger_exact_and_durable() {
    let mut g = Grid::new("paysim-api");
    let journal = g.path("paysim.jsonl");
    let args = ["--journal", journal.to_str().unwrap()];
    let (mut psp, addr) = paysim(&mut g, "paysim-1", "127.0.0.1:0", &args);
    let max = i64::MAX;
    assert_eq!(charge(&addr, "a", "a", max, "tok_visa").0, 201);
    let (status, body) = charge(&addr, "a", "a", max, "tok_visa");
    assert_eq!(status, 201, "a replay gets the stored answer");
    assert!(body.contains("captured"), "{body}");
    assert_eq!(
        charge(&addr, "a", "a", 1, "tok_visa").0,
        409,
        "same key, other body"
    );
    assert_eq!(charge(&addr, "b", "b", max, "tok_visa").0, 201);
    assert_eq!(charge(&addr, "d", "d", 5, "tok_decline_x").0, 402);
    assert_eq!(charge(&addr, "d", "d", 5, "tok_decline_x").0, 402);
    assert_eq!(charge(&addr, "f", "f", 7, "tok_flaky").0, 503);
    assert_eq!(charge(&addr, "f", "f", 7, "tok_flaky").0, 503);
    assert_eq!(charge(&addr, "f", "f", 7, "tok_flaky").0, 201);
    let no_key = request(&addr, "POST /v1/charges HTTP/1.1", r#"{"order_id": "x"}"#);
    assert_eq!(no_key.0, 400);
    assert_eq!(charge(&addr, "bad", "bad", -1, "tok_visa").0, 400);
    assert_eq!(request(&addr, "GET /nowhere HTTP/1.1", "").0, 404);
    let expected = serde_json::json!({
        "charges": 3, "replays": 2, "conflicts": 1, "declines": 1,
    });
    // 2 × i64::MAX + 7: past u64 even, and exact.
    let jpy = r#""JPY":{"charges":3,"amount_cents":18446744073709551621}"#;
    let check = |ledger: &Value, requests: Option<u64>| {
        for key in ["charges", "replays", "conflicts", "declines"] {
            // Replays and conflicts are counters of the process, not of the journal.
            if (key == "replays" || key == "conflicts") && requests.is_none() {
                continue;
            }
            assert_eq!(ledger[key], expected[key], "{key}: {ledger}");
        }
        if let Some(n) = requests {
            assert_eq!(ledger["requests"].as_u64(), Some(n), "{ledger}");
        }
    };
    check(&ledger(&addr), Some(11));
    assert!(ledger_text(&addr).contains(jpy), "{}", ledger_text(&addr));
    // Killed and started again: the charges and amounts come back from the journal.
    psp.kill9();
    let (_psp, addr) = paysim(&mut g, "paysim-2", "127.0.0.1:0", &args);
    check(&ledger(&addr), None);
    assert!(ledger_text(&addr).contains(jpy), "{}", ledger_text(&addr));
    assert_eq!(charge(&addr, "a", "a", max, "tok_visa").0, 201);
    assert_eq!(
        ledger(&addr)["replays"].as_u64(),
        Some(1),
        "no second charge"
    );
    check(&ledger(&addr), None);
}

#[test]
fn https_to_a_psp_without_tls_fails_the_handshake_as_a_transient_error() {
    let mut g = Grid::new("http-tls");
    let input = g.generate(60, 35, 0);
    let expected = oracle(&input);
    let (addr, _) = fake_psp("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
    let mut sink = g.sink(&SINK);
    let url = format!("https://{addr}");
    let _w = g.worker(&[
        "--gateway",
        &url,
        "--gateway-attempts",
        "2",
        "--gateway-backoff-ms",
        "10",
    ]);
    let mut vent = g.ventilator(&["--input", input.to_str().unwrap()]);
    vent.success();
    sink.success();
    let failed = reaching_the_gateway(&expected);
    assert_eq!(g.report()["orders"]["failed"].as_u64(), Some(failed));
    let dead = std::fs::read_to_string(g.path("ordergrid-dead-letter.jsonl")).unwrap();
    let tls = dead
        .lines()
        .filter(|l| l.contains("gave up after 2 attempts: connection"))
        .count() as u64;
    assert_eq!(tls, failed, "{dead}");
}
