//! Many threads, sizes from 1 B to 1 MiB, a third of the frees done by another thread, every
//! block filled with a pattern derived from its address and size and checked before it is freed.
//! Any corruption (a block handed out twice, a free list overwriting live data, a remote free
//! lost or applied twice) shows up as a pattern mismatch or a crash.

use std::sync::{mpsc, PoisonError, RwLock};

use allocscope_core::{heap, Allocscope};

#[global_allocator]
static GLOBAL: Allocscope = Allocscope::new();

/// The churn test measures the process's committed bytes, which the other tests' threads move
/// by megabytes while they run: it takes this lock exclusively, they share it.
static COMMITTED_MEASURED: RwLock<()> = RwLock::new(());

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pattern(addr: usize, size: usize, i: usize) -> u8 {
    (addr >> 4).wrapping_add(size).wrapping_add(i * 31) as u8
}

/// Writes the pattern over the whole block (sparsely above 4 KiB to keep the test fast:
/// first and last 64 bytes and every 509th byte).
fn fill(p: *mut u8, size: usize) {
    for i in sample(size) {
        // SAFETY: p..p+size is a live block.
        unsafe { *p.add(i) = pattern(p as usize, size, i) };
    }
}

fn check(p: *const u8, size: usize) {
    for i in sample(size) {
        // SAFETY: p..p+size is a live block.
        let got = unsafe { *p.add(i) };
        assert_eq!(
            got,
            pattern(p as usize, size, i),
            "block {p:p} size {size} byte {i}"
        );
    }
}

fn sample(size: usize) -> impl Iterator<Item = usize> {
    let dense = size <= 4096;
    (0..size).filter(move |&i| dense || i < 64 || i >= size - 64 || i % 509 == 0)
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.next() % 100 {
        0..=69 => 1 + (rng.next() % 256) as usize,
        70..=89 => 1 + (rng.next() % 8192) as usize,
        90..=98 => 1 + (rng.next() % 131_072) as usize,
        _ => 1 + (rng.next() % (1 << 20)) as usize,
    }
}

fn run(threads: usize, ops: usize) {
    let _shared = COMMITTED_MEASURED
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| mpsc::channel::<Vec<(usize, usize)>>())
        .unzip();
    let handles: Vec<_> = receivers
        .into_iter()
        .enumerate()
        .map(|(t, rx)| {
            let next = senders[(t + 1) % threads].clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678_9ABC));
                let mut live: Vec<(usize, usize)> = Vec::new();
                let mut outgoing = Vec::new();
                for op in 0..ops {
                    if live.len() < 512 || rng.next() % 2 == 0 {
                        let size = random_size(&mut rng);
                        let align = 1usize << (rng.next() % 7);
                        let p = heap::alloc(size, align);
                        assert!(!p.is_null(), "size {size}");
                        assert_eq!(p as usize % align, 0);
                        fill(p, size);
                        live.push((p as usize, size));
                    } else {
                        let i = (rng.next() as usize) % live.len();
                        let (p, size) = live.swap_remove(i);
                        check(p as *const u8, size);
                        if rng.next() % 3 == 0 {
                            outgoing.push((p, size));
                        } else {
                            // SAFETY: live block, freed once.
                            unsafe { heap::free(p as *mut u8) };
                        }
                    }
                    if outgoing.len() >= 64 || op + 1 == ops {
                        let _ = next.send(std::mem::take(&mut outgoing));
                    }
                    // Blocks other threads hand us: check, then free remotely.
                    while let Ok(batch) = rx.try_recv() {
                        for (p, size) in batch {
                            check(p as *const u8, size);
                            // SAFETY: handed over, freed once.
                            unsafe { heap::free(p as *mut u8) };
                        }
                    }
                }
                for (p, size) in live {
                    check(p as *const u8, size);
                    // SAFETY: live block, freed once.
                    unsafe { heap::free(p as *mut u8) };
                }
                rx
            })
        })
        .collect();
    drop(senders);
    // Drain what arrived after each thread's last look.
    for h in handles {
        let rx = h.join().expect("a stress thread failed");
        for batch in rx.try_iter() {
            for (p, size) in batch {
                check(p as *const u8, size);
                // SAFETY: handed over, freed once.
                unsafe { heap::free(p as *mut u8) };
            }
        }
    }
}

#[test]
fn four_threads() {
    run(4, 40_000);
}

#[test]
fn sixteen_threads() {
    run(16, 10_000);
}

#[test]
fn threads_come_and_go_and_their_pages_are_adopted() {
    let _alone = COMMITTED_MEASURED
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    let before = allocscope_core::stats();
    // Blocks that outlive the threads that allocated them.
    let mut kept = Vec::new();
    for round in 0..20 {
        let blocks = std::thread::spawn(move || {
            (0..2000)
                .map(|i| {
                    let size = 16 + (i * 13 + round) % 700;
                    let p = heap::alloc(size, 8);
                    fill(p, size);
                    (p as usize, size)
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        kept.extend(blocks);
    }
    for (p, size) in kept.drain(..) {
        check(p as *const u8, size);
        // SAFETY: live block, freed once (remotely: its thread is gone).
        unsafe { heap::free(p as *mut u8) };
    }
    // New threads take the exited threads' heaps and release their emptied pages.
    for _ in 0..4 {
        std::thread::spawn(|| {
            let p = heap::alloc(100, 8);
            // SAFETY: live block, freed once.
            unsafe { heap::free(p) };
            allocscope_core::collect();
        })
        .join()
        .unwrap();
    }
    allocscope_core::collect();
    let after = allocscope_core::stats();
    // 40 000 blocks of up to 700 B were live (~14 MB); the margin is the test harness's own
    // allocations and the pages kept as current.
    assert!(
        after.committed_bytes < before.committed_bytes + (8 << 20),
        "committed grew from {} to {}",
        before.committed_bytes,
        after.committed_bytes
    );
}
