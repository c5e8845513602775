//! Real programs under `LD_PRELOAD`: a python3 script that builds and drops dictionaries, lists
//! and strings, `sort` of a generated file, and `awk` counting keys of the same file — each timed
//! (wall clock of the whole process) on glibc and under every preload library, interleaved,
//! medians of the repetitions.
//!
//! May touch: child processes, the scratch directory it is given (the generated input).

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

/// Times every program on every allocator `reps` times, interleaved; the medians in seconds per
/// program per allocator, and notes on what was left out.
pub fn run(preloads: &[Preload], reps: u32, dir: &Path) -> Result<(Value, Vec<String>), String> {
    let mut notes = Vec::new();
    let progs = programs(dir, &mut notes)?;
    let mut out = Map::new();
    for p in &progs {
        eprint!("program {}:", p.name);
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); preloads.len()];
        for rep in 0..reps as usize {
            for i in 0..preloads.len() {
                let k = (i + rep) % preloads.len();
                match time_one(p, &preloads[k]) {
                    Ok(t) => times[k].push(t),
                    Err(e) => notes.push(format!("{} on {}: {e}", p.name, preloads[k].name)),
                }
            }
            eprint!(" {}", rep + 1);
        }
        eprintln!();
        let row: Map<String, Value> = preloads
            .iter()
            .zip(times)
            .filter(|(_, t)| !t.is_empty())
            .map(|(pl, t)| (pl.name.clone(), json!(median(t))))
            .collect();
        out.insert(p.name.to_string(), Value::Object(row));
    }
    notes.dedup();
    Ok((Value::Object(out), notes))
}

fn time_one(p: &Program, preload: &Preload) -> Result<f64, String> {
    let mut cmd = Command::new(&p.exe);
    cmd.args(&p.args)
        .env("LC_ALL", "C")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match &preload.lib {
        Some(lib) => cmd.env("LD_PRELOAD", lib),
        None => cmd.env_remove("LD_PRELOAD"),
    };
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("cannot start {}: {e}", p.exe.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "failed ({}): {}",
            out.status,
            err.lines().last().unwrap_or("").trim()
        ));
    }
    Ok(seconds)
}
