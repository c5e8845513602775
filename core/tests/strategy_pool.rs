//! The pool: fixed-size blocks, O(1) allocate/free, chunks from an OS or caller buffers.

mod strategy_support;

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::ptr::NonNull;

use allocscope_core::pool::{Growth, Pool};
use allocscope_core::spin::SpinLock;
use allocscope_core::typed::TypedAlloc;
use proptest::prelude::*;
use strategy_support::*;

#[test]
fn blocks_are_distinct_aligned_and_reused_lifo() {
    let mut buf = buffer(64 * 1024);
    let pool = Pool::from_buffer(&mut buf, 48, 64).unwrap();
    assert_eq!(pool.block_size(), 64);
    let mut seen = HashSet::new();
    let blocks: Vec<_> = (0..100)
        .map(|_| pool.allocate_bytes(48, 64).unwrap())
        .collect();
    for (i, b) in blocks.iter().enumerate() {
        assert_eq!(b.as_ptr() as usize % 64, 0);
        assert!(seen.insert(b.as_ptr() as usize));
        fill(*b, 48, i as u64);
    }
    for (i, b) in blocks.iter().enumerate() {
        assert!(holds(*b, 48, i as u64), "block {i} was overwritten");
    }
    let last = blocks[99];
    // SAFETY: a live block of this pool.
    unsafe { pool.deallocate_bytes(last, 48, 64) };
    assert_eq!(
        pool.allocate_bytes(1, 1),
        Some(last),
        "the most recently freed block comes back"
    );
}

#[test]
fn fixed_pool_runs_out_with_none_and_recovers() {
    let mut buf = buffer(4096);
    let pool = Pool::from_buffer(&mut buf, 32, 8).unwrap();
    let capacity = pool.capacity();
    assert!(
        capacity > 50 && capacity <= 4096 / 32,
        "capacity {capacity}"
    );
    let blocks: Vec<_> = (0..capacity)
        .map(|_| pool.allocate_bytes(32, 8).unwrap())
        .collect();
    assert_eq!(pool.allocate_bytes(32, 8), None);
    assert_eq!(pool.stats().failures, 1);
    // SAFETY: a live block.
    unsafe { pool.deallocate_bytes(blocks[3], 32, 8) };
    assert_eq!(pool.allocate_bytes(32, 8), Some(blocks[3]));
}

#[test]
fn requests_larger_or_more_aligned_than_a_block_are_refused() {
    let mut buf = buffer(4096);
    let pool = Pool::from_buffer(&mut buf, 32, 16).unwrap();
    assert_eq!(pool.allocate_bytes(33, 8), None);
    assert_eq!(pool.allocate_bytes(8, 32), None);
    assert_eq!(pool.stats().failures, 2);
    assert_eq!(pool.stats().allocations, 0);
    // Up to the block's alignment, any power of two is served, aligned.
    for align in [1, 2, 8, 16] {
        let p = pool.allocate_bytes(32, align).unwrap();
        assert_eq!(p.as_ptr() as usize % 16, 0);
    }
    assert_eq!(pool.stats().failures, 2);
}

#[test]
fn growing_pool_takes_chunks_from_its_os_and_releases_them_on_drop() {
    let os = HeapOs::default();
    {
        let pool = Pool::with_os(&os, 100, 8, Growth::Chunks(10)).unwrap();
        assert_eq!(os.live_regions(), 0, "chunks are reserved on first need");
        let blocks: Vec<_> = (0..35)
            .map(|_| pool.allocate_bytes(100, 8).unwrap())
            .collect();
        assert_eq!(os.live_regions(), 4);
        assert!(pool.capacity() >= 35);
        let unique: HashSet<_> = blocks.iter().map(|b| b.as_ptr() as usize).collect();
        assert_eq!(unique.len(), 35);
    }
    assert_eq!(os.live_regions(), 0);
}

