//! The integration-test harness: a folder and private ipc endpoints per test,
//! the real binaries as child processes that are killed on drop, waits with
//! time-outs that dump every log on failure, and the independent oracle.

#![allow(dead_code)]

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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

/// One test's folder and endpoints.
pub struct Grid {
    pub dir: PathBuf,
    pub jobs: String,
    pub results: String,
    pub acks: String,
    pub control: String,
    counter: usize,
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
            counter: 0,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts one of the grid's binaries with this grid's endpoints.
    pub fn start(&mut self, role: &str, args: &[&str]) -> Proc {
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
        cmd.args(args);
        Proc::spawn(cmd, &self.dir, &name)
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

    /// A whole run: a sink, `workers` workers with `worker_args`, a
    /// ventilator with `vent_args`; waits for the ventilator and the sink to
    /// exit 0 (every log dumped if not) and returns the report and the
    /// ventilator, whose log tells what it did.
    pub fn run_to_completion(
        &mut self,
        vent_args: &[&str],
        workers: usize,
        worker_args: &[&str],
    ) -> (Value, Proc) {
        let mut sink = self.sink(&["--progress-ms", "50"]);
        let mut ws: Vec<Proc> = (0..workers).map(|_| self.worker(worker_args)).collect();
        let mut vent = self.ventilator(vent_args);
        vent.success();
        sink.success();
        for w in &mut ws {
            w.success();
        }
        (self.report(), vent)
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
}

impl Proc {
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Proc {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
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
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- {} stdout\n{}\n--- {} stderr\n{}",
            self.name,
            fs::read_to_string(&self.stdout).unwrap_or_default(),
            self.name,
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
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
                    self.logs()
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
            self.logs()
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
                panic!("{} never logged {needles:?}\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a numeric `key=N` field in a log line containing `needle` reaches `at_least`.
    pub fn wait_for_count(&mut self, needle: &str, key: &str, at_least: u64) {
        let deadline = Instant::now() + PATIENCE;
        let pat = format!("{key}=");
        loop {
            let text = fs::read_to_string(&self.stderr).unwrap_or_default();
            let best = text
                .lines()
                .filter(|l| l.contains(needle))
                .filter_map(|l| l.split(&pat).nth(1))
                .filter_map(|rest| {
                    rest.split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            if best >= at_least {
                return;
            }
            if Instant::now() > deadline || !self.is_running() {
                panic!(
                    "{} never logged {needle} with {key} >= {at_least}\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
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
