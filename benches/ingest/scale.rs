//! The fleet at scale: `mde-sync run` as shipped (the default schedule, lag allowance and
//! concurrency, and the packaged unit's `MALLOC_ARENA_MAX=2`), against a simulator of `tenants` tenants with a few alerts each, 50 ms per API
//! call and a change or two per call. Its first pass gets every token and reads every tenant;
//! the pass the next scheduled minute starts is the steady cycle measured: its length (the
//! `pass finished` log line), the CPU the process uses over the minute from its start, and the
//! process's peak RSS over its whole life (`VmHWM`, the first pass included).

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use super::{bin, cpu_secs, proc_usage, simulate};

pub struct Scale {
    pub tenants: usize,
    /// the first pass: tokens and every tenant's first read
    pub first_pass: f64,
    /// the steady pass's length
    pub cycle: f64,
    pub runs_ok: u64,
    pub runs: u64,
    /// CPU seconds over the minute from the steady pass's start
    pub cpu_minute: f64,
    pub peak_mib: f64,
    /// RSS once the steady pass is done, in KiB, and per tenant
    pub rss_after_kib: u64,
}

/// `(duration_ms, runs, ok)` of a `pass finished` line of the JSON log.
fn pass_finished(line: &str) -> Option<(u64, u64, u64)> {
    if !line.contains("\"pass finished\"") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let f = v.get("fields").unwrap_or(&v);
    let n = |k: &str| f.get(k).and_then(serde_json::Value::as_u64);
    Some((n("duration_ms")?, n("runs")?, n("ok")?))
}

fn current_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn scale(dir: &Path, tenants: usize) -> Scale {
    let _sim = simulate(
        dir,
        &[
            "--tenants",
            &tenants.to_string(),
            "--alerts",
            "3",
            "--latency-ms",
            "50",
            "--changes-per-request",
            "1",
        ],
    );
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        // the defaults, not the simulator configuration's quick schedule
        .env("MDE_SYNC_SYNC__SCHEDULE", "0 * * * * *")
        .env("MDE_SYNC_SYNC__LAG_ALLOWANCE", "10m")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        // the environment the packaged unit gives the service (systemd/mde-sync.service)
        .env("MALLOC_ARENA_MAX", "2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mde-sync run");
    let pid = child.id();
    let (tx, passes) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(p) = pass_finished(&line) {
                let _ = tx.send((Instant::now(), p));
            }
        }
    });
    let mut peak = 0;
    let mut sample = |peak: &mut u64| {
        if let Some((hwm, _)) = proc_usage(pid) {
            *peak = (*peak).max(hwm);
        }
    };
    let wait_pass = |peak: &mut u64, sample: &mut dyn FnMut(&mut u64)| loop {
        match passes.recv_timeout(Duration::from_millis(100)) {
            Ok(p) => return p,
            Err(mpsc::RecvTimeoutError::Timeout) => sample(peak),
            Err(e) => panic!("mde-sync run ended before its pass: {e}"),
        }
    };
    let (_, (first_ms, _, _)) = wait_pass(&mut peak, &mut sample);
    // The steady pass starts on the next minute: CPU from then on, for a minute.
    let wait = 60 - time::OffsetDateTime::now_utc().second() as u64;
    let until = Instant::now() + Duration::from_secs(wait);
    while Instant::now() < until {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu0 = cpu_secs(pid).unwrap();
    let started = Instant::now();
    // the pass that started on this minute (not one that started before and ended since)
    let (cycle_ms, runs, ok) = loop {
        let (at, (ms, runs, ok)) = wait_pass(&mut peak, &mut sample);
        if at
            .checked_sub(Duration::from_millis(ms))
            .is_some_and(|s| s + Duration::from_secs(1) >= started)
        {
            break (ms, runs, ok);
        }
    };
    let rss_after_kib = current_rss_kib(pid);
    while started.elapsed() < Duration::from_secs(60) {
        sample(&mut peak);
        std::thread::sleep(Duration::from_millis(100));
    }
    let cpu_minute = cpu_secs(pid).unwrap() - cpu0;
    sample(&mut peak);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    Scale {
        tenants,
        first_pass: first_ms as f64 / 1000.0,
        cycle: cycle_ms as f64 / 1000.0,
        runs_ok: ok,
        runs,
        cpu_minute,
        peak_mib: peak as f64 / 1024.0,
        rss_after_kib,
    }
}
