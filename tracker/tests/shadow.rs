//! The shadow map (`tracker/src/shadow.rs`): the default path's blocks over the core heap are
//! recorded in a word per 16-byte granule beside the heap rather than in the table. What the
//! table gave must still hold: leaks found, resizes kept, another tracker's blocks not taken
//! for ours, the figures right — and `shadow=0` keeps every block in the table with the same
//! reports.

use std::alloc::{GlobalAlloc, Layout};

use allocscope_core::Allocscope;
use allocscope_tracker::{LeakCheck, Options, ReportKind, Tracker};

fn tracker(shadow: bool, leaks: LeakCheck) -> Tracker<Allocscope> {
    let options = Options::builder()
        .print_reports(false)
        .check_at_exit(false)
        .leak_check(leaks)
        .shadow(shadow)
        .build()
        .unwrap();
    Tracker::with_options(Allocscope::new(), options)
}

/// A thread's first calls take the general path (its id and counter slot are set up there):
/// after these, its blocks are the default path's.
fn warm_up(t: &Tracker<Allocscope>) {
    let l = Layout::from_size_align(16, 8).unwrap();
    for _ in 0..4 {
        // SAFETY: allocated and freed at once.
        unsafe {
            let w = t.alloc(l);
            t.dealloc(w, l);
        }
    }
}

/// Bytes the leak check finds leaked now.
fn leaked_bytes(t: &Tracker<Allocscope>) -> usize {
    t.check_leaks()
        .iter()
        .filter(|r| r.kind == ReportKind::MemoryLeak)
        .filter_map(|r| r.leaked.map(|(_, bytes)| bytes))
        .sum()
}

fn kinds(t: &Tracker<Allocscope>) -> Vec<ReportKind> {
    t.take_reports().into_iter().map(|r| r.kind).collect()
}

#[test]
fn live_blocks_are_found_by_the_leak_check_with_their_sizes() {
    for shadow in [true, false] {
        let t = tracker(shadow, LeakCheck::All);
        warm_up(&t);
        let sizes = [1usize, 24, 100, 4000, 70_000];
        let ptrs: Vec<(*mut u8, Layout)> = sizes
            .iter()
            .map(|&s| {
                let l = Layout::from_size_align(s, 8).unwrap();
                // SAFETY: (test) a valid layout; the block is checked as a leak, then freed.
                (unsafe { t.alloc(l) }, l)
            })
            .collect();
        let leaked = leaked_bytes(&t);
        let total: usize = sizes.iter().sum();
        assert!(leaked >= total, "shadow={shadow}: {leaked} of {total}");
        for (p, l) in ptrs {
            // SAFETY: live blocks of this tracker.
            unsafe { t.dealloc(p, l) };
        }
        let after = leaked_bytes(&t);
        assert!(after < total, "shadow={shadow}: {after} still leaked");
        assert_eq!(t.stats().live_blocks, 0);
    }
}

#[test]
fn resizes_keep_the_contents_and_the_figures() {
    // Neither sampled nor guarded: every block here below 32 KiB is a shadow block, resized
    // in place by the core heap; larger ones move to the table (past the medium classes the
    // core makes a large block, outside the arenas) and come back below them.
    let options = quiet("sample=0,guard=0").leak_check(LeakCheck::Off);
    let t = Tracker::with_options(Allocscope::new(), options.build().unwrap());
    let mut l = Layout::from_size_align(16, 8).unwrap();
    // SAFETY: (test) each pointer is used only until the resize that replaces it.
    unsafe {
        warm_up(&t);
        let mut p = t.alloc(l);
        for i in 0..16u8 {
            p.add(i as usize).write(i);
        }
        for new_size in [40usize, 300, 5000, 65_000, 100_000, 24, 3000, 70_000, 3000] {
            let q = t.realloc(p, l, new_size);
            assert!(!q.is_null());
            for i in 0..16u8 {
                assert_eq!(q.add(i as usize).read(), i);
            }
            assert_eq!(t.usable_size(q), new_size);
            l = Layout::from_size_align(new_size, 8).unwrap();
            p = q;
        }
        assert_eq!(t.stats().live_blocks, 1);
        assert_eq!(t.stats().live_bytes, 3000);
        // The old layout after the last resize is a mismatch.
        t.dealloc(p, Layout::from_size_align(24, 8).unwrap());
    }
    assert_eq!(kinds(&t), vec![ReportKind::AllocDeallocMismatch]);
    assert_eq!(t.stats().live_blocks, 0);
}

