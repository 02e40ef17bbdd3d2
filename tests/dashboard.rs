//! The sink's dashboard (`--http`): who may read it (token, loopback, the
//! refusal off loopback) over plain HTTP, and what a person sees, in a real
//! headless Chromium: the active run's progress moving, the workers table,
//! then the completed run's totals equal to its report.
//!
//! Without Chromium the browser test says it was skipped, unless
//! `ORDERGRID_REQUIRE_CHROMIUM=1` (CI sets it), which makes it fail.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use util::{http_get as get, read_json, Grid, Proc, PATIENCE, TALLIED};

/// The address the sink's listener took (it is started on port 0).
fn listener_addr(sink: &mut Proc) -> String {
    let line = sink.wait_for_log(&["serving the dashboard", "dashboard=http://"]);
    let url = line
        .split("dashboard=http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    url.to_string()
}

#[test]
fn the_dashboard_needs_its_token_stays_on_loopback_and_is_refused_off_it() {
    let mut g = Grid::new("dash-access");
    let token_file = g.path("token");
    std::fs::write(&token_file, "s3cret-dashboard-token-0123\n").unwrap();

    // A token: /api/status wants it, the page does not hold it.
    let mut sink = g.sink(&[
        "--serve",
        "--http",
        "127.0.0.1:0",
        "--http-token",
        token_file.to_str().unwrap(),
    ]);
    let addr = listener_addr(&mut sink);
    assert_eq!(get(&addr, "/api/status", &[]).0, 401);
    let wrong = "Authorization: Bearer s3cret-dashboard-token-0124";
    assert_eq!(get(&addr, "/api/status", &[wrong]).0, 401);
    let right = "Authorization: Bearer s3cret-dashboard-token-0123";
    let (code, body) = get(&addr, "/api/status", &[right]);
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["sink"]["serving"], true, "{status}");
    assert_eq!(status["sink"]["healthy"], true, "{status}");
    let (code, page) = get(&addr, "/", &[]);
    assert_eq!(code, 200);
    assert!(page.contains("<title>ordergrid</title>") && !page.contains("s3cret"));
    assert_eq!(get(&addr, "/healthz", &[]).0, 200);
    assert_eq!(get(&addr, "/metrics", &[]).0, 200);
    assert_eq!(get(&addr, "/nothing", &[]).0, 404);
    sink.signal("-TERM");
    sink.success();

    // No token on loopback: open to this host, not to another Host name.
    let mut sink = g.sink(&["--serve", "--http", "127.0.0.1:0"]);
    let addr = listener_addr(&mut sink);
    assert_eq!(get(&addr, "/api/status", &[]).0, 200);
    let mut stream = TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /api/status HTTP/1.0\r\nHost: evil.example:80\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.0 403") || response.starts_with("HTTP/1.1 403"),
        "{response}"
    );
    sink.signal("-TERM");
    sink.success();

    // Off loopback without a token: refused, said in one line; metrics stay.
    let mut sink = g.sink(&["--serve", "--http", "0.0.0.0:0"]);
    let addr = listener_addr(&mut sink).replace("0.0.0.0", "127.0.0.1");
    let (code, why) = get(&addr, "/api/status", &[]);
    assert_eq!(code, 403);
    assert!(
        why.contains("--http-token") && why.contains("--insecure"),
        "{why}"
    );
    assert_eq!(get(&addr, "/", &[]).0, 403);
    assert_eq!(get(&addr, "/metrics", &[]).0, 200);
    assert_eq!(get(&addr, "/healthz", &[]).0, 200);
    sink.wait_for_log(&["not serving the dashboard on 0.0.0.0:0"]);
    sink.signal("-TERM");
    sink.success();

    // Bad set-ups: one line, exit 1.
    std::fs::write(&token_file, "short\n").unwrap();
    for (args, says) in [
        (
            vec![
                "--http",
                "127.0.0.1:0",
                "--http-token",
                token_file.to_str().unwrap(),
            ],
            "at least 16",
        ),
        (
            vec!["--http", "127.0.0.1:0", "--http-token", "no-such-file"],
            "no-such-file",
        ),
        (
            vec!["--http", "127.0.0.1:0", "--metrics", "127.0.0.1:1"],
            "one listener",
        ),
    ] {
        let mut bad = g.sink(&args);
        let status = bad.wait();
        assert_eq!(status.code(), Some(1), "{args:?}\n{}", bad.logs());
        assert!(bad.logs().contains(says), "{args:?}\n{}", bad.logs());
    }
}

/// Headless Chromium, if this machine has it.
fn chromium() -> Option<PathBuf> {
    let candidates = [
        std::env::var("CHROMIUM").unwrap_or_default(),
        "chromium".into(),
        "chromium-browser".into(),
        "google-chrome".into(),
    ];
    candidates
        .into_iter()
        .filter(|c| !c.is_empty())
        .find_map(|c| {
            let found = Command::new(&c)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            found.then(|| PathBuf::from(c))
        })
}

