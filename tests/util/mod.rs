//! The integration-test harness: a folder and private ipc endpoints per test,
//! the real binaries as child processes that are killed on drop, waits with
//! time-outs on the roles' `--metrics` counters, every role's log dumped
//! when a test fails, and the independent oracle.

#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub fn bin(name: &str) -> PathBuf {
    match name {
        "sink" => PathBuf::from(env!("CARGO_BIN_EXE_ordergrid-sink")),
        "worker" => PathBuf::from(env!("CARGO_BIN_EXE_ordergrid-worker")),
        "ventilator" => PathBuf::from(env!("CARGO_BIN_EXE_ordergrid-ventilator")),
        "gen" => PathBuf::from(env!("CARGO_BIN_EXE_ordergrid-gen")),
        "keygen" => PathBuf::from(env!("CARGO_BIN_EXE_ordergrid-keygen")),
        other => panic!("no binary {other}"),
    }
}

/// The sink's orders tallied, summed over outcomes (the progress line's `done`).
pub const TALLIED: &str = "ordergrid_orders_tallied_total";
/// Frames a role dropped because they did not open or decode.
pub const BAD_FRAMES: &str = "ordergrid_bad_frames_total";

/// One test's folder and endpoints.
pub struct Grid {
    pub dir: PathBuf,
    pub jobs: String,
    pub results: String,
    pub acks: String,
    pub control: String,
    /// Whether [`Grid::start`] adds `--metrics 127.0.0.1:0` (true unless a
    /// test turns it off to check a role's stderr line by line).
    pub metrics: bool,
    counter: usize,
    logs: Logs,
}

/// The logs of every process a grid started, dumped once when a test fails.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<LogBook>>);

#[derive(Default)]
struct LogBook {
    /// Name, stdout, stderr of each process, in start order.
    files: Vec<(String, PathBuf, PathBuf)>,
    /// Already shown in a panic message.
    dumped: bool,
}

impl Logs {
    fn add(&self, name: &str, stdout: &Path, stderr: &Path) {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        book.files
            .push((name.into(), stdout.to_path_buf(), stderr.to_path_buf()));
    }

