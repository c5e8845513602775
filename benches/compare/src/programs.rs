//! Real programs under `LD_PRELOAD`: a python3 script that builds and drops dictionaries, lists
//! and strings, `sort` of a generated file, and `awk` counting keys of the same file — each timed
//! (wall clock of the whole process) on glibc and under every preload library, with its peak RSS
//! (`ru_maxrss` from `wait4`), interleaved, medians of the repetitions.
//!
//! Peak RSS: the kernel starts a process's `ru_maxrss` at exec from the memory it had just
//! before, so a child started with `vfork` (what `posix_spawn` does) inherits this program's
//! *peak*; a child started with `fork` inherits only this program's *current* RSS, a few MiB,
//! which `base_rss_kib` records as the floor under every figure. Programs are therefore started
//! with `fork` (a `pre_exec` hook makes `std` use it) and reaped with `wait4`.
//!
//! May touch: child processes, the scratch directory it is given (the generated input).

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::preload::Preload;
use crate::report::median;
use crate::rng::Rng;

/// The python3 workload: an allocation-heavy mix of dicts, lists, strings and tuples.
const PYTHON: &str = "
d = {}
for r in range(4):
    for i in range(60000):
        d[('k%d' % i, i)] = [str(i) * (i % 7 + 1), i, (i, r)]
    s = sorted(d, key=lambda k: k[1] % 1000)
    d = {k: v for k, v in d.items() if k[1] % 3}
print(len(d), len(s))
";

/// One program to time.
struct Program {
    name: &'static str,
    exe: PathBuf,
    args: Vec<String>,
}

/// Lines of the generated input for `sort` and `awk`.
const LINES: usize = 300_000;

/// Writes the input file (random words and numbers) and lists the programs found on this machine.
fn programs(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<Program>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let input = dir.join("lines.txt");
    let mut text = String::with_capacity(LINES * 32);
    let mut rng = Rng::new(7);
    for _ in 0..LINES {
        let key = rng.below(50_000);
        let word: String = (0..rng.between(4, 20))
            .map(|_| (b'a' + rng.below(26) as u8) as char)
            .collect();
        text.push_str(&format!("k{key} {word} {}\n", rng.next_u64()));
    }
    std::fs::write(&input, text).map_err(|e| format!("cannot write {}: {e}", input.display()))?;
    let input = input.to_string_lossy().to_string();
    let mut all = Vec::new();
    let mut add = |name: &'static str, exe: &str, args: Vec<String>| {
        if Path::new(exe).exists() {
            all.push(Program {
                name,
                exe: exe.into(),
                args,
            });
        } else {
            notes.push(format!("{name}: skipped, {exe} not found"));
        }
    };
    add(
        "python3",
        "/usr/bin/python3",
        vec!["-c".into(), PYTHON.into()],
    );
    add(
        "sort",
        "/usr/bin/sort",
        vec!["-o".into(), "/dev/null".into(), input.clone()],
    );
    add(
        "awk",
        "/usr/bin/awk",
        vec![
            "{c[$1]++; w[$2]=$3} END {print length(c), length(w)}".into(),
            input,
        ],
    );
    Ok(all)
}

/// One run of a program.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Measured {
    /// Wall time from start to reaping, seconds.
    seconds: f64,
    /// The program's `ru_maxrss`, KiB.
    peak_rss_kib: f64,
    /// This process's RSS when it forked the program: the floor under `peak_rss_kib`, KiB.
    base_rss_kib: f64,
}

/// Times every program on every allocator `reps` times, interleaved. Per program per allocator,
/// the medians of `seconds`, `peak_rss_kib` and `base_rss_kib`; and notes on what was left out.
pub fn run(preloads: &[Preload], reps: u32, dir: &Path) -> Result<(Value, Vec<String>), String> {
    let mut notes = Vec::new();
    let progs = programs(dir, &mut notes)?;
    let mut out = Map::new();
    for p in &progs {
        eprint!("program {}:", p.name);
        let mut got: Vec<Vec<Measured>> = vec![Vec::new(); preloads.len()];
        for rep in 0..reps as usize {
            for i in 0..preloads.len() {
                let k = (i + rep) % preloads.len();
                match run_one(p, &preloads[k]) {
                    Ok(m) => got[k].push(m),
                    Err(e) => notes.push(format!("{} on {}: {e}", p.name, preloads[k].name)),
                }
            }
            eprint!(" {}", rep + 1);
        }
        eprintln!();
        let row: Map<String, Value> = preloads
            .iter()
            .zip(got)
            .filter(|(_, m)| !m.is_empty())
            .map(|(pl, m)| {
                let med = |f: fn(&Measured) -> f64| median(m.iter().map(f).collect());
                let v = json!({
                    "seconds": med(|m| m.seconds),
                    "peak_rss_kib": med(|m| m.peak_rss_kib),
                    "base_rss_kib": med(|m| m.base_rss_kib),
                    "runs": m.len(),
                });
                (pl.name.clone(), v)
            })
            .collect();
        out.insert(p.name.to_string(), Value::Object(row));
    }
    notes.dedup();
    Ok((Value::Object(out), notes))
}

fn run_one(p: &Program, preload: &Preload) -> Result<Measured, String> {
    let mut cmd = Command::new(&p.exe);
    cmd.args(&p.args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match &preload.lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    // SAFETY: the hook runs in the forked child before exec and does nothing at all, so it
    // calls nothing that is not async-signal-safe. Its only purpose is that std then starts the
    // child with fork instead of vfork/posix_spawn (see the module comment: peak RSS).
    unsafe {
        cmd.pre_exec(|| Ok(()));
    }
    let base_rss_kib = crate::child::proc_status_kib("VmRSS") as f64;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", p.exe.display()))?;
    let mut err = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        // Read to the end first: a child blocked on a full pipe would never exit.
        let _ = pipe.read_to_string(&mut err);
    }
    let (status, rusage) = wait4(child.id())?;
    let seconds = start.elapsed().as_secs_f64();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let status = std::process::ExitStatus::from_raw(status);
        return Err(crate::child::failure(p.name, status, err.as_bytes()));
    }
    Ok(Measured {
        seconds,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: rusage.ru_maxrss as f64,
        base_rss_kib,
    })
}

/// Reaps child `pid` with `wait4`: its wait status and resource usage.
fn wait4(pid: u32) -> Result<(i32, libc::rusage), String> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    let mut status = 0;
    // SAFETY: rusage is plain old data for which all-zero bytes are a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid, exclusively borrowed out-parameters for the
        // duration of the call; `pid` is our own child, not yet reaped (std's Child is never
        // waited on).
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4 on the child failed: {e}"));
        }
    }
}
