//! Real programs on liballocscope.so through LD_PRELOAD, their output compared with a run on
//! the system allocator: a C program that exercises the whole C ABI (threads, fork, every entry
//! point), a python3 workload, and common command-line tools on generated input.
//!
//! The library must be built first (`cargo build --release -p allocscope-preload`, which
//! `tests/run.sh` does); `ALLOCSCOPE_PRELOAD` may point at another build.

#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

// The test binary itself runs on allocscope too.
#[global_allocator]
static GLOBAL: allocscope::GlobalHeap = allocscope::GlobalHeap::new();

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn library() -> PathBuf {
    if let Some(p) = std::env::var_os("ALLOCSCOPE_PRELOAD") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    let lib = target.join("release").join("liballocscope.so");
    assert!(
        lib.exists(),
        "{} is missing: run `cargo build --release -p allocscope-preload` first (tests/run.sh does)",
        lib.display()
    );
    lib
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("allocscope-preload-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd` with and without the library; returns both outputs after checking that the
/// preloaded run loaded the library and succeeded.
fn both(mut make: impl FnMut() -> Command) -> (Output, Output) {
    let lib = library();
    let with = make()
        .env("LD_PRELOAD", &lib)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let without = make()
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&with.stderr);
    assert!(
        !stderr.contains("cannot be preloaded"),
        "the library did not load: {stderr}"
    );
    assert!(with.status.success(), "failed under allocscope: {stderr}");
    assert!(without.status.success(), "failed without allocscope");
    (with, without)
}

#[test]
fn the_c_abi_works_across_threads_and_fork() {
    let dir = scratch("abi");
    let exe = dir.join("abi");
    let src = workspace().join("tests/preload/abi.c");
    let status = Command::new("gcc")
        .args(["-O1", "-pthread", "-Wno-alloc-size-larger-than", "-o"])
        .arg(&exe)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("gcc runs");
    assert!(status.success());
    // Both libraries: the instrumented one's failures set errno as the release heap's do.
    let release = library();
    for lib in [
        release.clone(),
        release.with_file_name("liballocscope_debug.so"),
    ] {
        let out = Command::new(&exe)
            .env("LD_PRELOAD", &lib)
            .env("ALLOCSCOPE_OPTIONS", "leak_check=0")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "abi test failed under {}: {}{}",
            lib.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

#[test]
fn a_cxx_program_gives_the_same_output() {
    let dir = scratch("cxx");
    let exe = dir.join("cxx");
    let status = Command::new("g++")
        .args(["-O1", "-std=c++17", "-pthread", "-o"])
        .arg(&exe)
        .arg(workspace().join("tests/preload/cxx.cpp"))
        .status()
        .expect("g++ runs");
    assert!(status.success());
    let (with, without) = both(|| Command::new(&exe));
    assert!(!with.stdout.is_empty());
    assert_eq!(with.stdout, without.stdout);
}

/// A Rust program (rustc) under the instrumented library: Rust's runtime asks glibc for the
/// main thread's stack before `main`, with its lock held while glibc allocates.
#[test]
fn a_rust_program_runs_under_the_instrumented_library() {
    let lib = library().with_file_name("liballocscope_debug.so");
    let child = Command::new("rustc")
        .arg("--version")
        .env("LD_PRELOAD", &lib)
        .env("ALLOCSCOPE_OPTIONS", "leak_check=0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish_within(child, 120, "rustc --version", &lib);
    assert!(out.starts_with("rustc "), "{out}");
}

/// Compiles `tests/preload/NAME.c` with gcc (`-O1` and `flags`) into a scratch directory of
/// its own; the executable's path.
fn compile_c(name: &str, flags: &[&str]) -> PathBuf {
    let exe = scratch(name).join(name);
    let status = Command::new("gcc")
        .arg("-O1")
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(workspace().join(format!("tests/preload/{name}.c")))
        .status()
        .expect("gcc runs");
    assert!(status.success(), "gcc failed on {name}.c");
    exe
}

/// Waits for `child` (its stdout piped) at most `seconds`; returns its output after checking
/// that it succeeded. A hang (what the callers guard against) is turned into a failure, not a
/// stuck suite.
fn finish_within(mut child: std::process::Child, seconds: u64, what: &str, lib: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{what} hung under {}", lib.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{what} failed under {}", lib.display());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    out
}

/// Threads whose first allocation is glibc's, from inside pthread_getattr_np with the
/// thread's lock held (as in every thread the JVM starts), under the instrumented library:
/// the tracker reads the new thread's stack bounds then, and must not ask glibc for them.
#[test]
fn threads_that_first_allocate_inside_pthread_getattr_np_do_not_hang() {
    let lib = library().with_file_name("liballocscope_debug.so");
    let exe = compile_c("thread_stack", &["-pthread"]);
    let child = Command::new(&exe)
        .env("LD_PRELOAD", &lib)
        .env("ALLOCSCOPE_OPTIONS", "leak_check=0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(finish_within(child, 60, "thread_stack", &lib).trim(), "ok");
}

/// A child forked while other threads allocate finds every tracker lock free: the
/// instrumented library takes its locks before `fork` and releases them in both processes
/// after it (15 of 200 such children hung at default options before, 62 with a quarantine).
#[test]
fn children_forked_while_threads_allocate_do_not_hang() {
    let options = ["", "sample=1,quarantine=1m", "guard=all"];
    every_child_finishes("fork_threads", &options);
}

/// Runs C program `name` (which forks children and waits for each) under the instrumented
/// library with each of `options`; it must print "ok" within 300 s.
fn every_child_finishes(name: &str, options: &[&str]) {
    let lib = library().with_file_name("liballocscope_debug.so");
    let exe = compile_c(name, &["-pthread"]);
    for options in options {
        let child = Command::new(&exe)
            .env("LD_PRELOAD", &lib)
            .env("ALLOCSCOPE_OPTIONS", options)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let what = format!("{name} with ALLOCSCOPE_OPTIONS={options:?}");
        assert_eq!(
            finish_within(child, 300, &what, &lib).trim(),
            "ok",
            "{what}"
        );
    }
}

/// A child that raises a report finds the report machinery free although another thread of
/// the parent was reporting at the fork (the symbolizer's lock and the report log's are
/// taken before `fork` too): 132 of 200 such children hung before, 0 since.
#[test]
fn children_forked_while_threads_raise_reports_can_report() {
    every_child_finishes("fork_reports", &["print_reports=0", ""]);
}

/// The exit-time leak report of a program that closed standard error before (coreutils'
/// programs do) reaches the standard error it started with: it was written to the closed
/// descriptor and lost (`tr` leaking 64 bytes printed nothing).
#[test]
fn a_leak_report_outlives_a_closed_standard_error() {
    let lib = library().with_file_name("liballocscope_debug.so");
    let exe = compile_c("closed_stderr", &[]);
    let out = Command::new(&exe).env("LD_PRELOAD", &lib).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && out.stdout == b"ok\n", "{stderr}");
    assert!(
        stderr.contains("memory-leak: Direct leak of 345 byte(s) in 1 object(s)"),
        "{stderr}"
    );
}

/// A child forked from a multithreaded program judges the blocks of its own threads only:
/// another thread of the parent may hold its newest block where no memory of the child keeps
/// it (a register), and the child's exit-time check named such blocks leaks. The child's own
/// leak and the forking thread's still are reported, with and without sampled stacks.
#[test]
fn a_forked_childs_leak_check_leaves_the_parents_other_threads_out() {
    let lib = library().with_file_name("liballocscope_debug.so");
    let exe = compile_c("fork_leaks", &["-pthread"]);
    for options in ["", "sample=1"] {
        let out = Command::new(&exe)
            .env("LD_PRELOAD", &lib)
            .env("ALLOCSCOPE_OPTIONS", options)
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        let what = format!("fork_leaks with ALLOCSCOPE_OPTIONS={options:?}:\n{stderr}");
        assert!(out.status.success() && stdout == "child 0\nok\n", "{what}");
        let leaks: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("memory-leak: Direct leak of"))
            .collect();
        assert_eq!(leaks.len(), 2, "{what}");
        for size in ["222 byte(s)", "333 byte(s)"] {
            assert!(
                leaks.iter().any(|l| l.contains(size)),
                "{size} missing: {what}"
            );
        }
        assert!(
            stderr.contains("leaves out 111 byte(s) in 1 allocation(s) of the threads the parent"),
            "{what}"
        );
    }
}

/// `malloc` keeps C's 16-byte alignment under both libraries, with the instrumented one's
/// guard pages on every block and with red zones of sizes that are not multiples of 16 (the
/// debug library once asked the tracker for 8, and guarded or red-zoned blocks came out
/// 8-aligned: SSE code crashed on them).
#[test]
fn malloc_blocks_are_16_aligned_under_every_placement() {
    let exe = compile_c("malloc_align", &[]);
    let release = library();
    let debug = release.with_file_name("liballocscope_debug.so");
    let runs = [
        (&release, ""),
        (&debug, "leak_check=0"),
        (&debug, "leak_check=0,guard=all"),
        (&debug, "leak_check=0,canary=8"),
        (&debug, "leak_check=0,canary=24,quarantine=1m"),
        (&debug, "leak_check=0,guard=all,canary=4"),
    ];
    for (lib, options) in runs {
        let out = Command::new(&exe)
            .env("LD_PRELOAD", lib)
            .env("ALLOCSCOPE_OPTIONS", options)
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout == b"ok\n",
            "{} with ALLOCSCOPE_OPTIONS={options:?}: {:?}, {}{}",
            lib.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A Rust program that starts threads, traced: the tracker's own writer thread frees what
/// its start-up allocated, which must not be reported (it once was, as an invalid free), and
/// what it still holds at exit is no leak (it once was reported as one).
#[test]
fn a_traced_rust_program_with_threads_gets_no_false_invalid_free() {
    let dir = scratch("rust-threads");
    let src = dir.join("threads.rs");
    std::fs::write(
        &src,
        "fn main() { let h: Vec<_> = (0..4).map(|i| std::thread::spawn(move || vec![i; 100].len())).collect(); \
         println!(\"{}\", h.into_iter().map(|h| h.join().unwrap()).sum::<usize>()); }",
    )
    .unwrap();
    let exe = dir.join("threads");
    let status = Command::new("rustc")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .status()
        .unwrap();
    assert!(status.success());
    let trace = dir.join("threads.trace");
    let out = Command::new(&exe)
        .env(
            "LD_PRELOAD",
            library().with_file_name("liballocscope_debug.so"),
        )
        // Leak checking on: the still-running writer thread's glibc TLS-destructor node is
        // the tracker's, not a leak (it once was reported).
        .env("ALLOCSCOPE_OPTIONS", format!("trace={}", trace.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "400");
    assert!(
        !stderr.contains("ERROR: allocscope"),
        "false report: {stderr}"
    );
    assert!(std::fs::metadata(&trace).unwrap().len() > 0);
}

/// Runs `command` under the instrumented library with a trace to `trace` (no leak check).
fn traced(command: &mut Command, trace: &Path) -> Output {
    command
        .env(
            "LD_PRELOAD",
            library().with_file_name("liballocscope_debug.so"),
        )
        .env(
            "ALLOCSCOPE_OPTIONS",
            format!("trace={},leak_check=0", trace.display()),
        )
        .output()
        .unwrap()
}

/// A traced program that ends with `_exit` (no exit hook runs) leaves its whole trace: the
/// library's `_exit` and `exec*` end the trace first (it held only the header before). A
/// `vfork` child's `exec` and `_exit` run in its parent's memory and must leave the parent's
/// trace running: the allocations after the child are in it too, and its end marker.
#[test]
fn traces_survive_exit_without_hooks_and_vfork_children() {
    let exe = compile_c("exit_paths", &[]);
    let dir = scratch("exit_paths_traces");
    for (mode, allocations) in [("_exit", 1000), ("vfork", 1000)] {
        let trace = dir.join(format!("{mode}.trace"));
        let out = traced(Command::new(&exe).arg(mode), &trace);
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let TraceSummary { count, execd, .. } = trace_allocations(&trace);
        assert!(!execd, "{mode}: no exec");
        assert_eq!(
            count.get(&100),
            Some(&allocations),
            "{mode}: allocations of 100 bytes in the trace"
        );
    }
}

/// What [`trace_allocations`] read of a trace.
struct TraceSummary {
    /// Allocations by size.
    count: std::collections::BTreeMap<u64, usize>,
    /// The start record's process id.
    pid: Option<u32>,
    /// Whether the trace says its program was replaced by an `exec` (an exec marker before the
    /// end marker).
    execd: bool,
}

/// The allocations in the trace at `path`, counted by size, its process id and whether it
/// ended in an exec; asserts that the trace has one end marker, its last record.
fn trace_allocations(path: &Path) -> TraceSummary {
    use allocscope_tracker::trace_format::{read_trace_file, Event, Record};
    let read = read_trace_file(path).unwrap();
    let mut count = std::collections::BTreeMap::<u64, usize>::new();
    for record in &read.records {
        if let Record::Batch(b) = record {
            for e in &b.events {
                if let Event::Alloc { size, .. } = e {
                    *count.entry(*size).or_default() += 1;
                }
            }
        }
    }
    let ends = read
        .records
        .iter()
        .filter(|r| matches!(r, Record::End(_)))
        .count();
    assert!(
        ends == 1 && matches!(read.records.last(), Some(Record::End(_))),
        "{}: one end marker, last ({ends} found)",
        path.display()
    );
    let pid = read.records.iter().find_map(|r| match r {
        Record::Start(s) => Some(s.pid),
        _ => None,
    });
    let execd = read.records.iter().any(|r| matches!(r, Record::Exec(_)));
    TraceSummary { count, pid, execd }
}

/// An `exec` that fails returns to the program, whose trace goes on: the library's `exec*` end
/// the trace before libc's exec and used to leave it ended, so the rest of the program was
/// missing and the trace said it had shut down. An exec that succeeds replaces the program in
/// the same process, whose new tracker used to truncate the trace its predecessor left at the
/// same path; it writes `<path>.<pid>` beside it now, and a third program `<path>.<pid>.3`;
/// a process either starts finds the first trace's path taken, as if the first still ran.
#[test]
fn a_failed_exec_leaves_the_trace_going_and_an_exec_in_place_keeps_both_traces() {
    let exe = compile_c("exit_paths", &[]);
    let dir = scratch("exec_traces");

    let trace = dir.join("fails.trace");
    let out = traced(Command::new(&exe).arg("exec-fails"), &trace);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let TraceSummary { count, execd, .. } = trace_allocations(&trace);
    assert!(
        !execd,
        "the failed exec's marker is taken back with the end marker"
    );
    assert_eq!(
        count.get(&100),
        Some(&1000),
        "100-byte allocations: {count:?}"
    );
    assert_eq!(
        count.get(&4242),
        Some(&1),
        "the block after the failed exec: {count:?}"
    );

    let trace = dir.join("exec.trace");
    let out = traced(Command::new(&exe).arg("exec"), &trace);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let TraceSummary {
        count: first,
        pid: first_pid,
        execd,
    } = trace_allocations(&trace);
    assert!(execd, "the first program's trace ends in its exec");
    assert_eq!(
        first.get(&100),
        Some(&500),
        "the first program's trace: {first:?}"
    );
    let pid = first_pid.expect("a start record");
    for (n, name) in [
        (1, format!("exec.trace.{pid}")),
        (2, format!("exec.trace.{pid}.3")),
    ] {
        let TraceSummary {
            count,
            pid: image_pid,
            execd,
        } = trace_allocations(&dir.join(&name));
        // The second program exec'd the third; the third exits.
        assert_eq!(execd, n == 1, "{name}: ended by an exec");
        assert_eq!(
            image_pid,
            Some(pid),
            "{name}: the exec'd program is the same process"
        );
        assert_eq!(count.get(&(200 + n)), Some(&300), "{name}: {count:?}");
        assert_eq!(
            count.len(),
            1,
            "{name}: that program's blocks alone: {count:?}"
        );
    }
    // The program the third one started wrote a trace of its own beside them.
    let started = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("exec.trace.")
                && name != format!("exec.trace.{pid}")
                && name != format!("exec.trace.{pid}.3")
        })
        .collect::<Vec<_>>();
    assert_eq!(started.len(), 1, "{started:?}");
    let TraceSummary { count, execd, .. } = trace_allocations(&started[0]);
    assert!(!execd);
    assert_eq!(count.get(&999), Some(&7), "{count:?}");
}

/// A traced shell pipeline: the shell forks, and its children exec programs that inherit the
/// same options. The shell keeps its trace whole (an exec'd child used to truncate it, leaving a
/// trace without its header), and each exec'd child writes its own `<path>.<pid>`.
#[test]
fn a_traced_pipeline_keeps_every_trace_whole() {
    let dir = scratch("pipeline");
    let trace = dir.join("sh.trace");
    let out = traced(
        Command::new("sh")
            .arg("-c")
            .arg("printf 'b\\na\\n' | sort; (true); echo done"),
        &trace,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\ndone\n");
    let header = |path: &Path| {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"ALSCTRAC"),
            "{} has no trace header ({} bytes)",
            path.display(),
            bytes.len()
        );
    };
    header(&trace);
    let children: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("sh.trace."))
        })
        .collect();
    assert!(!children.is_empty(), "sort wrote no trace of its own");
    for child in &children {
        header(child);
    }
}

