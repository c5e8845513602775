//! Random sequences of alloc / alloc_zeroed / realloc / free checked against a model: every
//! live block keeps its contents, is aligned as asked, never overlaps another, and usable size
//! covers the request. Then: memory goes back to the OS after a peak.

use std::collections::BTreeMap;

use allocscope_core::{heap, Allocscope};
use proptest::prelude::*;

#[global_allocator]
static GLOBAL: Allocscope = Allocscope::new();

/// The RSS test reads the whole process's resident size: the model test, whose blocks reach
/// 3 MB, must not run beside it (CI once saw 23 MiB kept after `collect()` for that reason).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Clone)]
enum Op {
    Alloc { size: usize, align_shift: u8 },
    AllocZeroed { size: usize },
    Realloc { pick: usize, size: usize },
    Free { pick: usize },
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..=256,
        4 => 257usize..=16_384,
        2 => 16_385usize..=200_000,
        1 => 200_001usize..=3_000_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (size(), 0u8..=12).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        1 => size().prop_map(|size| Op::AllocZeroed { size }),
        2 => (any::<usize>(), size()).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
    ]
}

struct Live {
    size: usize,
    align: usize,
    byte: u8,
}

fn check_block(p: usize, b: &Live) {
    let bytes = b.size.min(4096);
    for i in (0..bytes).chain(b.size.saturating_sub(64)..b.size) {
        // SAFETY: p..p+size is a live block.
        let byte = unsafe { *(p as *const u8).add(i) };
        assert_eq!(byte, b.byte, "block {p:#x} byte {i}");
    }
}

fn fill_block(p: usize, b: &Live) {
    // SAFETY: p..p+size is a live block.
    unsafe { std::ptr::write_bytes(p as *mut u8, b.byte, b.size) };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn heap_matches_model(ops in proptest::collection::vec(op(), 1..300)) {
        let _alone = one_at_a_time();
        let mut live: BTreeMap<usize, Live> = BTreeMap::new();
        let mut counter = 0u8;
        for op in ops {
            counter = counter.wrapping_add(1);
            match op {
                Op::Alloc { size, align_shift } => {
                    let align = 1usize << align_shift;
                    let p = heap::alloc(size, align);
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % align, 0);
                    // SAFETY: p is live.
                    let usable = unsafe { heap::usable_size(p) };
                    prop_assert!(usable >= size);
                    let b = Live { size, align, byte: counter };
                    fill_block(p as usize, &b);
                    prop_assert!(live.insert(p as usize, b).is_none(), "address handed out twice");
                }
                Op::AllocZeroed { size } => {
                    let p = heap::alloc_zeroed(size, 8);
                    prop_assert!(!p.is_null());
                    let b = Live { size, align: 8, byte: 0 };
                    check_block(p as usize, &b);
                    prop_assert!(live.insert(p as usize, b).is_none(), "address handed out twice");
                }
                Op::Realloc { pick, size } => {
                    if live.is_empty() { continue; }
                    let key = *live.keys().nth(pick % live.len()).unwrap();
                    let old = live.remove(&key).unwrap();
                    check_block(key, &old);
                    // SAFETY: key is live with alignment old.align.
                    let p = unsafe { heap::realloc(key as *mut u8, size, old.align) };
                    prop_assert!(!p.is_null());
                    prop_assert_eq!(p as usize % old.align, 0);
                    let kept = Live { size: old.size.min(size), align: old.align, byte: old.byte };
                    check_block(p as usize, &kept);
                    let b = Live { size, align: old.align, byte: counter };
                    fill_block(p as usize, &b);
                    prop_assert!(live.insert(p as usize, b).is_none(), "address handed out twice");
                }
                Op::Free { pick } => {
                    if live.is_empty() { continue; }
                    let key = *live.keys().nth(pick % live.len()).unwrap();
                    let b = live.remove(&key).unwrap();
                    check_block(key, &b);
                    // SAFETY: live, freed once.
                    unsafe { heap::free(key as *mut u8) };
                }
            }
            // No two live blocks overlap.
            let mut end = 0usize;
            for (&p, b) in &live {
                prop_assert!(p >= end, "block {p:#x} overlaps the previous one");
                end = p + b.size;
            }
        }
        for (p, b) in live {
            check_block(p, &b);
            // SAFETY: live, freed once.
            unsafe { heap::free(p as *mut u8) };
        }
    }
}

#[cfg(target_os = "linux")]
fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[cfg(target_os = "linux")]
#[test]
fn memory_goes_back_to_the_os_after_a_peak() {
    let _alone = one_at_a_time();
    std::thread::spawn(|| {
        let base = rss_bytes();
        let blocks: Vec<usize> = (0..1_000_000)
            .map(|i| {
                let size = 32 + (i % 7) * 40;
                let p = heap::alloc(size, 8);
                // SAFETY: live block of `size` bytes.
                unsafe { std::ptr::write_bytes(p, 1, size) };
                p as usize
            })
            .collect();
        let peak = rss_bytes();
        assert!(peak > base + (100 << 20), "peak {peak} base {base}");
        for p in blocks {
            // SAFETY: live, freed once.
            unsafe { heap::free(p as *mut u8) };
        }
        // The purge delay passes, and the next slow-path visit gives pages back...
        std::thread::sleep(std::time::Duration::from_millis(50));
        for _ in 0..200_000 {
            // SAFETY: alloc/free pairs of fresh blocks.
            unsafe { heap::free(heap::alloc(5000, 8)) };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        for _ in 0..200_000 {
            // SAFETY: as above.
            unsafe { heap::free(heap::alloc(5000, 8)) };
        }
        let after_purge = rss_bytes();
        // ... and collect() gives back the rest at once.
        allocscope_core::collect();
        let after_collect = rss_bytes();
        let peak_gain = peak - base;
        assert!(
            after_purge < base + peak_gain / 2,
            "base {base} peak {peak} after purge {after_purge}"
        );
        assert!(
            after_collect < base + peak_gain / 10,
            "base {base} peak {peak} after collect {after_collect}"
        );
    })
    .join()
    .unwrap();
}