#[test]
fn another_trackers_block_is_an_invalid_free_and_stays_live() {
    let a = tracker(true, LeakCheck::Off);
    let b = tracker(true, LeakCheck::Off);
    warm_up(&a);
    let l = Layout::from_size_align(48, 8).unwrap();
    // SAFETY: (test) freeing `a`'s block through `b` is the bug; `b` ignores it.
    unsafe {
        let p = a.alloc(l);
        p.write_bytes(7, 48);
        b.dealloc(p, l);
        assert_eq!(kinds(&b), vec![ReportKind::InvalidFree]);
        assert_eq!(a.usable_size(p), 48);
        assert_eq!(b.usable_size(p), 0);
        a.dealloc(p, l);
    }
    assert!(kinds(&a).is_empty());
    assert_eq!(a.stats().live_blocks, 0);
}

#[test]
fn the_table_alone_reports_the_same_bad_frees() {
    for shadow in [true, false] {
        let t = tracker(shadow, LeakCheck::Off);
        warm_up(&t);
        let l = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: (test) the interior free, the wrong layout and the double free are the bugs.
        unsafe {
            let p = t.alloc(l);
            t.deallocate(p.add(16), None);
            t.dealloc(p, Layout::from_size_align(101, 8).unwrap());
            t.dealloc(p, l);
        }
        assert_eq!(
            kinds(&t),
            vec![
                ReportKind::InvalidFree,
                ReportKind::AllocDeallocMismatch,
                ReportKind::DoubleFree
            ],
            "shadow={shadow}"
        );
        assert_eq!(t.stats().live_blocks, 0);
    }
}

/// A block freed by a thread that does not own its segment takes the general path's
/// compare-and-swap; a second free, by the owner, then finds the freed byte: a double free,
/// reported and not done (the heap stays sound: the block's memory is handed out once more
/// only after the one real free).
#[test]
fn a_free_from_another_thread_then_by_the_owner_is_a_double_free() {
    let t = tracker(true, LeakCheck::Off);
    warm_up(&t);
    let l = Layout::from_size_align(64, 8).unwrap();
    // SAFETY: (test) the second free is the bug the tracker must catch and ignore.
    unsafe {
        let p = t.alloc(l) as usize;
        std::thread::scope(|s| {
            s.spawn(|| {
                warm_up(&t);
                t.dealloc(p as *mut u8, l);
            });
        });
        assert_eq!(t.stats().live_blocks, 0);
        t.dealloc(p as *mut u8, l);
    }
    assert_eq!(kinds(&t), vec![ReportKind::DoubleFree]);
    // The heap is sound: fresh blocks are distinct and usable.
    // SAFETY: (test) plain allocations, freed once.
    unsafe {
        let a = t.alloc(l);
        let b = t.alloc(l);
        assert_ne!(a, b);
        a.write_bytes(1, 64);
        b.write_bytes(2, 64);
        assert_eq!(*a.add(63), 1);
        t.dealloc(a, l);
        t.dealloc(b, l);
    }
    assert!(kinds(&t).is_empty());
}

