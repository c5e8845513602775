//! The stack: bump allocation, LIFO frees, markers, scopes, reported out-of-order frees.

mod strategy_support;

use std::ptr::NonNull;

use allocscope_core::stack::{Stack, GRAIN, TRACKED_HOLES};
use allocscope_core::typed::TypedAlloc;
use proptest::prelude::*;
use strategy_support::*;

#[test]
fn lifo_frees_bring_the_top_back_exactly() {
    let mut buf = buffer(4096);
    let stack = Stack::from_buffer(&mut buf);
    let start = stack.remaining();
    let a = stack.allocate_bytes(10, 1).unwrap();
    let b = stack.allocate_bytes(100, 64).unwrap();
    assert_eq!(b.as_ptr() as usize % 64, 0);
    assert!(b.as_ptr() as usize >= a.as_ptr() as usize + 10);
    // SAFETY: live blocks, freed in LIFO order.
    unsafe {
        stack.deallocate_bytes(b, 100, 64);
        stack.deallocate_bytes(a, 10, 1);
    }
    let s = stack.stats();
    assert_eq!(
        (s.used_bytes, s.misuse, s.deallocations),
        (0, 0, counted(2))
    );
    assert_eq!(
        stack.remaining(),
        start,
        "b's alignment padding came back too"
    );
}

#[test]
fn every_power_of_two_alignment_is_honoured() {
    let mut buf = buffer(64 * 1024);
    let stack = Stack::from_buffer(&mut buf);
    for shift in 0..13 {
        let align = 1usize << shift;
        let p = stack.allocate_bytes(3, align).unwrap();
        assert_eq!(p.as_ptr() as usize % align, 0, "align {align}");
    }
    assert_eq!(stack.allocate_bytes(8, 3), None, "not a power of two");
}

#[test]
fn exhaustion_is_none_and_nothing_moves() {
    let mut buf = buffer(256);
    let stack = Stack::from_buffer(&mut buf);
    assert!(stack.capacity() >= 256 - GRAIN && stack.capacity() % GRAIN == 0);
    assert!(stack.allocate_bytes(200, 1).is_some());
    let left = stack.remaining();
    assert_eq!(stack.allocate_bytes(left + 1, 1), None);
    assert_eq!(stack.remaining(), left);
    assert!(stack.allocate_bytes(left, 1).is_some());
    assert_eq!(stack.allocate_bytes(1, 1), None);
    assert_eq!(stack.stats().failures, 2);
}

#[test]
fn out_of_order_frees_are_reported_and_absorbed_when_the_top_comes_down() {
    let mut buf = buffer(4096);
    let stack = Stack::from_buffer(&mut buf);
    let a = stack.allocate_bytes(16, 8).unwrap();
    let b = stack.allocate_bytes(16, 8).unwrap();
    let c = stack.allocate_bytes(16, 8).unwrap();
    fill(c, 16, 3);
    // SAFETY: live blocks; b is freed out of order.
    unsafe { stack.deallocate_bytes(b, 16, 8) };
    let s = stack.stats();
    assert_eq!(s.misuse, 1);
    assert!(s.fragmentation > 0.0, "b's bytes are a hole");
    assert!(
        holds(c, 16, 3),
        "an out-of-order free does not disturb live blocks"
    );
    // SAFETY: live blocks, now in order: c pops and absorbs b's hole, then a pops.
    unsafe {
        stack.deallocate_bytes(c, 16, 8);
        stack.deallocate_bytes(a, 16, 8);
    }
    let s = stack.stats();
    assert_eq!((s.used_bytes, s.misuse, s.fragmentation), (0, 1, 0.0));
    assert_eq!(stack.remaining(), stack.capacity());
}

