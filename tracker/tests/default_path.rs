//! The default options' short paths (`allocate_fast` / `deallocate_fast`): every double free,
//! invalid free and layout mismatch must still be caught there, the bad call ignored and the
//! figures kept right. The corruption suite records every stack (`sample=1`), which takes the
//! general paths; these tests keep the default sampling and guard rate.

use std::alloc::{GlobalAlloc, Layout};

use allocscope_core::Allocscope;
use allocscope_tracker::{LeakCheck, Options, ReportKind, Tracker};

/// The default options, quiet: nothing printed, no leak check, nothing at exit.
fn tracker() -> Tracker<Allocscope> {
    let quiet = Options::builder().print_reports(false).check_at_exit(false);
    Tracker::with_options(
        Allocscope::new(),
        quiet.leak_check(LeakCheck::Off).build().unwrap(),
    )
}

/// The kinds of report raised so far, with how many of each.
fn counts(t: &Tracker<Allocscope>) -> Vec<(ReportKind, u64)> {
    ReportKind::ALL
        .iter()
        .map(|&k| (k, t.report_count(k)))
        .filter(|&(_, n)| n != 0)
        .collect()
}

fn kinds(t: &Tracker<Allocscope>) -> Vec<ReportKind> {
    t.take_reports().into_iter().map(|r| r.kind).collect()
}

#[test]
fn every_second_free_is_caught_on_the_default_path() {
    let t = tracker();
    let mut doubles = 0;
    for i in 0..2000usize {
        let l = Layout::from_size_align(8 + (i * 37) % 500, 8 << (i % 2)).unwrap();
        // SAFETY: (test) the second free is the bug; the tracker ignores it.
        unsafe {
            let p = t.alloc(l);
            assert!(!p.is_null());
            p.write(1);
            t.dealloc(p, l);
            if i % 3 == 0 {
                t.dealloc(p, l);
                doubles += 1;
            } else if i % 3 == 1 {
                // C's free, with no layout.
                t.deallocate(p, None);
                doubles += 1;
            }
        }
    }
    // Counted, not taken: the report log keeps the latest 1024 only.
    assert_eq!(counts(&t), vec![(ReportKind::DoubleFree, doubles as u64)]);
    assert_eq!(t.stats().live_blocks, 0);
}

#[test]
fn invalid_frees_are_caught_on_the_default_path() {
    let t = tracker();
    let l = Layout::from_size_align(100, 8).unwrap();
    let mut on_stack = 0u64;
    // SAFETY: (test) interior and foreign pointers are the bugs; they are ignored, and the
    // blocks stay live until freed properly.
    unsafe {
        let blocks: Vec<*mut u8> = (0..64).map(|_| t.alloc(l)).collect();
        for &p in &blocks {
            t.dealloc(p.add(8), Layout::from_size_align(92, 8).unwrap());
            t.deallocate(p.add(16), None);
        }
        t.deallocate((&mut on_stack as *mut u64).cast(), None);
        let found = kinds(&t);
        assert_eq!(found.len(), 2 * blocks.len() + 1, "{found:?}");
        assert!(
            found.iter().all(|k| *k == ReportKind::InvalidFree),
            "{found:?}"
        );
        assert_eq!(t.stats().live_blocks, blocks.len());
        for &p in &blocks {
            t.dealloc(p, l);
        }
    }
    assert!(t.take_reports().is_empty());
    assert_eq!(t.stats().live_blocks, 0);
}

#[test]
fn layout_mismatches_are_caught_on_the_default_path_and_the_block_freed() {
    let t = tracker();
    let cases = [
        ((48, 16), (40, 8)), // both
        ((48, 8), (56, 8)),  // size only, same size class
        ((48, 8), (48, 16)), // alignment only
        ((0, 8), (1, 8)),    // a zero-size allocation
        ((5000, 8), (5000, 4096)),
    ];
    for _ in 0..50 {
        for &((size, align), (given_size, given_align)) in &cases {
            // SAFETY: (test) the wrong layout is the bug; the block is freed all the same.
            unsafe {
                let p = t.alloc(Layout::from_size_align(size, align).unwrap());
                assert!(!p.is_null());
                t.dealloc(p, Layout::from_size_align(given_size, given_align).unwrap());
            }
        }
        // An alignment that is no power of two (only the inherent API can give one).
        // SAFETY: as above.
        unsafe {
            let p = t.alloc(Layout::from_size_align(48, 8).unwrap());
            t.deallocate(p, Some((48, 24)));
        }
    }
    let found = kinds(&t);
    assert_eq!(found.len(), 50 * (cases.len() + 1), "{found:?}");
    assert!(
        found.iter().all(|k| *k == ReportKind::AllocDeallocMismatch),
        "{found:?}"
    );
    assert_eq!(
        t.stats().live_blocks,
        0,
        "every block was freed all the same"
    );
    // A right layout is no mismatch, and a second free of a block freed with a wrong one is
    // a double free.
    // SAFETY: (test) the last free is the bug.
    unsafe {
        let l = Layout::from_size_align(48, 16).unwrap();
        let p = t.alloc(l);
        t.dealloc(p, l);
        assert!(t.take_reports().is_empty());
        let p = t.alloc(l);
        t.dealloc(p, Layout::from_size_align(40, 8).unwrap());
        t.dealloc(p, l);
    }
    assert_eq!(
        kinds(&t),
        vec![ReportKind::AllocDeallocMismatch, ReportKind::DoubleFree]
    );
}

