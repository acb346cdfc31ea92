//! The real binary for tests that start it: its path, and `mde-sync simulate` as a child process
//! that writes a ready config into a directory and is killed when dropped.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
};

pub const BIN: &str = env!("CARGO_BIN_EXE_mde-sync");

/// A `mde-sync simulate` child, killed when dropped.
pub struct Simulate {
    child: Child,
    /// `http://127.0.0.1:PORT`, as the simulator printed it.
    pub base_url: String,
}

impl Drop for Simulate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mde-sync simulate --write-config dir` with `args` on a free loopback port and waits
/// until it has printed its address (by then `dir/config.toml` is written).
pub fn simulate(dir: &Path, args: &[&str]) -> Simulate {
    let mut child = Command::new(BIN)
        .args(["simulate", "--listen", "127.0.0.1:0", "--write-config"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mde-sync simulate");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("simulate prints its address").unwrap();
    let base_url = first
        .strip_prefix("simulator listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    // keep draining stdout so the child never blocks on a full pipe
    std::thread::spawn(move || for _ in lines {});
    Simulate { child, base_url }
}
