//! The tracker as the program's global allocator: everything the test harness, std, threads and
//! the tracker's own machinery allocate goes through it. Ordinary work raises no report (at
//! run time or at exit), and a bug through the global allocator is still caught.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use allocscope_tracker::{ReportKind, Tracker};

#[global_allocator]
static ALLOC: Tracker = Tracker::new();

fn workload() -> usize {
    let mut total = 0;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut map: HashMap<String, Vec<u64>> = HashMap::new();
                let mut tree = BTreeMap::new();
                for i in 0..5_000u64 {
                    map.entry(format!("key-{}", i % 300))
                        .or_default()
                        .push(i * t);
                    tree.insert(i, vec![0u8; (i % 700) as usize]);
                    if i % 3 == 0 {
                        tree.remove(&(i / 2));
                    }
                }
                let shared = std::sync::Arc::new(map);
                let (tx, rx) = std::sync::mpsc::channel();
                let s = shared.clone();
                std::thread::spawn(move || tx.send(s.len()).unwrap())
                    .join()
                    .unwrap();
                rx.recv().unwrap() + tree.len()
            })
        })
        .collect();
    for t in threads {
        total += t.join().unwrap();
    }
    let mut s = String::new();
    for i in 0..10_000 {
        s.push_str(&i.to_string());
        s.shrink_to_fit();
    }
    total + s.len()
}

#[test]
fn ordinary_work_raises_no_report() {
    assert!(workload() > 0);
    assert_eq!(ALLOC.scan(), vec![], "no damaged red zones");
    for kind in ReportKind::ALL {
        assert_eq!(
            ALLOC.report_count(kind),
            0,
            "{kind} reported: {:#?}",
            ALLOC.take_reports()
        );
    }
    assert!(ALLOC.stats().live_blocks > 0);
}

#[test]
fn a_double_free_through_the_global_allocator_is_caught() {
    // In a child, so that the report does not show up in the other tests' counts.
    if std::env::var_os("ALLOCSCOPE_GLOBAL_CHILD").is_some() {
        free_twice();
        assert_eq!(ALLOC.report_count(ReportKind::DoubleFree), 1);
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_double_free_through_the_global_allocator_is_caught",
            "--exact",
            "--nocapture",
        ])
        .env("ALLOCSCOPE_GLOBAL_CHILD", "1")
        .env("ALLOCSCOPE_OPTIONS", "sample=1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("ERROR: allocscope: double-free"),
        "{stderr}"
    );
    // The frame that freed twice, by name: a function of its own, so that a release build,
    // which inlines the test's body into the harness's closure, still has it on the stack.
    assert!(stderr.contains("free_twice"), "{stderr}");
}

/// The bug: one block freed twice. Never inlined, so the report's stacks name it.
#[inline(never)]
fn free_twice() {
    let layout = Layout::from_size_align(24, 8).unwrap();
    // SAFETY: (test) the second free is the bug; the tracker ignores it.
    unsafe {
        let p = ALLOC.alloc(layout);
        ALLOC.dealloc(p, layout);
        ALLOC.dealloc(p, layout);
    }
}

/// The whole process under each option set: the workload, then exit (final scan and leak
/// check). Standard error must hold no report.
#[test]
fn exit_checks_find_nothing_in_a_clean_program() {
    if std::env::var_os("ALLOCSCOPE_GLOBAL_CHILD").is_some() {
        assert!(workload() > 0);
        return;
    }
    for options in [
        "",
        "canary=16,quarantine=1m,sample=1",
        "guard=1/10,sample=64k",
        "guard=all,guard_slots=4096,leak_check=unreachable",
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "exit_checks_find_nothing_in_a_clean_program",
                "--exact",
                "--nocapture",
            ])
            .env("ALLOCSCOPE_GLOBAL_CHILD", "1")
            .env("ALLOCSCOPE_OPTIONS", options)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "options `{options}`: {:?}\n{stderr}",
            out.status
        );
        assert!(
            !stderr.contains("ERROR: allocscope"),
            "options `{options}`:\n{stderr}"
        );
    }
}

#[test]
fn a_leak_is_reported_at_exit() {
    if std::env::var_os("ALLOCSCOPE_GLOBAL_CHILD").is_some() {
        leak_a_little();
        // Overwrite the dead stack area the leaking call used.
        std::hint::black_box([0u8; 4096]);
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["a_leak_is_reported_at_exit", "--exact", "--nocapture"])
        .env("ALLOCSCOPE_GLOBAL_CHILD", "1")
        .env("ALLOCSCOPE_OPTIONS", "sample=1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR: allocscope: memory-leak"),
        "{stderr}"
    );
    assert!(
        stderr.contains("leak of 777 byte(s) in 1 object(s)"),
        "{stderr}"
    );
    assert!(stderr.contains("leak_a_little"), "{stderr}");
}

#[inline(never)]
fn leak_a_little() {
    let block = vec![1u8; 777].into_boxed_slice();
    // Keep only a disguised copy of the address: nothing can reach the block.
    let hidden = Box::into_raw(block).cast::<u8>() as usize ^ usize::MAX;
    std::hint::black_box(hidden);
}

#[test]
fn bad_options_stop_the_program_with_one_clear_line() {
    if std::env::var_os("ALLOCSCOPE_GLOBAL_CHILD").is_some() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "bad_options_stop_the_program_with_one_clear_line",
            "--exact",
        ])
        .env("ALLOCSCOPE_GLOBAL_CHILD", "1")
        .env("ALLOCSCOPE_OPTIONS", "sample=often")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.starts_with("allocscope: ALLOCSCOPE_OPTIONS: allocscope option `sample=often`"),
        "{stderr}"
    );
}