#[test]
fn frees_above_the_top_or_outside_are_refused() {
    let mut buf = buffer(4096);
    let stack = Stack::from_buffer(&mut buf);
    let a = stack.allocate_bytes(32, 8).unwrap();
    let b = stack.allocate_bytes(32, 8).unwrap();
    // SAFETY: b is live; the next calls are deliberate misuse the stack must refuse.
    unsafe {
        stack.deallocate_bytes(b, 32, 8);
        stack.deallocate_bytes(b, 32, 8); // double free: above the top now
        let mut outside = [0u8; 32];
        stack.deallocate_bytes(NonNull::from(&mut outside).cast(), 32, 1);
    }
    let s = stack.stats();
    assert_eq!((s.misuse, s.deallocations), (2, counted(1)));
    assert_eq!(
        stack.allocate_bytes(32, 8),
        Some(b),
        "the top is where b was"
    );
    // SAFETY: a double free of an out-of-order hole is refused too.
    unsafe {
        stack.deallocate_bytes(a, 32, 8);
        stack.deallocate_bytes(a, 32, 8);
    }
    assert_eq!(
        stack.stats().misuse,
        4,
        "one out-of-order report, one double free"
    );
}

#[test]
fn only_a_bounded_number_of_holes_is_tracked() {
    let mut buf = buffer(8192);
    let stack = Stack::from_buffer(&mut buf);
    let blocks: Vec<_> = (0..TRACKED_HOLES + 4)
        .map(|_| stack.allocate_bytes(8, 8).unwrap())
        .collect();
    let top = stack.allocate_bytes(8, 8).unwrap();
    for b in &blocks {
        // SAFETY: live blocks, all out of order (top is above them).
        unsafe { stack.deallocate_bytes(*b, 8, 8) };
    }
    let s = stack.stats();
    assert_eq!(s.misuse as usize, blocks.len());
    assert_eq!(
        s.used_bytes,
        8 + 4 * 8,
        "untracked holes stay used until a reset"
    );
    // SAFETY: live.
    unsafe { stack.deallocate_bytes(top, 8, 8) };
}

#[test]
fn markers_free_everything_allocated_after_them() {
    let mut buf = buffer(4096);
    let mut stack = Stack::from_buffer(&mut buf);
    let keep = stack.allocate_bytes(100, 8).unwrap();
    fill(keep, 100, 9);
    let mark = stack.marker();
    for _ in 0..10 {
        stack.allocate_bytes(64, 16).unwrap();
    }
    let peak = stack.stats().used_bytes;
    // SAFETY: the blocks allocated after `mark` are not used again.
    unsafe { stack.reset_to(mark) };
    assert!(holds(keep, 100, 9));
    assert_eq!(
        stack.stats().used_bytes,
        104,
        "100 bytes on the 8-byte grain"
    );
    // The peak is the highest top: the blocks plus their alignment padding.
    assert!(stack.stats().peak_used_bytes >= peak);
    // A stale marker above the top changes nothing.
    let low = stack.marker();
    stack.allocate_bytes(8, 8).unwrap();
    let high = stack.marker();
    // SAFETY: nothing above `low` is used again.
    unsafe {
        stack.reset_to(low);
        stack.reset_to(high);
    }
    assert_eq!(stack.marker(), low);
    stack.reset();
    assert_eq!(stack.remaining(), stack.capacity());
}

#[test]
fn scopes_reset_on_drop_and_nest() {
    let mut buf = buffer(16 * 1024);
    let mut stack = Stack::from_buffer(&mut buf);
    for frame in 0..5u32 {
        let mut scope = stack.scope();
        let mut names = allocator_api2::vec::Vec::new_in(&scope);
        names.extend(0..100 * (frame + 1));
        assert_eq!(names.len(), 100 * (frame as usize + 1));
        drop(names);
        // A handle would borrow the scope; the nested scope needs it exclusively.
        let outer = scope.allocate::<u32>(8).unwrap();
        // SAFETY: a fresh block of 8 u32.
        unsafe { outer.as_ptr().write_bytes(0, 8) };
        {
            let inner = scope.scope();
            let x = inner.boxed(7u64).unwrap();
            assert_eq!(*x, 7);
            drop(x);
            inner.allocate_bytes(512, 8).unwrap();
        }
        let after_inner = scope.stats().used_bytes;
        // SAFETY: still live: the nested scope freed only what it allocated.
        assert_eq!(unsafe { outer.as_ptr().add(7).read() }, 0);
        assert!((32..512).contains(&after_inner));
    }
    assert_eq!(stack.stats().used_bytes, 0);
    assert_eq!(stack.remaining(), stack.capacity());
}

