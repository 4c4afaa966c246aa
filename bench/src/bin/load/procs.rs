//! The processes under load: a real `tessera coordinator` and real `tessera worker`s, started
//! from the `tessera` binary, and what the kernel says of their CPU time and memory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// A child process, killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `tessera` binary: `explicit`, else the one beside this benchmark's own binary.
pub fn tessera_exe(explicit: Option<PathBuf>) -> Result<PathBuf> {
    let exe = match explicit {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("tessera"),
    };
    if !exe.exists() {
        bail!(
            "{} does not exist: build it first (cargo build --release -p tessera) or name it with --tessera",
            exe.display()
        );
    }
    Ok(exe)
}

/// Which CPUs each side runs on when pinned (util-linux's `taskset`): the coordinator alone
/// on the first, the workers and this process (the crowd's clients) on the others, so that the
/// crowd's own CPU does not land on the coordinator's core and count as the coordinator's
/// slowdown (as it would not on a public coordinator, whose contributors are elsewhere).
#[derive(Clone, Debug)]
pub struct Pinning {
    /// The coordinator's CPU list.
    pub coordinator: String,
    /// Everyone else's.
    pub rest: String,
}

/// The pinning for this machine: none when asked for none or with one CPU.
pub fn pinning(wanted: bool) -> Option<Pinning> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (wanted && n >= 2).then(|| Pinning {
        coordinator: "0".into(),
        rest: if n == 2 {
            "1".into()
        } else {
            format!("1-{}", n - 1)
        },
    })
}

/// Pins every thread of this process (and so the threads it starts later) to `cpus`.
pub fn pin_self(cpus: &str) -> Result<()> {
    let ok = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("running taskset (util-linux) to pin the benchmark; --no-pin runs without it")?
        .success();
    if !ok {
        bail!("taskset could not pin the benchmark to CPUs {cpus}");
    }
    Ok(())
}

/// `exe`, run on `cpus` through `taskset` (which execs it: the child's pid is `exe`'s).
fn command(exe: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut k = Command::new("taskset");
            k.args(["-c", c]).arg(exe);
            k
        }
        None => Command::new(exe),
    }
}

/// `tessera coordinator` on 127.0.0.1:`port` with `config`, data in `dir`, its log beside it.
pub fn coordinator(
    exe: &Path,
    config: &Path,
    port: u16,
    dir: &Path,
    cpus: Option<&str>,
) -> Result<Proc> {
    let log = std::fs::File::create(dir.join("coordinator.log"))?;
    let child = command(exe, cpus)
        .args(["coordinator", "--config"])
        .arg(config)
        .args(["--bind", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        // The benchmark measures the coordinator; a proof of work would only cost the load's
        // own CPU (see `tessera-bench`'s `admission` for what a ticket costs).
        .args(["--admission-bits", "0"])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the coordinator")?;
    Ok(Proc(child))
}

/// A `tessera worker` with its identity in `dir`.
pub fn worker(exe: &Path, port: u16, dir: &Path, n: usize, cpus: Option<&str>) -> Result<Proc> {
    let child = command(exe, cpus)
        .args([
            "worker",
            "--coordinator",
            &format!("ws://127.0.0.1:{port}/ws"),
        ])
        .args(["--memory-budget", "1GiB", "--quiet", "--identity"])
        .arg(dir.join(format!("worker-{n}.key")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a worker")?;
    Ok(Proc(child))
}

/// Clock ticks per second of `/proc/<pid>/stat` times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) a process has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (f64, f64) = (f[11].parse()?, f[12].parse()?);
    Ok((utime + stime) / clock_ticks())
}

/// Resident memory of a process now, bytes.
pub fn resident(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}