#[test]
fn fixed_os_pool_reserves_once_and_out_of_memory_is_none() {
    let os = HeapOs::with_limit(1);
    let pool = Pool::with_os(&os, 16, 16, Growth::Fixed(8)).unwrap();
    let capacity = pool.capacity();
    assert!(capacity >= 8);
    for _ in 0..capacity {
        assert!(pool.allocate_bytes(16, 16).is_some());
    }
    assert_eq!(pool.allocate_bytes(16, 16), None);
    let growing = Pool::with_os(&os, 16, 16, Growth::Chunks(8)).unwrap();
    assert_eq!(
        growing.allocate_bytes(16, 16),
        None,
        "the OS refuses a second region"
    );
    assert!(Pool::with_os(&os, 16, 16, Growth::Fixed(8)).is_none());
}

#[test]
fn buffers_can_be_added_later() {
    let (mut a, mut b) = (buffer(1024), buffer(1024));
    let pool = Pool::empty(64, 8);
    assert_eq!(pool.allocate_bytes(8, 8), None);
    assert!(pool.add_buffer(&mut a));
    let first = pool.capacity();
    assert!(pool.add_buffer(&mut b));
    assert!(pool.capacity() > first);
    let n = pool.capacity();
    assert!((0..n).all(|_| pool.allocate_bytes(64, 8).is_some()));
    assert_eq!(pool.allocate_bytes(64, 8), None);
}

#[test]
fn stats_count_used_free_peak_operations_and_waste() {
    let mut buf = buffer(8192);
    let pool = Pool::from_buffer(&mut buf, 64, 8).unwrap();
    let cap = pool.capacity();
    let a = pool.allocate_bytes(16, 8).unwrap();
    let b = pool.allocate_bytes(64, 8).unwrap();
    let s = pool.stats();
    assert_eq!(s.used_bytes, 128);
    assert_eq!(s.free_bytes, (cap - 2) * 64);
    assert_eq!(s.allocations, counted(2));
    // With the `stats` feature: 48 of the 128 used bytes were not asked for.
    let waste = if cfg!(feature = "stats") {
        48.0 / 128.0
    } else {
        0.0
    };
    assert!((s.fragmentation - waste).abs() < 1e-9);
    // SAFETY: live blocks.
    unsafe {
        pool.deallocate_bytes(a, 16, 8);
        pool.deallocate_bytes(b, 64, 8);
    }
    let s = pool.stats();
    assert_eq!(
        (s.used_bytes, s.peak_used_bytes, s.operations()),
        (0, 128, counted(4))
    );
    assert_eq!(s.fragmentation, 0.0);
}

#[cfg(debug_assertions)]
#[test]
fn double_free_and_foreign_pointers_are_refused_in_debug_builds() {
    let mut buf = buffer(4096);
    let pool = Pool::from_buffer(&mut buf, 32, 8).unwrap();
    let a = pool.allocate_bytes(32, 8).unwrap();
    let b = pool.allocate_bytes(32, 8).unwrap();
    // SAFETY: deliberate misuse, which the pool must refuse without touching memory.
    unsafe {
        pool.deallocate_bytes(a, 32, 8);
        pool.deallocate_bytes(a, 32, 8);
        let mut outside = 0u64;
        pool.deallocate_bytes(NonNull::from(&mut outside).cast(), 32, 8);
        pool.deallocate_bytes(NonNull::new(b.as_ptr().add(8)).unwrap(), 32, 8);
    }
    assert_eq!(pool.stats().misuse, 3);
    // The free list holds `a` once: the next two allocations are distinct.
    let c = pool.allocate_bytes(32, 8).unwrap();
    let d = pool.allocate_bytes(32, 8).unwrap();
    assert_eq!(c, a);
    assert_ne!(d, a);
}

#[test]
fn allocator_api2_vec_grows_in_place_up_to_a_block() {
    let mut buf = buffer(16 * 1024);
    let pool = Pool::from_buffer(&mut buf, 256, 8).unwrap();
    let mut v = allocator_api2::vec::Vec::new_in(&pool);
    for i in 0..32u64 {
        v.push(i);
    }
    assert_eq!(v.iter().sum::<u64>(), 31 * 32 / 2);
    assert!(
        v.try_reserve(1000).is_err(),
        "more than a block is an AllocError, not a panic"
    );
    drop(v);
    assert_eq!(pool.stats().used_bytes, 0);
}