#[test]
fn a_vec_on_top_grows_in_place() {
    let mut buf = buffer(64 * 1024);
    let stack = Stack::from_buffer(&mut buf);
    let mut v: allocator_api2::vec::Vec<u32, &Stack> =
        allocator_api2::vec::Vec::with_capacity_in(4, &stack);
    let first = v.as_ptr();
    v.extend(0..10_000);
    assert_eq!(v.as_ptr(), first, "the top block is extended, not moved");
    assert_eq!(v[9_999], 9_999);
    assert_eq!(stack.stats().misuse, 0);
}

#[test]
fn os_backed_stack_releases_its_region() {
    let os = HeapOs::default();
    {
        let stack = Stack::with_os(&os, 100_000).unwrap();
        assert!(stack.capacity() >= 100_000);
        assert!(stack.allocate_bytes(100_000, 4096).is_some());
        assert_eq!(os.live_regions(), 1);
    }
    assert_eq!(os.live_regions(), 0);
    assert!(Stack::with_os(&HeapOs::with_limit(0), 10).is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize, u32),
    FreeTop,
    FreeAny(usize),
    Mark,
    Reset,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..200, 0u32..7).prop_map(|(s, a)| Op::Alloc(s, a)),
            2 => Just(Op::FreeTop),
            1 => any::<usize>().prop_map(Op::FreeAny),
            1 => Just(Op::Mark),
            1 => Just(Op::Reset),
        ],
        1..150,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences against a model of live blocks: blocks are aligned, disjoint, keep
    /// their contents; allocation fails only when the request cannot fit above the top; the
    /// used figure equals the live bytes whenever no hole is pending.
    #[test]
    fn stack_matches_model(ops in ops()) {
        let mut buf = buffer(4096);
        let mut stack = Stack::from_buffer(&mut buf);
        // (ptr, len, seed) in allocation order, and markers with the live count at the time.
        let mut live: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
        let mut marks = Vec::new();
        let mut out_of_order = false;
        for (seed, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc(size, shift) => {
                    let align = 1usize << shift;
                    let room = stack.remaining();
                    match stack.allocate_bytes(size, align) {
                        Some(p) => {
                            prop_assert_eq!(p.as_ptr() as usize % align, 0);
                            for &(q, len, _) in &live {
                                prop_assert!(!overlap(p.as_ptr() as usize, size, q.as_ptr() as usize, len));
                            }
                            fill(p, size, seed as u64);
                            live.push((p, size, seed as u64));
                        }
                        None => prop_assert!(size + align - 1 > room),
                    }
                }
                Op::FreeTop => {
                    if let Some((p, len, s)) = live.pop() {
                        prop_assert!(holds(p, len, s));
                        let reports = stack.stats().misuse;
                        // SAFETY: the newest live block.
                        unsafe { stack.deallocate_bytes(p, len, 1) };
                        if !out_of_order && live.len() < TRACKED_HOLES {
                            prop_assert_eq!(stack.stats().misuse, reports, "a LIFO free is no misuse");
                        }
                        marks.retain(|&(_, n)| n <= live.len());
                    }
                }
                Op::FreeAny(i) if !live.is_empty() => {
                    let (p, len, s) = live.remove(i % live.len());
                    prop_assert!(holds(p, len, s));
                    // SAFETY: a live block (possibly out of order: reported, not corrupting).
                    unsafe { stack.deallocate_bytes(p, len, 1) };
                    marks.clear();
                    out_of_order = true;
                }
                Op::FreeAny(_) => {}
                Op::Mark => marks.push((stack.marker(), live.len())),
                Op::Reset => {
                    if let Some((m, n)) = marks.pop() {
                        live.truncate(n);
                        // SAFETY: blocks allocated after the marker were dropped from the model.
                        unsafe { stack.reset_to(m) };
                    }
                }
            }
            for &(p, len, s) in &live {
                prop_assert!(holds(p, len, s));
            }
            let live_bytes: usize = live.iter().map(|b| b.1).sum();
            prop_assert!(stack.stats().used_bytes >= live_bytes);
        }
        while let Some((p, len, _)) = live.pop() {
            // SAFETY: live blocks.
            unsafe { stack.deallocate_bytes(p, len, 1) };
        }
        stack.reset();
        prop_assert_eq!(stack.stats().used_bytes, 0);
        prop_assert_eq!(stack.remaining(), stack.capacity());
    }
}
