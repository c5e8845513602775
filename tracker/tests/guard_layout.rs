//! The guard pool's layout as the kernel sees it (Linux, through `/proc/self/maps`): each slot's
//! data pages are a mapping of their own (with the slot's guard page where the kernel has guard
//! markers), whether the slot is live or freed, so that opening and closing a slot changes the
//! protection of whole mappings and never splits or merges any (that doubled the price of each
//! guarded allocation).

#![cfg(target_os = "linux")]

use std::alloc::{GlobalAlloc, Layout};

use allocscope_core::Allocscope;
use allocscope_tracker::{GuardRate, LeakCheck, Options, Tracker};

/// Asserts that the mapping holding the data page at `slot` is that slot's alone: its data
/// page, and its guard page before it or not. Returns the permissions.
fn assert_own_mapping(slot: usize, page: usize) -> String {
    let (start, end, perms) = mapping_of(slot);
    assert_eq!(end, slot + page, "{perms}");
    assert!(
        start == slot || start == slot - page,
        "{start:#x} for {slot:#x}: {perms}"
    );
    perms
}

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
            let perms = assert_own_mapping(p & !(page - 1), page);
            assert!(perms.starts_with("rw"), "a live slot: {perms}");
        }
        // Freed, the middle slot sits between live slots and guard pages: it must not merge
        // with any of them.
        t.dealloc(blocks[1], layout);
        let freed = blocks[1] as usize;
        let slot = freed & !(page - 1);
        let perms = assert_own_mapping(slot, page);
        assert!(perms.starts_with("---"), "a freed slot: {perms}");
        // Another mapping starts right after it (the next slot's, or the guard page).
        assert_eq!(mapping_of(slot + page).0, slot + page);
        t.dealloc(blocks[0], layout);
        t.dealloc(blocks[2], layout);
    }
}