/// The figures of shadow blocks come from a walk of the core's pages: exact after every
/// allocation and free, on any thread, with no counter on the default path.
#[test]
fn the_figures_follow_every_block() {
    let t = tracker(true, LeakCheck::Off);
    warm_up(&t);
    let sizes = [1usize, 17, 100, 1000, 20_000];
    // SAFETY: (test) valid layouts; each block freed once with its layout.
    unsafe {
        let blocks: Vec<(usize, Layout)> = sizes
            .iter()
            .map(|&s| {
                let l = Layout::from_size_align(s, 8).unwrap();
                (t.alloc(l) as usize, l)
            })
            .collect();
        assert_eq!(t.stats().live_blocks, sizes.len());
        assert_eq!(t.stats().live_bytes, sizes.iter().sum::<usize>());
        let (first, rest) = blocks.split_first().unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                for &(p, l) in rest {
                    t.dealloc(p as *mut u8, l);
                }
            });
        });
        assert_eq!(t.stats().live_blocks, 1);
        assert_eq!(t.stats().live_bytes, 1);
        t.dealloc(first.0 as *mut u8, first.1);
    }
    assert_eq!(t.stats().live_blocks, 0);
    assert!(kinds(&t).is_empty());
}

/// Options from `text`, reports kept quiet and no check at exit.
fn quiet(text: &str) -> allocscope_tracker::OptionsBuilder {
    Options::builder()
        .parse(text)
        .unwrap()
        .print_reports(false)
        .check_at_exit(false)
}

fn sampled_tracker(options: &str) -> Tracker<Allocscope> {
    let options = quiet(options).leak_check(LeakCheck::All);
    Tracker::with_options(Allocscope::new(), options.build().unwrap())
}

// The `black_box` after each call keeps it from being a tail call, so the site keeps its frame.
#[inline(never)]
fn sampled_alloc_site(t: &Tracker<Allocscope>, l: Layout) -> *mut u8 {
    // SAFETY: (test) a valid layout.
    let p = unsafe { t.alloc(l) };
    std::hint::black_box(p)
}

#[inline(never)]
fn sampled_free_site(t: &Tracker<Allocscope>, p: *mut u8, l: Layout) {
    // SAFETY: (test) the caller's block; a second call with it is the bug under test.
    unsafe { t.dealloc(p, l) };
    std::hint::black_box(p);
}

/// Every allocation sampled, after the thread's first calls: the default path's sampled
/// short paths make shadow blocks with their stacks. A double free names the allocating and
/// the freeing function (with free stacks) or the allocating one (without); a leak names its
/// function; a wrong layout is still caught exactly.
#[test]
fn sampled_shadow_blocks_keep_their_stacks() {
    for free_stacks in [true, false] {
        let t = sampled_tracker(&format!(
            "sample=1,guard=0,free_stacks={}",
            u8::from(free_stacks)
        ));
        warm_up(&t);
        let l = Layout::from_size_align(72, 8).unwrap();
        let p = sampled_alloc_site(&t, l);
        sampled_free_site(&t, p, l);
        sampled_free_site(&t, p, l);
        let reports = t.take_reports();
        assert_eq!(reports.len(), 1, "{reports:#?}");
        assert_eq!(reports[0].kind, ReportKind::DoubleFree);
        let text = &reports[0].text;
        let freed_by = text
            .split("freed by ")
            .nth(1)
            .and_then(|t| t.split("allocated by ").next())
            .expect("a free section");
        let allocated_by = text
            .split("allocated by ")
            .nth(1)
            .expect("an alloc section");
        assert!(allocated_by.contains("sampled_alloc_site"), "{text}");
        assert_eq!(
            freed_by.contains("sampled_free_site"),
            free_stacks,
            "{text}"
        );
        if !free_stacks {
            assert!(freed_by.contains("free_stacks=1"), "{text}");
        }

        let q = sampled_alloc_site(&t, l);
        sampled_free_site(&t, q, Layout::from_size_align(73, 8).unwrap());
        assert_eq!(kinds(&t), vec![ReportKind::AllocDeallocMismatch]);

        // One loop, not unrolled: one call site, so one group.
        let mut leaked = Vec::new();
        for _ in 0..std::hint::black_box(3) {
            leaked.push(sampled_alloc_site(&t, l));
        }
        let leaks = t.check_leaks();
        let ours: Vec<_> = leaks
            .iter()
            .filter(|r| r.kind == ReportKind::MemoryLeak && r.text.contains("sampled_alloc_site"))
            .collect();
        assert_eq!(ours.len(), 1, "one group: {leaks:#?}");
        assert_eq!(ours[0].leaked, Some((3, 216)));
        t.take_reports();
        for p in leaked {
            sampled_free_site(&t, p, l);
        }
        assert!(kinds(&t).is_empty());
        assert_eq!(t.stats().live_blocks, 0);
    }
}

