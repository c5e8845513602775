//! Many threads hammering one lock-free pool: producers hand blocks to consumers (every free
//! remote), churners allocate and free locally, some through caches and some without. Every
//! block carries its owner's pattern, checked before it is freed; at the end every block is
//! back and each one is handed out exactly once by a final drain.

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::mpsc;

use allocscope_core::lock_free::LockFreePool;
use allocscope_core::typed::TypedAlloc;

const BLOCK: usize = 96;

/// A block handed to the consumer (which then owns it).
struct Sent(NonNull<u8>);

// SAFETY: the producer sends a block only when it stops using it.
unsafe impl Send for Sent {}

fn stamp(p: NonNull<u8>, tag: u64) {
    for i in 0..BLOCK / 8 {
        // SAFETY: a live block of BLOCK bytes, 8-aligned.
        unsafe { p.as_ptr().cast::<u64>().add(i).write(tag ^ i as u64) };
    }
}

fn stamped(p: NonNull<u8>, tag: u64) -> bool {
    // SAFETY: a live block written by `stamp`.
    (0..BLOCK / 8).all(|i| unsafe { p.as_ptr().cast::<u64>().add(i).read() } == tag ^ i as u64)
}

#[test]
fn producers_consumers_and_churners_never_share_a_block() {
    let rounds: u64 = if cfg!(miri) { 300 } else { 100_000 };
    let len = if cfg!(miri) { 64 << 10 } else { 1 << 20 };
    let mut buf: Vec<MaybeUninit<u8>> = Vec::with_capacity(len);
    // SAFETY: MaybeUninit<u8> needs no initialisation.
    unsafe { buf.set_len(len) };
    let pool = LockFreePool::from_buffer(&mut buf, BLOCK, 8).unwrap();
    let capacity = pool.capacity();
    std::thread::scope(|s| {
        let pool = &pool;
        for pair in 0..2u64 {
            let (tx, rx) = mpsc::sync_channel::<(Sent, u64)>(512);
            // Producer: allocates through its cache, stamps, sends.
            s.spawn(move || {
                let cache = pool.cache();
                for i in 0..rounds {
                    let tag = (pair << 60) | i;
                    let p = loop {
                        match cache.allocate_bytes(BLOCK, 8) {
                            Some(p) => break p,
                            None => std::thread::yield_now(),
                        }
                    };
                    stamp(p, tag);
                    tx.send((Sent(p), tag)).unwrap();
                }
            });
            // Consumer: checks and frees; pair 0 through a cache, pair 1 without one.
            s.spawn(move || {
                let cache = pool.cache();
                for (Sent(p), tag) in rx {
                    assert!(stamped(p, tag), "block {p:?} changed in flight");
                    // SAFETY: a live block the producer no longer touches.
                    unsafe {
                        if pair == 0 {
                            cache.deallocate_bytes(p, BLOCK, 8)
                        } else {
                            pool.deallocate_bytes(p, BLOCK, 8)
                        }
                    };
                }
            });
        }
        // Churner: keeps a window of live blocks, mixing the cached and cacheless paths.
        s.spawn(move || {
            let cache = pool.cache();
            let mut live: Vec<(NonNull<u8>, u64)> = Vec::new();
            for i in 0..rounds {
                let tag = (7 << 60) | i;
                if live.len() < 200 && (i * 7919) % 5 < 3 {
                    let p = if i % 4 == 0 {
                        pool.allocate_bytes(BLOCK, 8)
                    } else {
                        cache.allocate_bytes(BLOCK, 8)
                    };
                    if let Some(p) = p {
                        stamp(p, tag);
                        live.push((p, tag));
                    }
                } else if !live.is_empty() {
                    let (p, tag) = live.swap_remove((i as usize * 31) % live.len());
                    assert!(stamped(p, tag), "a live block was handed to someone else");
                    // SAFETY: a live block of ours.
                    unsafe { cache.deallocate_bytes(p, BLOCK, 8) };
                }
            }
            for (p, tag) in live {
                assert!(stamped(p, tag));
                // SAFETY: a live block of ours.
                unsafe { cache.deallocate_bytes(p, BLOCK, 8) };
            }
        });
    });
    let s = pool.stats();
    assert_eq!(s.used_bytes, 0);
    assert_eq!(s.misuse, 0);
    assert_eq!(s.allocations, s.deallocations);
    assert!(s.allocations >= 2 * rounds, "{} allocations", s.allocations);
    let drained: HashSet<_> = (0..capacity)
        .map(|_| pool.allocate_bytes(BLOCK, 8).unwrap())
        .collect();
    assert_eq!(
        drained.len(),
        capacity,
        "the shared list holds every block exactly once"
    );
    assert_eq!(pool.allocate_bytes(BLOCK, 8), None);
}