/// The page at `url` as Chromium renders it after its scripts ran for a
/// few seconds; with `screenshot`, also a PNG of it.
fn render(browser: &Path, profile: &Path, url: &str, screenshot: Option<&Path>) -> String {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,1000",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(png) => cmd.arg(format!("--screenshot={}", png.display())),
        None => cmd.arg("--dump-dom"),
    };
    let child = cmd
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PATIENCE) {
        Ok(output) => String::from_utf8_lossy(&output.expect("chromium ran").stdout).into_owned(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("chromium did not render {url} in {PATIENCE:?}");
        }
    }
}

/// The value of attribute `attr` in the first tag that also has `marker`.
fn attr_after<'d>(dom: &'d str, marker: &str, attr: &str) -> Option<&'d str> {
    let at = dom.find(marker)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let key = format!("{attr}=\"");
    let value = tag.split(&key).nth(1)?;
    value.split('"').next()
}

/// The completed run's row, `<tr data-run="ID">…</tr>`.
fn completed_row<'d>(dom: &'d str, run: &str) -> Option<&'d str> {
    let start = dom.find(&format!("<tr data-run=\"{run}\""))?;
    let end = start + dom[start..].find("</tr>")?;
    Some(&dom[start..end])
}

/// The active run's tallied count as the page shows it.
fn shown_done(dom: &str) -> Option<u64> {
    attr_after(dom, "id=\"active-done\"", "data-done")?
        .parse()
        .ok()
}

/// Renders the page until `wanted` finds what it looks for; the page as
/// last rendered is in the failure message after [`PATIENCE`].
fn render_until<T>(
    browser: &Path,
    profile: &Path,
    url: &str,
    wanted: impl Fn(&str) -> Option<T>,
) -> (T, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let dom = render(browser, profile, url, None);
        if let Some(found) = wanted(&dom) {
            return (found, dom);
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed what was expected:\n{dom}"
        );
    }
}

#[test]
fn a_person_sees_the_run_move_the_workers_and_the_totals_of_its_report() {
    let Some(browser) = chromium() else {
        let required = std::env::var("ORDERGRID_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "ORDERGRID_REQUIRE_CHROMIUM=1 and no chromium found"
        );
        eprintln!("skipped: no chromium on this machine (apt-get install chromium)");
        return;
    };
    let mut g = Grid::new("dash-browser");
    let profile = g.path("chromium-profile");
    let mut sink = g.sink(&["--serve", "--progress-ms", "100", "--http", "127.0.0.1:0"]);
    let url = format!("http://{}/", listener_addr(&mut sink));
    let worker_args = [
        "--serve",
        "--gateway-latency-ms",
        "10",
        "--concurrency",
        "8",
    ];
    let _workers: Vec<Proc> = (0..3).map(|_| g.worker(&worker_args)).collect();
    let input = g.generate(30_000, 7, 0);
    let mut vent = g.ventilator(&[
        "--input",
        input.to_str().unwrap(),
        "--report",
        "report.json",
    ]);

    // The active run's progress, read twice: it moves. The board copies
    // the sink's counts twice a second and workers report once a second,
    // so the page is read again until it has caught up.
    sink.wait_for_metric(TALLIED, 500);
    let (done_then, first) = render_until(&browser, &profile, &url, |dom| {
        let done = shown_done(dom)?;
        (done > 0 && dom.matches("data-worker=\"").count() == 3).then_some(done)
    });
    assert!(first.contains("id=\"active-id\""), "{first}");
    sink.wait_for_metric(TALLIED, done_then + 3_000);
    let (done_now, _) = render_until(&browser, &profile, &url, |dom| {
        shown_done(dom).filter(|&done| done > done_then)
    });
    assert!(done_now > done_then);

    // The completed run: its totals are its report's.
    vent.success();
    let report = read_json(&g.path("report.json"));
    let run = report["run"]["id"].as_str().expect("run id").to_string();
    let (_, dom) = render_until(&browser, &profile, &url, |dom| {
        completed_row(dom, &run).map(|_| ())
    });
    let row = completed_row(&dom, &run).unwrap();
    for field in [
        "lines",
        "paid",
        "declined",
        "rejected",
        "failed",
        "duplicate",
        "malformed",
    ] {
        let shown = attr_after(row, &format!("data-field=\"{field}\""), "data-value");
        let expected = report["orders"][field].as_u64().map(|n| n.to_string());
        assert_eq!(shown.map(str::to_string), expected, "{field} in {row}");
    }
    let payments = report["payments"].as_object().expect("payments");
    assert!(!payments.is_empty());
    for (currency, totals) in payments {
        let marker = format!("data-currency=\"{currency}\"");
        let orders = attr_after(row, &marker, "data-orders");
        assert_eq!(
            orders.map(str::to_string),
            Some(totals["orders"].to_string()),
            "{currency} in {row}"
        );
        let captured = attr_after(row, &marker, "data-captured").expect("captured");
        let minor_units: u128 = captured.replace('.', "").parse().expect("a decimal");
        assert_eq!(
            minor_units,
            totals["captured_cents"].as_u64().expect("cents") as u128,
            "{currency} captured {captured}"
        );
    }
    if let Ok(png) = std::env::var("ORDERGRID_DASHBOARD_SCREENSHOT") {
        render(&browser, &profile, &url, Some(Path::new(&png)));
    }
    sink.signal("-TERM");
    sink.success();
}