#[test]
fn owned_handles_drop_their_value_and_free_on_drop() {
    use std::rc::Rc;
    let mut buf = buffer(4096);
    let pool = Pool::from_buffer(&mut buf, 32, 8).unwrap();
    let counter = Rc::new(());
    let handle = pool.boxed(Rc::clone(&counter)).unwrap();
    let at = handle.as_ptr();
    let moved = handle; // moves the pointer, not the value
    assert_eq!(moved.as_ptr(), at);
    assert_eq!(Rc::strong_count(&counter), 2);
    drop(moved);
    assert_eq!(Rc::strong_count(&counter), 1);
    assert_eq!(pool.stats().used_bytes, 0);
    let value = pool.boxed(41u32).unwrap();
    assert_eq!(value.into_inner() + 1, 42);
    assert_eq!(pool.stats().used_bytes, 0);
}

#[test]
fn a_spin_locked_pool_is_a_global_allocator() {
    static mut ARENA: [std::mem::MaybeUninit<u8>; 8192] = [std::mem::MaybeUninit::uninit(); 8192];
    static POOL: SpinLock<Pool<'static>> = SpinLock::new(Pool::empty(64, 16));
    // SAFETY: the only reference ever made to ARENA.
    let arena = unsafe { &mut *std::ptr::addr_of_mut!(ARENA) };
    assert!(POOL.lock().add_buffer(arena));
    let layout = Layout::from_size_align(40, 16).unwrap();
    // SAFETY: GlobalAlloc's contract: a non-zero layout; pointers passed back unchanged.
    unsafe {
        let p = POOL.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(7, 40);
        let q = POOL.realloc(p, layout, 64);
        assert_eq!(q, p, "a block already has 64 bytes");
        assert_eq!(*q.add(39), 7);
        assert!(POOL
            .realloc(q, Layout::from_size_align(64, 16).unwrap(), 65)
            .is_null());
        POOL.dealloc(q, Layout::from_size_align(64, 16).unwrap());
    }
    assert_eq!(POOL.lock().stats().used_bytes, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(usize),
    Free(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![3 => (1usize..=40).prop_map(Op::Alloc), 2 => any::<usize>().prop_map(Op::Free)],
        1..200,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Random allocate/free sequences against a model: blocks never overlap, keep their
    /// contents, and allocation fails exactly when every block is live; the used bytes and the
    /// peak (derived from the free list and the carved blocks, not counted) are the model's.
    #[test]
    fn pool_matches_model(ops in ops()) {
        let mut buf = buffer(2048);
        let pool = Pool::from_buffer(&mut buf, 40, 8).unwrap();
        let capacity = pool.capacity();
        let mut live: Vec<(NonNull<u8>, usize, u64)> = Vec::new();
        let mut peak = 0;
        for (seed, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc(size) => match pool.allocate_bytes(size, 8) {
                    Some(p) => {
                        prop_assert!(live.len() < capacity);
                        prop_assert_eq!(p.as_ptr() as usize % 8, 0);
                        for &(q, len, _) in &live {
                            prop_assert!(!overlap(p.as_ptr() as usize, size, q.as_ptr() as usize, len));
                        }
                        fill(p, size, seed as u64);
                        live.push((p, size, seed as u64));
                    }
                    None => prop_assert_eq!(live.len(), capacity),
                },
                Op::Free(i) if !live.is_empty() => {
                    let (p, len, seed) = live.swap_remove(i % live.len());
                    prop_assert!(holds(p, len, seed));
                    // SAFETY: a live block of this pool.
                    unsafe { pool.deallocate_bytes(p, len, 8) };
                }
                Op::Free(_) => {}
            }
            peak = peak.max(live.len());
            let s = pool.stats();
            prop_assert_eq!(s.used_bytes, live.len() * pool.block_size());
            prop_assert_eq!(s.peak_used_bytes, peak * pool.block_size());
            prop_assert_eq!(s.used_bytes + s.free_bytes, capacity * pool.block_size());
        }
    }
}
