//! The guard pool's layout as the kernel sees it (Linux, through `/proc/self/maps`): each slot's
//! data pages are a mapping of their own whether the slot is live or freed, so that opening
//! and closing a slot changes the protection of one whole mapping and never splits or merges
//! any (that doubled the price of each guarded allocation).

#![cfg(target_os = "linux")]

use std::alloc::{GlobalAlloc, Layout};

use allocscope_core::Allocscope;
use allocscope_tracker::{GuardRate, LeakCheck, Options, Tracker};

/// The mapping holding `addr`: (start, end, permissions such as "rw-p").
fn mapping_of(addr: usize) -> (usize, usize, String) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&addr) {
            return (start, end, perms.to_string());
        }
    }
    panic!("{addr:#x} is in no mapping");
}

#[test]
fn guard_slot_data_pages_stay_a_mapping_of_their_own() {
    let page = 4096;
    let options = Options::builder()
        .sample_bytes(0)
        .guard(GuardRate::All)
        .guard_slots(8)
        .guard_max_size(page)
        .guard_underflow_share(0.0)
        .print_reports(false)
        .leak_check(LeakCheck::Off)
        .check_at_exit(false)
        .build()
        .unwrap();
    let t = Tracker::with_options(Allocscope::new(), options);
    let layout = Layout::from_size_align(32, 8).unwrap();
    // SAFETY: (test) every block is freed once with its layout; freed blocks are not touched
    // (only the kernel's view of their pages is read).
    unsafe {
        let blocks: Vec<*mut u8> = (0..3).map(|_| t.alloc(layout)).collect();
        for &p in &blocks {
            let p = p as usize;
            assert_eq!((p + 32) % page, 0, "right-aligned in a slot");
            let slot = p & !(page - 1);
            let (start, end, perms) = mapping_of(p);
            assert_eq!((start, end), (slot, slot + page), "a live slot: {perms}");
            assert!(perms.starts_with("rw"), "{perms}");
        }
        // Freed, the middle slot sits between a live slot's guard pages and its own: it must
        // not merge with them.
        t.dealloc(blocks[1], layout);
        let freed = blocks[1] as usize;
        let slot = freed & !(page - 1);
        let (start, end, perms) = mapping_of(freed);
        assert_eq!((start, end), (slot, slot + page), "a freed slot: {perms}");
        assert!(perms.starts_with("---"), "{perms}");
        // The guard page after it is a mapping of its own too, inaccessible.
        let (start, end, perms) = mapping_of(slot + page);
        assert_eq!((start, end), (slot + page, slot + 2 * page), "{perms}");
        assert!(perms.starts_with("---"), "{perms}");
        t.dealloc(blocks[0], layout);
        t.dealloc(blocks[2], layout);
    }
}