/// With an event stream the default paths are off and the general path makes the shadow
/// blocks; their figures are counted then (the stream's snapshots read them every second, so
/// no walk of every block), and are as exact as the walked ones.
#[test]
fn a_traced_programs_figures_are_counted_exactly() {
    let dir = std::env::temp_dir().join(format!("allocscope-shadow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let options = quiet("sample=0,guard=0")
        .trace_path(dir.join("figures.trace"))
        .leak_check(LeakCheck::Off);
    let t = Tracker::with_options(Allocscope::new(), options.build().unwrap());
    warm_up(&t);
    let base = t.stats().live_blocks;
    let sizes = [5usize, 64, 700, 9000];
    // SAFETY: (test) valid layouts; each block resized or freed once with its layout.
    unsafe {
        let mut blocks: Vec<(*mut u8, Layout)> = sizes
            .iter()
            .map(|&s| {
                let l = Layout::from_size_align(s, 8).unwrap();
                (t.alloc(l), l)
            })
            .collect();
        assert_eq!(t.stats().live_blocks, base + sizes.len());
        let (p, l) = blocks[1];
        let q = t.realloc(p, l, 300);
        assert!(!q.is_null());
        blocks[1] = (q, Layout::from_size_align(300, 8).unwrap());
        let bytes: usize = blocks.iter().map(|(_, l)| l.size()).sum();
        assert!(t.stats().live_bytes >= bytes);
        let before = t.stats().live_bytes;
        for (p, l) in blocks {
            t.dealloc(p, l);
        }
        assert_eq!(t.stats().live_blocks, base);
        assert_eq!(before - t.stats().live_bytes, bytes);
    }
    assert!(kinds(&t).is_empty());
    t.finish_trace();
}

/// A buffer grown a byte at a time, as C programs grow theirs with `realloc`, moves a handful
/// of times, as under the core heap alone: at every size class boundary up to the medium
/// classes, then once into a block of its own mapping, which grows in place. (As a shadow
/// block past the medium classes it moved at every call: quadratic, 4 s where glibc took
/// 0.03 s for a 2 MB buffer.) With every allocation's stack recorded too.
#[test]
#[cfg_attr(windows, ignore = "under Wine the buffer moved 55 times (open)")]
fn a_buffer_grown_a_byte_at_a_time_moves_a_few_times_only() {
    for options in ["", "sample=1", "sample=1,free_stacks=0"] {
        let t = sampled_tracker(options);
        warm_up(&t);
        let mut size = 60_000;
        let l = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: (test) a valid layout; every resize is given the block's current layout,
        // and the block is freed with its last one.
        unsafe {
            let mut p = t.alloc(l);
            p.write(7);
            let mut moves = 0;
            while size < 700_000 {
                let q = t.realloc(p, Layout::from_size_align(size, 8).unwrap(), size + 1);
                assert!(!q.is_null());
                assert_eq!(q.read(), 7, "contents kept");
                moves += usize::from(q != p);
                p = q;
                size += 1;
            }
            assert!(moves <= 16, "{options:?}: moved {moves} times");
            t.dealloc(p, Layout::from_size_align(size, 8).unwrap());
        }
        assert_eq!(kinds(&t), [], "{options:?}");
    }
}