#[test]
fn blocks_freed_by_another_thread_are_told_apart() {
    // A block freed by a thread that did not allocate it takes the general path; its second
    // free, on either thread, is caught.
    let t = std::sync::Arc::new(tracker());
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: (test) allocated here, freed on the other thread, then again here (the bug).
    let ptrs: Vec<usize> = (0..100).map(|_| unsafe { t.alloc(l) } as usize).collect();
    let t2 = t.clone();
    let sent = ptrs.clone();
    std::thread::spawn(move || {
        for p in sent {
            // SAFETY: live blocks handed over to this thread.
            unsafe { t2.dealloc(p as *mut u8, l) };
        }
    })
    .join()
    .unwrap();
    assert!(t.take_reports().is_empty());
    for &p in &ptrs {
        // SAFETY: (test) the second free is the bug.
        unsafe { t.dealloc(p as *mut u8, l) };
    }
    let found = kinds(&t);
    assert_eq!(found.len(), ptrs.len(), "{found:?}");
    assert!(
        found.iter().all(|k| *k == ReportKind::DoubleFree),
        "{found:?}"
    );
    assert_eq!(t.stats().live_blocks, 0);
}

/// The default path's allocation takes the core heap's fast path inline and everything else
/// (a page's free list run dry, a zeroed block) out of line: blocks from each are recorded
/// alike (their double frees caught), and zeroed ones are zero even where freed blocks were
/// dirty.
#[test]
fn zeroed_blocks_and_blocks_past_a_refill_are_recorded_alike() {
    let t = tracker();
    let l = Layout::from_size_align(48, 8).unwrap();
    // More blocks of one class than a page holds: several refills of the free list.
    let mut blocks = Vec::new();
    for i in 0..5000usize {
        // SAFETY: (test) every block is freed below.
        let p = unsafe { t.alloc(l) };
        assert!(!p.is_null());
        // SAFETY: 48 bytes of a live block.
        unsafe { p.write_bytes(0xa5, 48) };
        if i % 2 == 0 {
            blocks.push(p);
        } else {
            // SAFETY: (test) freed once here.
            unsafe { t.dealloc(p, l) };
        }
    }
    for _ in 0..2500 {
        // SAFETY: (test) freed below.
        let p = unsafe { t.alloc_zeroed(l) };
        assert!(!p.is_null());
        // SAFETY: 48 bytes of a live block.
        let bytes = unsafe { std::slice::from_raw_parts(p, 48) };
        assert!(bytes.iter().all(|&b| b == 0), "a zeroed block: {bytes:?}");
        blocks.push(p);
    }
    assert_eq!(t.stats().live_blocks, 5000);
    for &p in &blocks {
        // SAFETY: (test) the second free is the bug; the tracker ignores it.
        unsafe {
            t.dealloc(p, l);
            t.dealloc(p, l);
        }
    }
    assert_eq!(counts(&t), vec![(ReportKind::DoubleFree, 5000)]);
    assert_eq!(t.stats().live_blocks, 0);
}

/// `realloc(p, n)` for `n` within 16 bytes of `usize::MAX` fails and keeps `p`, as glibc's
/// (ENOMEM): the resize in place compared `n` plus the shadow header with the largest medium
/// class, which wrapped, and handed back a 0-byte block for a `p` it had freed.
#[test]
fn a_resize_to_nearly_the_whole_address_space_fails_and_keeps_the_block() {
    for options in ["", "sample=1"] {
        let quiet = Options::builder().print_reports(false).check_at_exit(false);
        let t = Tracker::with_options(
            Allocscope::new(),
            quiet
                .parse(options)
                .unwrap()
                .leak_check(LeakCheck::Off)
                .build()
                .unwrap(),
        );
        let l = Layout::from_size_align(100, 16).unwrap();
        for k in 0..20 {
            // SAFETY: (test) the block is freed below, once.
            unsafe {
                let p = t.alloc(l);
                p.write_bytes(0x5a, 100);
                let q = t.reallocate(p, None, usize::MAX - k, 16);
                assert!(
                    q.is_null(),
                    "{options}: realloc to usize::MAX - {k} gave {q:?}"
                );
                let bytes = std::slice::from_raw_parts(p, 100);
                assert!(
                    bytes.iter().all(|&b| b == 0x5a),
                    "{options}: the block kept"
                );
                assert_eq!(t.stats().live_blocks, 1, "{options}");
                t.dealloc(p, l);
            }
        }
        assert_eq!(counts(&t), vec![], "{options}: no report");
        assert_eq!(t.stats().live_blocks, 0, "{options}");
    }
}