/// Detached threads ending while others allocate, traced with the smallest data queue (every
/// event its own batch, two batches queued): glibc frees the TLS blocks of cached stacks from an
/// exiting thread after its thread-locals are gone, and those frees' events went through
/// crossbeam's channel, whose send (and wake-up of the writer) asks std for the thread's
/// `thread::current`, which panics that late: an abort inside `free`.
#[test]
fn frees_after_a_threads_locals_are_gone_keep_a_traced_program_alive() {
    use allocscope_tracker::trace_format::{read_trace_file, Record};
    let exe = compile_c("thread_exit_churn", &["-pthread"]);
    let dir = scratch("thread_exit_traces");
    for round in 0..2 {
        let trace = dir.join(format!("churn{round}.trace"));
        let out = Command::new(&exe)
            .env(
                "LD_PRELOAD",
                library().with_file_name("liballocscope_debug.so"),
            )
            .env(
                "ALLOCSCOPE_OPTIONS",
                format!(
                    "trace={},leak_check=0,batch=1,stream_buffer=1",
                    trace.display()
                ),
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "round {round}: {:?}: {stderr}",
            out.status
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
        let read = read_trace_file(&trace).unwrap();
        assert!(
            matches!(read.records.last(), Some(Record::End(_))),
            "round {round}: the trace has its end marker"
        );
    }
}

/// SIGSEGV and SIGBUS sent to a program (`raise`, `kill`) end it under the instrumented library
/// as they do without it. The library's fault handler put the previous action back and
/// returned, which suits a fault (the access runs again and faults) but let a sent signal's
/// program run on: `kill -SEGV` ended a shell with status 0.
#[test]
fn sent_segv_and_bus_signals_end_the_program_as_without_the_library() {
    use std::os::unix::process::ExitStatusExt;
    let exe = compile_c("sent_signals", &[]);
    for mode in ["raise-segv", "raise-bus", "kill-segv", "ignored-segv"] {
        let run = |preload: bool| {
            let mut command = Command::new(&exe);
            command.arg(mode).env("ALLOCSCOPE_OPTIONS", "leak_check=0");
            if preload {
                command.env(
                    "LD_PRELOAD",
                    library().with_file_name("liballocscope_debug.so"),
                );
            }
            command.stdin(Stdio::null()).output().unwrap()
        };
        let (with, without) = (run(true), run(false));
        assert_eq!(
            (with.status.signal(), with.status.code()),
            (without.status.signal(), without.status.code()),
            "{mode}: {}",
            String::from_utf8_lossy(&with.stderr)
        );
        assert_eq!(with.stdout, without.stdout, "{mode}");
    }
}

const PYTHON_WORKLOAD: &str = r#"
import json, random, re, threading, collections
random.seed(7)
d = {str(i): [random.random() for _ in range(i % 9)] for i in range(60000)}
text = json.dumps(d, sort_keys=True)
back = json.loads(text)
words = collections.Counter(re.findall(r"\d+", text[:400000]))
big = [bytes(random.getrandbits(8) for _ in range(n)) for n in range(0, 30000, 97)]
results = []
def work(k):
    s = sorted(random.Random(k).random() for _ in range(20000))
    results.append((k, round(sum(s), 6)))
ts = [threading.Thread(target=work, args=(k,)) for k in range(8)]
[t.start() for t in ts]; [t.join() for t in ts]
print(len(text), sum(len(v) for v in back.values()), words.most_common(3))
print(sum(len(b) for b in big), sorted(results))
"#;

#[test]
fn a_python_workload_gives_the_same_output() {
    let (with, without) = both(|| {
        let mut c = Command::new("python3");
        c.args(["-c", PYTHON_WORKLOAD]);
        c
    });
    assert!(!with.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&with.stdout),
        String::from_utf8_lossy(&without.stdout)
    );
}

