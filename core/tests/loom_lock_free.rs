//! Loom models of the lock-free pool: the tagged Treiber stack of batches (including the ABA
//! interleaving: a pop stalled between reading the head and its CAS while the other thread
//! pops two batches and pushes the first back), the per-thread caches moving batches in a
//! producer/consumer hand-off, and the free-array stack: arrays claimed by flushes and
//! returned by refills at the same time.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p allocscope-core --release --test loom_lock_free`.
#![cfg(loom)]

use std::alloc::Layout;
use std::collections::HashSet;
use std::ptr::NonNull;

use allocscope_core::lock_free::LockFreePool;
use allocscope_core::os::Os;
use allocscope_core::typed::TypedAlloc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

/// An `Os` over the Rust heap (regions released by the pool's drop).
struct HeapOs;

impl Os for HeapOs {
    fn page_size(&self) -> usize {
        4096
    }
    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        // SAFETY: non-zero size.
        NonNull::new(unsafe { std::alloc::alloc(Layout::from_size_align(size, align).ok()?) })
    }
    unsafe fn commit(&self, _: NonNull<u8>, _: usize) -> bool {
        true
    }
    unsafe fn decommit(&self, _: NonNull<u8>, _: usize) {}
    unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: reserved above with this size and the page alignment the pool asks for.
        unsafe { std::alloc::dealloc(ptr.as_ptr(), Layout::from_size_align(size, 4096).unwrap()) }
    }
}

static OS: HeapOs = HeapOs;
const BLOCK: usize = 16;

fn model(f: impl Fn() + Sync + Send + 'static) {
    model_bounded(3, f);
}

/// Runs `f` under loom with at most `preemptions` preemptions per execution.
fn model_bounded(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    // The 64-block model's setup and drain are single-threaded but take a few thousand
    // atomic operations, each one of loom's branches.
    builder.max_branches = 20_000;
    builder.check(f);
}

fn pool(blocks: usize) -> Arc<LockFreePool<'static>> {
    let pool = LockFreePool::with_os(&OS, BLOCK, 8, blocks).unwrap();
    assert_eq!(pool.capacity(), blocks);
    Arc::new(pool)
}

/// Writes a tag over a block, lets the other thread run, and checks it is still there: two
/// threads holding the same block would see each other's tag. (Checked by hand: with the tag
/// step set to 0 the first model fails — a block comes out of the drain twice.)
fn own(p: NonNull<u8>, tag: u64) {
    // SAFETY: a live block of BLOCK (>= 8) bytes, 8-aligned.
    unsafe { p.as_ptr().cast::<u64>().write(tag) };
    thread::yield_now();
    // SAFETY: as above.
    assert_eq!(
        unsafe { p.as_ptr().cast::<u64>().read() },
        tag,
        "a block was handed out twice"
    );
}

/// After the threads: every block is on the shared list exactly once.
fn drained_whole(pool: &LockFreePool<'_>) {
    let all: HashSet<_> = (0..pool.capacity())
        .map(|_| pool.allocate_bytes(BLOCK, 8).unwrap())
        .collect();
    assert_eq!(all.len(), pool.capacity());
    assert!(pool.allocate_bytes(BLOCK, 8).is_none());
}