    /// Every process's stdout and stderr, marked as shown.
    pub fn all(&self) -> String {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        book.dumped = true;
        book.files
            .iter()
            .map(|(name, out, err)| log_text(name, out, err))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn dumped(&self) -> bool {
        self.0.lock().map_or(true, |b| b.dumped)
    }
}

fn log_text(name: &str, stdout: &Path, stderr: &Path) -> String {
    format!(
        "--- {name} stdout\n{}\n--- {name} stderr\n{}",
        fs::read_to_string(stdout).unwrap_or_default(),
        fs::read_to_string(stderr).unwrap_or_default()
    )
}

impl Grid {
    /// A fresh folder under the system temp folder, with ipc endpoints inside it.
    pub fn new(name: &str) -> Grid {
        let dir = std::env::temp_dir().join(format!("og-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let ep = |s: &str| format!("ipc://{}/{s}.ipc", dir.display());
        Grid {
            jobs: ep("jobs"),
            results: ep("results"),
            acks: ep("acks"),
            control: ep("control"),
            dir,
            metrics: true,
            counter: 0,
            logs: Logs::default(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every log of this grid's processes so far (for a failure message).
    pub fn logs(&self) -> String {
        self.logs.all()
    }

    /// Starts `cmd` in this grid's folder as `name`; its logs are dumped
    /// with every other process's if the test fails.
    pub fn spawn(&mut self, cmd: Command, name: &str) -> Proc {
        self.spawn_with(cmd, name, Stdio::null())
    }

    fn spawn_with(&mut self, mut cmd: Command, name: &str, stdin: Stdio) -> Proc {
        cmd.current_dir(&self.dir);
        let mut p = Proc::spawn_with(cmd, &self.dir, name, stdin);
        self.logs.add(&p.name, &p.stdout, &p.stderr);
        p.logs = Some(self.logs.clone());
        p
    }

    /// Starts one of the grid's binaries with this grid's endpoints; a
    /// sink, worker or ventilator also serves its metrics on a free
    /// loopback port (unless `args` has `--metrics` or `--http`).
    pub fn start(&mut self, role: &str, args: &[&str]) -> Proc {
        self.start_with(role, args, Stdio::null())
    }

    /// [`Grid::start`] with a pipe on its standard input ([`Proc::take_stdin`]).
    pub fn start_piped(&mut self, role: &str, args: &[&str]) -> Proc {
        self.start_with(role, args, Stdio::piped())
    }

    fn start_with(&mut self, role: &str, args: &[&str], stdin: Stdio) -> Proc {
        self.counter += 1;
        let name = format!("{role}-{}", self.counter);
        let mut cmd = Command::new(bin(role));
        cmd.current_dir(&self.dir);
        match role {
            "sink" => {
                cmd.args([
                    "--results",
                    &self.results,
                    "--acks",
                    &self.acks,
                    "--control",
                    &self.control,
                ]);
                cmd.args(["--state", self.dir.join("state").to_str().unwrap()]);
            }
            "worker" => {
                cmd.args([
                    "--jobs",
                    &self.jobs,
                    "--results",
                    &self.results,
                    "--control",
                    &self.control,
                ]);
            }
            "ventilator" => {
                cmd.args(["--jobs", &self.jobs, "--acks", &self.acks]);
            }
            _ => {}
        }
        let own = args.iter().any(|a| {
            ["--metrics", "--http"]
                .iter()
                .any(|f| a == f || a.starts_with(&format!("{f}=")))
        });
        if self.metrics && matches!(role, "sink" | "worker" | "ventilator") && !own {
            cmd.args(["--metrics", "127.0.0.1:0"]);
        }
        cmd.args(args);
        self.spawn_with(cmd, &name, stdin)
    }

    pub fn sink(&mut self, args: &[&str]) -> Proc {
        self.start("sink", args)
    }

    pub fn worker(&mut self, args: &[&str]) -> Proc {
        self.start("worker", args)
    }

    pub fn ventilator(&mut self, args: &[&str]) -> Proc {
        self.start("ventilator", args)
    }

    /// Writes `ordergrid-gen --count N --seed S [--poison P]` output to a file here.
    pub fn generate(&self, count: u64, seed: u64, poison: u64) -> PathBuf {
        let path = self.dir.join(format!("gen-{count}-{seed}-{poison}.jsonl"));
        let out = fs::File::create(&path).unwrap();
        let status = Command::new(bin("gen"))
            .args([
                "--count",
                &count.to_string(),
                "--seed",
                &seed.to_string(),
                "--poison",
                &poison.to_string(),
            ])
            .stdout(out)
            .status()
            .unwrap();
        assert!(status.success());
        path
    }

    /// The report the sink wrote.
    pub fn report(&self) -> Value {
        read_json(&self.dir.join("state").join("report.json"))
    }

    /// A run started in the background: a sink, `workers` workers with
    /// `worker_args`, a ventilator with `vent_args`.
    pub fn launch(&mut self, vent_args: &[&str], workers: usize, worker_args: &[&str]) -> Running {
        let sink = self.sink(&[]);
        let workers = (0..workers).map(|_| self.worker(worker_args)).collect();
        let vent = self.ventilator(vent_args);
        Running {
            sink,
            workers,
            vent,
        }
    }

    /// A whole run ([`Grid::launch`]): waits for the ventilator, the sink
    /// and the workers to exit 0 (every log dumped if not) and returns the
    /// report and the ventilator, whose log tells what it did.
    pub fn run_to_completion(
        &mut self,
        vent_args: &[&str],
        workers: usize,
        worker_args: &[&str],
    ) -> (Value, Proc) {
        let mut run = self.launch(vent_args, workers, worker_args);
        let report = run.finish(self);
        for w in &mut run.workers {
            w.success();
        }
        (report, run.vent)
    }
}

/// The roles of a run in progress.
pub struct Running {
    pub sink: Proc,
    pub workers: Vec<Proc>,
    pub vent: Proc,
}

impl Running {
    /// Waits for the ventilator and the sink to exit 0; the report.
    pub fn finish(&mut self, g: &Grid) -> Value {
        self.vent.success();
        self.sink.success();
        g.report()
    }
}

/// The run id in a report.
pub fn run_id(report: &Value) -> String {
    report["run"]["id"].as_str().unwrap_or_default().to_string()
}

impl Drop for Grid {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        } else if !self.logs.dumped() {
            eprintln!("{}", self.logs.all());
        }
    }
}

pub fn read_json(path: &Path) -> Value {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// A running binary; killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// Its grid's logs, when a grid started it.
    logs: Option<Logs>,
    /// Where it serves `/metrics`, once read from its log.
    metrics_addr: Option<String>,
}

impl Proc {
    /// Starts `cmd` alone (not in a grid's log book), its output in `dir`.
    pub fn spawn(cmd: Command, dir: &Path, name: &str) -> Proc {
        Proc::spawn_with(cmd, dir, name, Stdio::null())
    }

    fn spawn_with(mut cmd: Command, dir: &Path, name: &str, stdin: Stdio) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(stdin)
            .stdout(fs::File::create(&stdout).unwrap())
            .stderr(fs::File::create(&stderr).unwrap())
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            stdout,
            stderr,
            logs: None,
            metrics_addr: None,
        }
    }

    /// Its standard input, if started with [`Grid::start_piped`].
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        let child = self.child.as_mut().expect("running");
        child.stdin.take().expect("started with a piped stdin")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// This process's stdout and stderr.
    pub fn logs(&self) -> String {
        log_text(&self.name, &self.stdout, &self.stderr)
    }

    /// Every log of its grid (or its own, started alone), for a failure message.
    pub fn all_logs(&self) -> String {
        match &self.logs {
            Some(logs) => logs.all(),
            None => self.logs(),
        }
    }

    /// Waits for the exit, failing the test (with the logs) after [`PATIENCE`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "{} did not exit in {PATIENCE:?}\n{}",
                    self.name,
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for exit code 0.
    pub fn success(&mut self) {
        let status = self.wait();
        assert!(
            status.success(),
            "{} exited with {status}\n{}",
            self.name,
            self.all_logs()
        );
    }

    /// Sends a signal (`"-9"`, `"-TERM"`, `"-INT"`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Waits until stderr has a line containing every one of `needles`.
    pub fn wait_for_log(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = fs::read_to_string(&self.stderr).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
                return line.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "{} never logged {needles:?}\n{}",
                    self.name,
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Where it serves `/metrics` (`127.0.0.1:PORT`), read once from its
    /// log's "serving metrics" (or the sink's "serving the dashboard and
    /// metrics") line.
    pub fn metrics_addr(&mut self) -> String {
        if let Some(addr) = &self.metrics_addr {
            return addr.clone();
        }
        let line = self.wait_for_log(&["metrics=http://"]);
        let addr = line
            .split("metrics=http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
            .replace("0.0.0.0", "127.0.0.1");
        self.metrics_addr = Some(addr.clone());
        addr
    }

    /// A metric's value now: `name{label="value",…}` exactly, or a bare
    /// name summed over its labels; `None` if it is not served (or the
    /// process does not answer).
    pub fn metric(&mut self, name: &str) -> Option<f64> {
        let addr = self.metrics_addr();
        let (code, text) = try_http_get(&addr, "/metrics", &[]).ok()?;
        if code != 200 {
            return None;
        }
        metric_value(&text, name)
    }

    /// Waits until `name` (see [`Proc::metric`]) is at least `at_least` and
    /// returns its value; fails the test with every log if the process
    /// exits first or after [`PATIENCE`].
    pub fn wait_for_metric(&mut self, name: &str, at_least: u64) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        let mut last = None;
        loop {
            last = self.metric(name).or(last);
            if let Some(v) = last.filter(|&v| v >= at_least as f64) {
                return v;
            }
            if Instant::now() > deadline || !self.is_running() {
                panic!(
                    "{}: {name} never reached {at_least} (last seen {last:?})\n{}",
                    self.name,
                    self.all_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The sink's "run started" line: the id of the run it started.
    pub fn run_started(&mut self) -> u64 {
        let line = self.wait_for_log(&["run started"]);
        // The last `run=`: the span before the message carries one too.
        line.rsplit("run=")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|id| u64::from_str_radix(id, 16).ok())
            .unwrap_or_else(|| panic!("no run id in {line:?}"))
    }
}

/// A metric's value in Prometheus text: the series `name` exactly when it
/// has labels, else every series of that name summed.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let bare = series.split('{').next().unwrap_or(series);
        let matches = if name.contains('{') {
            series == name
        } else {
            bare == name
        };
        if let (true, Ok(v)) = (matches, value.parse::<f64>()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

/// `GET path` over plain HTTP/1.0 with extra header lines: the status code
/// and the body.
pub fn http_get(addr: &str, path: &str, headers: &[&str]) -> (u16, String) {
    try_http_get(addr, path, headers).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn try_http_get(addr: &str, path: &str, headers: &[&str]) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A grid's processes are dumped together by the grid.
        if std::thread::panicking() && self.logs.is_none() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The independent calculation (tests/oracle.py) of the report's tallies.
pub fn oracle(input: &Path) -> Value {
    oracle_run(&[input])
}

/// The oracle's tallies for an input with a stock file (with `inventory`).
#[allow(dead_code)]
pub fn oracle_with_stock(input: &Path, stock: &Path) -> Value {
    oracle_run(&[input, stock])
}

fn oracle_run(args: &[&Path]) -> Value {
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py"))
        .args(args)
        .output()
        .expect("python3 runs the oracle");
    assert!(
        out.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The exact sections of a report (what must not depend on faults or timing).
pub fn tallies(report: &Value) -> Value {
    let mut t = serde_json::Map::new();
    for key in ["orders", "rejected", "payments", "stock", "inventory"] {
        if let Some(section) = report.get(key) {
            t.insert(key.into(), section.clone());
        }
    }
    Value::Object(t)
}

/// Asserts the report's tallies equal the oracle's, with a readable diff.
pub fn assert_tallies(report: &Value, expected: &Value) {
    let got = tallies(report);
    if &got != expected {
        for key in ["orders", "rejected", "payments", "stock", "inventory"] {
            if got.get(key) != expected.get(key) {
                let g = got[key].to_string();
                let e = expected[key].to_string();
                panic!(
                    "report section {key} differs\n got: {}\nwant: {}",
                    &g[..g.len().min(2000)],
                    &e[..e.len().min(2000)]
                );
            }
        }
    }
}