/// A file of `lines` lines "word number word" from a fixed-seed generator.
fn generate(path: &Path, lines: usize) {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "allocscope",
        "heap",
        "page",
        "block",
    ];
    let mut out = String::with_capacity(lines * 32);
    for _ in 0..lines {
        let w = words[(next() % 8) as usize];
        out.push_str(&format!(
            "{w}{} {} {}\n",
            next() % 1000,
            next() % 100_000,
            w
        ));
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn command_line_tools_give_the_same_output() {
    let dir = scratch("tools");
    let input = dir.join("input.txt");
    generate(&input, 200_000);
    let input = input.to_str().unwrap().to_owned();
    let pipelines = [
        format!("sort {input}"),
        format!("sort -n -k2 {input} | head -1000"),
        format!("sort {input} | uniq -c | sort -rn | head -50"),
        format!("awk '{{s[$3]+=$2}} END {{for (k in s) print k, s[k]}}' {input} | sort"),
        format!("gzip -c {input} | gunzip -c | md5sum"),
        format!("grep -c heap {input}"),
        format!("sed 's/a/A/g' {input} | tr 'a-z' 'A-Z' | md5sum"),
        format!("cut -d' ' -f1 {input} | sort -u | wc -l"),
    ];
    for p in &pipelines {
        let (with, without) = both(|| {
            let mut c = Command::new("bash");
            c.args(["-c", p]);
            c
        });
        assert!(!with.stdout.is_empty(), "{p}: no output");
        assert_eq!(with.stdout, without.stdout, "{p}: outputs differ");
    }
}