#[test]
fn cacheless_pops_and_pushes_on_single_block_batches_are_aba_safe() {
    model(|| {
        let pool = pool(3);
        // Three batches of one block each: every pop and push changes the head.
        let blocks: Vec<_> = (0..3)
            .map(|_| pool.allocate_bytes(BLOCK, 8).unwrap())
            .collect();
        for b in blocks {
            // SAFETY: live blocks.
            unsafe { pool.deallocate_bytes(b, BLOCK, 8) };
        }
        let other = Arc::clone(&pool);
        let t = thread::spawn(move || {
            // Pop two, push the first back: the ABA pattern against the main thread's pop.
            // No yield in between: loom runs another thread at every yield, which would
            // let the main thread finish its pop before the pattern is complete.
            let a = other.allocate_bytes(BLOCK, 8).unwrap();
            let b = other.allocate_bytes(BLOCK, 8).unwrap();
            // SAFETY: live blocks of this thread.
            unsafe { other.deallocate_bytes(a, BLOCK, 8) };
            own(b, 2);
            // SAFETY: as above.
            unsafe { other.deallocate_bytes(b, BLOCK, 8) };
        });
        let c = pool.allocate_bytes(BLOCK, 8).unwrap();
        own(c, 3);
        // SAFETY: a live block of this thread.
        unsafe { pool.deallocate_bytes(c, BLOCK, 8) };
        t.join().unwrap();
        drained_whole(&pool);
    });
}

#[test]
fn a_batch_split_by_a_cacheless_pop_races_a_push() {
    model(|| {
        let pool = pool(2);
        // One batch of two blocks: a cacheless pop takes it and pushes the rest back.
        let other = Arc::clone(&pool);
        let t = thread::spawn(move || {
            let a = other.allocate_bytes(BLOCK, 8).unwrap();
            own(a, 1);
            // SAFETY: a live block of this thread.
            unsafe { other.deallocate_bytes(a, BLOCK, 8) };
        });
        // Never a false exhaustion while the other thread holds the split batch.
        let b = pool.allocate_bytes(BLOCK, 8).unwrap();
        own(b, 2);
        // SAFETY: a live block of this thread.
        unsafe { pool.deallocate_bytes(b, BLOCK, 8) };
        t.join().unwrap();
        drained_whole(&pool);
    });
}

#[test]
fn producer_cache_hands_blocks_to_consumer_cache() {
    model(|| {
        let pool = pool(2);
        let mailbox = Arc::new(AtomicUsize::new(0));
        let (p2, m2) = (Arc::clone(&pool), Arc::clone(&mailbox));
        let consumer = thread::spawn(move || {
            let cache = p2.cache();
            let mut got = 0;
            while got < 2 {
                // Acquire: pairs with the producer's Release store; the block's contents and
                // ownership come with it.
                let addr = m2.swap(0, Ordering::Acquire);
                if addr == 0 {
                    thread::yield_now();
                    continue;
                }
                let p = NonNull::new(addr as *mut u8).unwrap();
                // SAFETY: the producer wrote the tag before publishing the block.
                assert_eq!(unsafe { p.as_ptr().cast::<u64>().read() }, 7);
                // SAFETY: a live block handed over by the producer.
                unsafe { cache.deallocate_bytes(p, BLOCK, 8) };
                got += 1;
            }
            // Dropping the cache flushes the blocks as a batch.
        });
        {
            let cache = pool.cache();
            for _ in 0..2 {
                let p = loop {
                    match cache.allocate_bytes(BLOCK, 8) {
                        Some(p) => break p,
                        None => thread::yield_now(),
                    }
                };
                // SAFETY: a fresh block.
                unsafe { p.as_ptr().cast::<u64>().write(7) };
                // Release: the tag happens-before the consumer reads it.
                while mailbox
                    .compare_exchange(0, p.as_ptr() as usize, Ordering::Release, Ordering::Relaxed)
                    .is_err()
                {
                    thread::yield_now();
                }
            }
        }
        consumer.join().unwrap();
        assert_eq!(pool.stats().used_bytes, 0);
        drained_whole(&pool);
    });
}

