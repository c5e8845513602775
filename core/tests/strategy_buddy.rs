//! The buddy allocator: power-of-two blocks, split and coalesce, bitmaps, fragmentation.

mod strategy_support;

use std::alloc::{GlobalAlloc, Layout};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use allocscope_core::buddy::{Buddy, DEFERRED};
use allocscope_core::spin::SpinLock;
use allocscope_core::typed::TypedAlloc;
use proptest::prelude::*;
use strategy_support::*;

#[test]
fn blocks_are_aligned_to_their_size_and_any_requested_alignment() {
    let mut buf = buffer(256 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
    for shift in 0..14 {
        let align = 1usize << shift;
        let p = buddy.allocate_bytes(40, align).unwrap();
        assert_eq!(
            p.as_ptr() as usize % align.max(64),
            0,
            "a 40-byte block is a 64-byte block"
        );
    }
    assert_eq!(buddy.allocate_bytes(8, 3), None);
}

#[test]
fn freeing_everything_coalesces_back_to_the_initial_blocks() {
    let mut buf = buffer(128 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 16).unwrap();
    let initial = buddy.stats();
    assert_eq!(initial.free_bytes, buddy.heap_size());
    let mut blocks = Vec::new();
    let mut size = 1;
    while let Some(p) = buddy.allocate_bytes(size, 1) {
        fill(p, size, size as u64);
        blocks.push((p, size));
        size = size % 3000 + 7;
    }
    assert!(buddy.stats().failures == 1 && blocks.len() > 50);
    for &(p, size) in &blocks {
        assert!(holds(p, size, size as u64));
    }
    for &(p, size) in blocks
        .iter()
        .rev()
        .step_by(2)
        .chain(blocks.iter().rev().skip(1).step_by(2))
    {
        // SAFETY: live blocks, each freed once.
        unsafe { buddy.deallocate_bytes(p, size, 1) };
    }
    let end = buddy.stats();
    assert_eq!((end.used_bytes, end.free_bytes), (0, buddy.heap_size()));
    assert_eq!(
        end.fragmentation, initial.fragmentation,
        "every buddy pair merged again"
    );
    let largest = buddy.heap_size().next_power_of_two() / 2;
    if largest * 2 > buddy.heap_size() {
        assert!(
            buddy.allocate_bytes(largest / 2, 1).is_some(),
            "large blocks are whole again"
        );
    }
}

#[test]
fn buddies_merge_into_their_parent() {
    let mut buf = buffer(16 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
    // Keyed by address, keeping the pointers (strict provenance: no integer-to-pointer casts).
    let mut blocks = std::collections::HashMap::new();
    while let Some(p) = buddy.allocate_bytes(32, 32) {
        blocks.insert(p.as_ptr() as usize, p);
    }
    let a = *blocks
        .keys()
        .find(|&&p| blocks.contains_key(&(p ^ 32)))
        .expect("a split pair");
    // SAFETY: live blocks (a and its buddy).
    unsafe {
        buddy.deallocate_bytes(blocks[&a], 32, 32);
        assert_eq!(
            buddy.allocate_bytes(64, 64),
            None,
            "half a pair is not enough"
        );
        buddy.deallocate_bytes(blocks[&(a ^ 32)], 32, 32);
    }
    let c = buddy.allocate_bytes(64, 64).unwrap();
    assert_eq!(
        c.as_ptr() as usize,
        a & !63,
        "the two halves merged into their parent"
    );
}

#[test]
fn fragmentation_is_one_minus_largest_free_over_free() {
    let mut buf = buffer(64 * 1024 + 4096);
    let buddy = Buddy::from_buffer(&mut buf, 64).unwrap();
    let mut blocks = Vec::new();
    while let Some(p) = buddy.allocate_bytes(64, 64) {
        blocks.push(p);
    }
    assert_eq!(
        buddy.stats().fragmentation,
        0.0,
        "no free memory: nothing fragmented"
    );
    let mut freed = 0;
    for p in blocks.iter().step_by(2) {
        // SAFETY: live blocks, every other one.
        unsafe { buddy.deallocate_bytes(*p, 64, 64) };
        freed += 1;
    }
    let s = buddy.stats();
    assert_eq!(s.free_bytes, freed * 64);
    let expected = 1.0 - 64.0 / (freed as f64 * 64.0);
    assert!(
        (s.fragmentation - expected).abs() < 1e-9,
        "{} vs {expected}",
        s.fragmentation
    );
    assert_eq!(
        buddy.allocate_bytes(128, 1),
        None,
        "free memory is all in 64-byte pieces"
    );
}

#[test]
fn double_wrong_size_and_foreign_frees_are_refused_in_every_build() {
    let mut buf = buffer(64 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
    let a = buddy.allocate_bytes(100, 8).unwrap();
    let b = buddy.allocate_bytes(100, 8).unwrap();
    fill(b, 100, 5);
    // SAFETY: deliberate misuse, refused without touching the lists.
    unsafe {
        buddy.deallocate_bytes(a, 100, 8);
        buddy.deallocate_bytes(a, 100, 8); // double free (a merged with its free buddy)
        buddy.deallocate_bytes(b, 20, 8); // wrong size
        let mut outside = [0u64; 4];
        buddy.deallocate_bytes(NonNull::from(&mut outside).cast(), 32, 8);
        buddy.deallocate_bytes(NonNull::new(b.as_ptr().add(32)).unwrap(), 32, 8);
    }
    let s = buddy.stats();
    assert_eq!((s.misuse, s.deallocations), (4, counted(1)));
    assert!(holds(b, 100, 5));
    assert_eq!(s.used_bytes, 128, "b is still allocated");
    // SAFETY: b is live.
    unsafe { buddy.deallocate_bytes(b, 100, 8) };
    assert_eq!(buddy.stats().free_bytes, buddy.heap_size());
}

/// Allocates as many 32-byte blocks as `waited` has and checks that they are those, newest
/// (last freed) first: the frees that waited are handed out again before anything else.
fn assert_handed_out_again_newest_first(buddy: &Buddy<'_>, waited: &[NonNull<u8>]) {
    let again: Vec<_> = waited
        .iter()
        .map(|_| buddy.allocate_bytes(32, 8).unwrap())
        .collect();
    let newest_first: Vec<_> = waited.iter().rev().copied().collect();
    assert_eq!(again, newest_first, "{} frees waited", waited.len());
}

/// An order with many blocks allocated keeps more frees waiting than DEFERRED (up to half its
/// allocated count): they are reused first, newest first, a double free deep in the waiting
/// stack is still refused, and reading the figures coalesces them all.
#[test]
fn many_waiting_frees_of_one_order_are_reused_and_checked() {
    // 128 KiB of 32-byte blocks: 4096 slots, a waiting stack of 4096 / 64 = 64 entries,
    // more than the 3 * DEFERRED frees below.
    let mut buf = buffer(128 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
    let blocks: Vec<_> = (0..300)
        .map(|i| {
            let p = buddy.allocate_bytes(32, 8).unwrap();
            fill(p, 32, i);
            p
        })
        .collect();
    let initial_free = buddy.heap_size() - 300 * 32;
    let freed = 3 * DEFERRED;
    for &p in &blocks[..freed] {
        // SAFETY: live blocks, freed once.
        unsafe { buddy.deallocate_bytes(p, 32, 8) };
    }
    // The first block freed is the deepest in the waiting stack.
    // SAFETY: deliberate double free, refused (were it accepted, the block would wait twice
    // and be handed out twice below).
    unsafe { buddy.deallocate_bytes(blocks[0], 32, 8) };
    assert_handed_out_again_newest_first(&buddy, &blocks[..freed]);
    for (i, &p) in blocks.iter().enumerate().skip(freed) {
        assert!(holds(p, 32, i as u64));
    }
    let s = buddy.stats();
    assert_eq!(
        (s.misuse, s.allocations, s.deallocations),
        (1, counted(300 + freed as u64), counted(freed as u64))
    );
    assert_eq!(s.free_bytes, initial_free);
    for &p in &blocks {
        // SAFETY: live blocks (the freed ones were allocated again), freed once.
        unsafe { buddy.deallocate_bytes(p, 32, 8) };
    }
    assert_eq!(buddy.stats().free_bytes, buddy.heap_size());
}

/// The two bounds of the deferral: an order keeps at most DEFERRED frees waiting while few of
/// its blocks are allocated, and never more than its stack holds however many are; the frees
/// beyond coalesce at once (so they are not handed out again newest first), and a double free
/// of one of those is refused as well.
#[test]
fn waiting_frees_are_bounded_by_the_slack_rule_and_the_stack() {
    for (live, freed, waiting) in [
        // 40 allocated: DEFERRED wait (half of 40 allocated is less).
        (40, 40, DEFERRED),
        // 1000 allocated: a third of them could wait, the stack holds 4096 / 64 (128 KiB of
        // 32-byte blocks).
        (1000, 200, 64),
    ] {
        let mut buf = buffer(128 * 1024);
        let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
        let blocks: Vec<_> = (0..live)
            .map(|_| buddy.allocate_bytes(32, 8).unwrap())
            .collect();
        for &p in &blocks[..freed] {
            // SAFETY: live blocks, freed once.
            unsafe { buddy.deallocate_bytes(p, 32, 8) };
        }
        // SAFETY: a deliberate double free of a block that did not wait, refused.
        unsafe { buddy.deallocate_bytes(blocks[freed - 1], 32, 8) };
        assert_handed_out_again_newest_first(&buddy, &blocks[..waiting]);
        let s = buddy.stats();
        assert_eq!(s.misuse, 1);
        assert_eq!(s.used_bytes, (live - freed + waiting) * 32);
        for &p in blocks[..waiting].iter().chain(&blocks[freed..]) {
            // SAFETY: the live blocks, freed once.
            unsafe { buddy.deallocate_bytes(p, 32, 8) };
        }
        assert_eq!(buddy.stats().free_bytes, buddy.heap_size());
    }
}

/// The allocator is a value of fixed size, often a `static` in firmware (its bitmaps and
/// waiting stacks are in its memory): the module documentation states its size, and this keeps
/// the statement true.
#[test]
fn the_allocator_is_as_small_as_its_documentation_says() {
    let size = std::mem::size_of::<Buddy<'static>>();
    let bound = if usize::BITS == 64 { 3 * 1024 } else { 1229 };
    assert!(size <= bound, "{size} bytes");
}

#[test]
fn resizing_within_the_same_block_stays_in_place() {
    use allocator_api2::alloc::Allocator;
    let mut buf = buffer(64 * 1024);
    let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
    let l = |size| Layout::from_size_align(size, 8).unwrap();
    let a = Allocator::allocate(&&buddy, l(65)).unwrap().cast::<u8>();
    // SAFETY: `a` is live with the old layout; each call passes the layout it now has.
    unsafe {
        a.as_ptr().write_bytes(9, 65);
        let b = Allocator::grow(&&buddy, a, l(65), l(128))
            .unwrap()
            .cast::<u8>();
        assert_eq!(b, a, "65 and 128 bytes both take a 128-byte block");
        let c = Allocator::grow(&&buddy, b, l(128), l(129))
            .unwrap()
            .cast::<u8>();
        assert_ne!(c, b, "129 bytes need a 256-byte block");
        assert_eq!(*c.as_ptr().add(64), 9);
        Allocator::deallocate(&&buddy, c, l(129));
    }
    let mut v = allocator_api2::vec::Vec::<u8, &Buddy>::new_in(&buddy);
    v.extend(std::iter::repeat_n(2, 1000));
    assert_eq!(v.iter().map(|&x| x as usize).sum::<usize>(), 2000);
    drop(v);
    assert_eq!(buddy.stats().used_bytes, 0);
}

#[test]
fn a_static_spin_locked_buddy_serves_as_global_allocator() {
    static HEAP: SpinLock<Buddy<'static>> = SpinLock::new(Buddy::empty(32));
    static mut ARENA: [MaybeUninit<u8>; 32 * 1024] = [MaybeUninit::uninit(); 32 * 1024];
    static mut SPARE: [MaybeUninit<u8>; 4096] = [MaybeUninit::uninit(); 4096];
    // SAFETY: the only references ever made to ARENA and SPARE.
    let (arena, spare) = unsafe {
        (
            &mut *std::ptr::addr_of_mut!(ARENA),
            &mut *std::ptr::addr_of_mut!(SPARE),
        )
    };
    assert!(HEAP.lock().init(arena));
    assert!(!HEAP.lock().init(spare), "a second buffer is refused");
    let layout = Layout::from_size_align(100, 8).unwrap();
    // SAFETY: GlobalAlloc's contract.
    unsafe {
        let p = HEAP.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(3, 100);
        let q = HEAP.realloc(p, layout, 120);
        assert_eq!(q, p, "still a 128-byte block");
        let r = HEAP.realloc(q, Layout::from_size_align(120, 8).unwrap(), 5000);
        assert!(!r.is_null());
        assert_eq!(*r.add(99), 3);
        HEAP.dealloc(r, Layout::from_size_align(5000, 8).unwrap());
        assert!(HEAP
            .alloc(Layout::from_size_align(1 << 20, 8).unwrap())
            .is_null());
    }
    let s = HEAP.lock().stats();
    assert_eq!((s.used_bytes, s.failures), (0, 1));
}

#[test]
fn os_backed_buddy_releases_its_region() {
    let os = HeapOs::default();
    {
        let buddy = Buddy::with_os(&os, 1 << 20, 64).unwrap();
        assert!(buddy.heap_size() > (1 << 20) - 64 * 1024);
        assert!(
            buddy.allocate_bytes(1 << 19, 1 << 19).is_some(),
            "size-aligned region"
        );
        assert_eq!(os.live_regions(), 1);
    }
    assert_eq!(os.live_regions(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize, u32),
    Free(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            3 => (1usize..3000, 0u32..10).prop_map(|(s, a)| Op::Alloc(s, a)),
            2 => any::<usize>().prop_map(Op::Free),
        ],
        1..200,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences against a model: blocks are aligned, disjoint and keep their contents;
    /// used + free is the heap; used is the sum of the live blocks' power-of-two sizes; the
    /// operation counts are exact and the peak is at least the model's; when everything is
    /// freed the heap is whole again. The figures are read only every few operations, since
    /// reading them coalesces the deferred frees, and the deferred lists must fill meanwhile.
    #[test]
    fn buddy_matches_model(ops in ops(), every in 1usize..40) {
        let mut buf = buffer(64 * 1024);
        let buddy = Buddy::from_buffer(&mut buf, 32).unwrap();
        let initial = buddy.stats();
        let mut live: Vec<(NonNull<u8>, usize, usize, u64)> = Vec::new();
        let (mut allocations, mut frees, mut peak) = (0u64, 0u64, 0usize);
        let block = |b: &(NonNull<u8>, usize, usize, u64)| b.1.max(b.2).max(32).next_power_of_two();
        for (seed, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc(size, shift) => {
                    let align = 1usize << shift;
                    if let Some(p) = buddy.allocate_bytes(size, align) {
                        prop_assert_eq!(p.as_ptr() as usize % align, 0);
                        for &(q, len, _, _) in &live {
                            prop_assert!(!overlap(p.as_ptr() as usize, size, q.as_ptr() as usize, len));
                        }
                        fill(p, size, seed as u64);
                        live.push((p, size, align, seed as u64));
                        allocations += 1;
                        peak = peak.max(live.iter().map(block).sum());
                    }
                }
                Op::Free(i) if !live.is_empty() => {
                    let (p, len, align, s) = live.swap_remove(i % live.len());
                    prop_assert!(holds(p, len, s));
                    // SAFETY: a live block.
                    unsafe { buddy.deallocate_bytes(p, len, align) };
                    frees += 1;
                }
                Op::Free(_) => {}
            }
            if seed % every == 0 {
                let s = buddy.stats();
                let expect: usize = live.iter().map(block).sum();
                prop_assert_eq!(s.used_bytes, expect);
                prop_assert_eq!(s.used_bytes + s.free_bytes, buddy.heap_size());
                prop_assert_eq!((s.allocations, s.deallocations), (counted(allocations), counted(frees)));
                prop_assert!(s.peak_used_bytes >= peak && s.peak_used_bytes <= buddy.heap_size());
            }
        }
        for (p, len, align, _) in live.drain(..) {
            // SAFETY: live blocks.
            unsafe { buddy.deallocate_bytes(p, len, align) };
        }
        prop_assert_eq!(buddy.stats().free_bytes, initial.free_bytes);
        prop_assert_eq!(buddy.stats().fragmentation, initial.fragmentation);
    }
}