/// A refill copies an array batch out of the pool's single batch array (4 blocks: 4 / BATCH
/// + 1 arrays) and frees it, while another cache flushes and races to claim that array (the
/// loser of the claim makes a chain). Blocks listed in an array must reach the popper as
/// written, and the array must not be rewritten before they are read: either would hand a
/// block out twice. (Checked by hand: freeing the array before the copy fails this model.)
#[test]
fn array_batches_are_handed_over_and_their_array_reused() {
    model(|| {
        let pool = pool(4);
        let blocks: Vec<_> = (0..4)
            .map(|_| pool.allocate_bytes(BLOCK, 8).unwrap())
            .collect();
        // Two batches of two: the first flush claims the only array, the second makes a chain.
        for pair in blocks.chunks(2) {
            let cache = pool.cache();
            for &b in pair {
                // SAFETY: live blocks of this thread.
                unsafe { cache.deallocate_bytes(b, BLOCK, 8) };
            }
        }
        // This cache takes the chain (on top), the other thread's the array batch.
        let mine = pool.cache();
        let held: Vec<_> = (0..2)
            .map(|_| mine.allocate_bytes(BLOCK, 8).unwrap())
            .collect();
        let other = Arc::clone(&pool);
        let t = thread::spawn(move || {
            let cache = other.cache();
            let p = loop {
                match cache.allocate_bytes(BLOCK, 8) {
                    Some(p) => break p,
                    None => thread::yield_now(),
                }
            };
            own(p, 1);
            // SAFETY: a live block of this thread.
            unsafe { cache.deallocate_bytes(p, BLOCK, 8) };
            // Dropping the cache flushes its two blocks as one batch.
        });
        for (i, &p) in held.iter().enumerate() {
            own(p, 2 + i as u64);
            // SAFETY: live blocks of this thread.
            unsafe { mine.deallocate_bytes(p, BLOCK, 8) };
        }
        drop(mine);
        t.join().unwrap();
        assert_eq!(pool.stats().used_bytes, 0);
        drained_whole(&pool);
    });
}

/// The free arrays live on their own tagged stack: a refill that empties an array batch pushes
/// the array back while another cache's flush pops that stack to claim one, and the refilling
/// cache then flushes and claims again. With 64 blocks the pool has two arrays, so the two
/// claims and the return race on the same head word (and, when the return lands first, on
/// the same array). A claim that took an array still in use, or a return that lost a free
/// array, would overwrite or strand a listed batch: the drain would find a block twice or miss
/// one. (Checked by hand: returning the array before its blocks are copied fails this model.
/// Weakening the return's Release CAS to Relaxed does not: what it orders is the refill's
/// reads before the next claimer's writes, a load-buffering outcome loom does not produce.
/// Nor does the model need the free stack's tag: from one thread both stacks move arrays in
/// nested order, so the ABA pattern on the free stack needs a third thread mid-operation.)
#[test]
fn free_arrays_are_claimed_and_returned_while_batches_move() {
    // Bound 6: a few seconds in release builds (bound 3 explores 322 executions).
    model_bounded(6, || {
        let pool = pool(64);
        let blocks: Vec<_> = (0..4)
            .map(|_| pool.allocate_bytes(BLOCK, 8).unwrap())
            .collect();
        // One array batch on top of the list (the first array claimed; the second stays free).
        {
            let cache = pool.cache();
            for &b in &blocks[..2] {
                // SAFETY: live blocks of this thread.
                unsafe { cache.deallocate_bytes(b, BLOCK, 8) };
            }
        }
        let other = Arc::clone(&pool);
        let t = thread::spawn(move || {
            let cache = other.cache();
            // Refills from the array batch and returns the array to the free stack.
            let p = cache.allocate_bytes(BLOCK, 8).unwrap();
            own(p, 1);
            // SAFETY: a live block of this thread.
            unsafe { cache.deallocate_bytes(p, BLOCK, 8) };
            // Dropping the cache flushes its two blocks: a second claim.
            drop(cache);
        });
        // Flushes the other two blocks: a claim racing the return and the second claim.
        {
            let cache = pool.cache();
            for &b in &blocks[2..] {
                own(b, 2);
                // SAFETY: live blocks of this thread.
                unsafe { cache.deallocate_bytes(b, BLOCK, 8) };
            }
        }
        t.join().unwrap();
        assert_eq!(pool.stats().used_bytes, 0);
        drained_whole(&pool);
    });
}
