//! The strategy allocators side by side with glibc malloc (through `std::alloc::System`),
//! allocscope's general heap, and the best crate of each kind, on the same pattern in one run.
//!
//! `cargo bench --bench strategies -- --warm-up-time 1 --measurement-time 2`
//!
//! Every benchmark reports the time of one iteration of `N` operations (criterion's
//! throughput figure is per element: divide 1e9 by it for nanoseconds per pair). Patterns:
//!
//! * `pool_pairs`: fixed 64 B, an allocation immediately freed, 1000 times (the floor case);
//! * `pool_bursts`: fixed 64 B, bursts of 1000 allocated then freed LIFO;
//! * `stack_frame`: a frame of 1000 allocations of 8–256 B, then everything freed at once;
//! * `buddy_random`: 4096 live blocks of 8–256 B, replaced at random (free + allocate);
//! * `lock_free_producer_consumer`: one thread allocates 64-byte blocks and hands them through
//!   a ring of 4096 slots to another that frees them (every free remote); time per block.

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use allocscope_core::buddy::Buddy;
use allocscope_core::lock_free::LockFreePool;
use allocscope_core::pool::Pool;
use allocscope_core::slab::SlabCache;
use allocscope_core::stack::Stack;
use allocscope_core::typed::TypedAlloc;
use allocscope_core::Allocscope;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const N: usize = 1000;
const BLOCK: Layout = match Layout::from_size_align(64, 8) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// A deterministic sequence of sizes (8–256 B) and slot indices, the same for everyone.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn size(&mut self) -> usize {
        8 + (self.next() % 249) as usize
    }
}

fn sizes(n: usize) -> Vec<usize> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    (0..n).map(|_| rng.size()).collect()
}

/// `alloc` / `free` through a `GlobalAlloc` (glibc, allocscope's heap).
fn global_pairs<A: GlobalAlloc>(a: &A) {
    for _ in 0..N {
        // SAFETY: a non-zero layout; the pointer is freed with it at once.
        unsafe {
            let p = a.alloc(BLOCK);
            black_box(p).write(1);
            a.dealloc(p, BLOCK);
        }
    }
}

fn typed_pairs<A: TypedAlloc>(a: &A) {
    for _ in 0..N {
        let p = a.allocate_bytes(64, 8).unwrap();
        // SAFETY: a live 64-byte block, freed at once.
        unsafe {
            black_box(p).as_ptr().write(1);
            a.deallocate_bytes(p, 64, 8);
        }
    }
}

fn global_bursts<A: GlobalAlloc>(a: &A, held: &mut Vec<*mut u8>) {
    // SAFETY: non-zero layouts; every pointer freed once with its layout.
    unsafe {
        for _ in 0..N {
            let p = a.alloc(BLOCK);
            p.write(1);
            held.push(p);
        }
        while let Some(p) = held.pop() {
            a.dealloc(p, BLOCK);
        }
    }
}

fn typed_bursts<A: TypedAlloc>(a: &A, held: &mut Vec<NonNull<u8>>) {
    for _ in 0..N {
        let p = a.allocate_bytes(64, 8).unwrap();
        // SAFETY: a live block.
        unsafe { p.as_ptr().write(1) };
        held.push(p);
    }
    while let Some(p) = held.pop() {
        // SAFETY: live blocks, each freed once.
        unsafe { a.deallocate_bytes(p, 64, 8) };
    }
}

fn pool_benches(c: &mut Criterion) {
    let pool = Pool::new(64, 8).unwrap();
    let slab = SlabCache::<[u64; 8]>::new();
    let magazine = slab.magazine();
    let lock_free = LockFreePool::new(64, 8, 4 * N).unwrap();
    let cache = lock_free.cache();
    let object_pool = lockfree_object_pool::LinearObjectPool::<[u8; 64]>::new(|| [0; 64], |_| {});
    let heap = Allocscope::new();

    let mut group = c.benchmark_group("pool_pairs");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("glibc", |b| b.iter(|| global_pairs(&System)));
    group.bench_function("allocscope_heap", |b| b.iter(|| global_pairs(&heap)));
    group.bench_function("pool", |b| b.iter(|| typed_pairs(&pool)));
    group.bench_function("slab_magazine", |b| b.iter(|| typed_pairs(&magazine)));
    group.bench_function("lock_free_cache", |b| b.iter(|| typed_pairs(&cache)));
    group.bench_function("lockfree_object_pool", |b| {
        b.iter(|| {
            for _ in 0..N {
                let mut obj = object_pool.pull();
                black_box(&mut obj)[0] = 1;
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("pool_bursts");
    group.throughput(Throughput::Elements(N as u64));
    let mut raw = Vec::with_capacity(N);
    let mut blocks = Vec::with_capacity(N);
    group.bench_function("glibc", |b| b.iter(|| global_bursts(&System, &mut raw)));
    group.bench_function("allocscope_heap", |b| {
        b.iter(|| global_bursts(&heap, &mut raw))
    });
    group.bench_function("pool", |b| b.iter(|| typed_bursts(&pool, &mut blocks)));
    group.bench_function("slab_magazine", |b| {
        b.iter(|| typed_bursts(&magazine, &mut blocks))
    });
    group.bench_function("lock_free_cache", |b| {
        b.iter(|| typed_bursts(&cache, &mut blocks))
    });
    group.bench_function("lockfree_object_pool", |b| {
        let mut held = Vec::with_capacity(N);
        b.iter(|| {
            for _ in 0..N {
                let mut obj = object_pool.pull();
                obj[0] = 1;
                held.push(obj);
            }
            while held.pop().is_some() {}
        })
    });
    group.finish();
}

fn stack_benches(c: &mut Criterion) {
    let sizes = sizes(N);
    let mut group = c.benchmark_group("stack_frame");
    group.throughput(Throughput::Elements(N as u64));
    let mut held = Vec::with_capacity(N);
    group.bench_function("glibc", |b| {
        b.iter(|| {
            for &size in &sizes {
                let layout = Layout::from_size_align(size, 8).unwrap();
                // SAFETY: a non-zero layout.
                let p = unsafe { System.alloc(layout) };
                // SAFETY: a live block.
                unsafe { p.write(1) };
                held.push((p, layout));
            }
            for (p, layout) in held.drain(..) {
                // SAFETY: live blocks, freed once.
                unsafe { System.dealloc(p, layout) };
            }
        })
    });
    let mut bump = bumpalo::Bump::with_capacity(256 * N);
    group.bench_function("bumpalo", |b| {
        b.iter(|| {
            for &size in &sizes {
                let p = bump.alloc_layout(Layout::from_size_align(size, 8).unwrap());
                // SAFETY: a live block.
                unsafe { black_box(p).as_ptr().write(1) };
            }
            bump.reset();
        })
    });
    let mut stack = Stack::new(256 * N).unwrap();
    group.bench_function("stack", |b| {
        b.iter(|| {
            for &size in &sizes {
                let p = stack.allocate_bytes(size, 8).unwrap();
                // SAFETY: a live block.
                unsafe { black_box(p).as_ptr().write(1) };
            }
            stack.reset();
        })
    });
    group.finish();
}

/// 4096 live blocks replaced at random: `alloc(size)` / `free(ptr, size)` closures.
fn random_replace(
    mut alloc: impl FnMut(usize) -> NonNull<u8>,
    mut free: impl FnMut(NonNull<u8>, usize),
    slots: &mut [(NonNull<u8>, usize)],
    rng: &mut XorShift,
) {
    for _ in 0..N {
        let i = (rng.next() % slots.len() as u64) as usize;
        let (p, size) = slots[i];
        free(p, size);
        let size = rng.size();
        let p = alloc(size);
        // SAFETY: a live block of `size` >= 8 bytes.
        unsafe { p.as_ptr().write(1) };
        slots[i] = (p, size);
    }
}

fn buddy_benches(c: &mut Criterion) {
    const LIVE: usize = 4096;
    const ARENA: usize = 4 << 20;
    let mut group = c.benchmark_group("buddy_random");
    group.throughput(Throughput::Elements(N as u64));
    let layout = |size| Layout::from_size_align(size, 8).unwrap();

    fn run(
        group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
        name: &str,
        mut alloc: impl FnMut(usize) -> NonNull<u8>,
        mut free: impl FnMut(NonNull<u8>, usize),
    ) {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut slots: Vec<_> = (0..LIVE)
            .map(|_| {
                let size = rng.size();
                (alloc(size), size)
            })
            .collect();
        group.bench_function(name, |b| {
            b.iter(|| random_replace(&mut alloc, &mut free, &mut slots, &mut rng))
        });
        for (p, size) in slots {
            free(p, size);
        }
    }

    // The harness alone: every slot keeps a 256-byte home, nothing is allocated; what the
    // others spend above this is the allocator's own work.
    let mut homes = vec![[0u8; 256]; LIVE + 1];
    let base = homes.as_mut_ptr() as usize;
    let mut next_home = 0;
    run(
        &mut group,
        "harness_floor",
        |_| {
            next_home = (next_home + 1) % (LIVE + 1);
            NonNull::new((base + next_home * 256) as *mut u8).unwrap()
        },
        |_, _| {},
    );
    drop(homes);
    run(
        &mut group,
        "glibc",
        // SAFETY: non-zero layouts; pointers freed once with their layout.
        |s| NonNull::new(unsafe { System.alloc(layout(s)) }).unwrap(),
        // SAFETY: pointers from the closure above, freed once with their layout.
        |p, s| unsafe { System.dealloc(p.as_ptr(), layout(s)) },
    );
    let heap = Allocscope::new();
    run(
        &mut group,
        "allocscope_heap",
        // SAFETY: as above.
        |s| NonNull::new(unsafe { heap.alloc(layout(s)) }).unwrap(),
        // SAFETY: as above.
        |p, s| unsafe { heap.dealloc(p.as_ptr(), layout(s)) },
    );
    let buddy = Buddy::new(ARENA).unwrap();
    run(
        &mut group,
        "buddy",
        |s| buddy.allocate_bytes(s, 8).unwrap(),
        // SAFETY: live blocks of this allocator.
        |p, s| unsafe { buddy.deallocate_bytes(p, s, 8) },
    );
    let mut arena = vec![0u8; ARENA];
    let mut theirs = buddy_system_allocator::Heap::<32>::new();
    // SAFETY: the arena outlives the heap and is used by nothing else.
    unsafe { theirs.init(arena.as_mut_ptr() as usize, ARENA) };
    let theirs = std::cell::RefCell::new(theirs);
    run(
        &mut group,
        "buddy_system_allocator",
        |s| theirs.borrow_mut().alloc(layout(s)).unwrap(),
        |p, s| theirs.borrow_mut().dealloc(p, layout(s)),
    );
    group.finish();
    drop(arena);
}

/// Waits politely: spin a little, then let the other thread have the core (two cores, and
/// other processes may run).
fn wait(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// One producer allocating blocks, one consumer freeing them (every free remote), linked by a
/// single-producer single-consumer ring of addresses; returns the time for `blocks` blocks.
fn producer_consumer<A, F>(blocks: u64, make_producer: A, make_consumer: F) -> Duration
where
    A: FnOnce() -> Box<dyn FnMut() -> usize + Send> + Send,
    F: FnOnce() -> Box<dyn FnMut(usize) + Send> + Send,
{
    const RING: usize = 4096;
    let ring: Vec<AtomicUsize> = (0..RING).map(|_| AtomicUsize::new(0)).collect();
    let ring = &ring;
    let start = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut alloc = make_producer();
            for i in 0..blocks as usize {
                let p = alloc();
                let slot = &ring[i % RING];
                let mut spins = 0;
                // Acquire: the consumer is done with the slot's previous address.
                while slot.load(Ordering::Acquire) != 0 {
                    wait(&mut spins);
                }
                // Release: the block's contents and ownership go with the address.
                slot.store(p, Ordering::Release);
            }
        });
        s.spawn(move || {
            let mut free = make_consumer();
            for i in 0..blocks as usize {
                let slot = &ring[i % RING];
                let mut spins = 0;
                let p = loop {
                    // Acquire: pairs with the producer's Release store.
                    let p = slot.load(Ordering::Acquire);
                    if p != 0 {
                        break p;
                    }
                    wait(&mut spins);
                };
                // Release: the slot may be reused.
                slot.store(0, Ordering::Release);
                free(p);
            }
        });
    });
    start.elapsed()
}

fn lock_free_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock_free_producer_consumer");
    group.throughput(Throughput::Elements(1));
    // The harness alone: blocks come from a fixed array, frees do nothing.
    let homes: &'static mut [u64] = Box::leak(vec![0u64; 8 * 8192].into_boxed_slice());
    let homes_base = homes.as_mut_ptr() as usize;
    group.bench_function(BenchmarkId::from_parameter("harness_floor"), |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                move || {
                    let mut next = 0;
                    Box::new(move || {
                        next = (next + 1) % 8192;
                        let p = (homes_base + next * 64) as *mut u8;
                        // SAFETY: a 64-byte slot of the leaked array.
                        unsafe { p.write(1) };
                        p as usize
                    })
                },
                || {
                    Box::new(|p| {
                        black_box(p);
                    })
                },
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("glibc"), |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || {
                    Box::new(|| {
                        // SAFETY: a non-zero layout.
                        let p = unsafe { System.alloc(BLOCK) };
                        // SAFETY: a live block.
                        unsafe { p.write(1) };
                        p as usize
                    })
                },
                // SAFETY: blocks from the producer's System.alloc with this layout.
                || Box::new(|p| unsafe { System.dealloc(p as *mut u8, BLOCK) }),
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("allocscope_heap"), |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || {
                    Box::new(|| {
                        // SAFETY: a non-zero layout.
                        let p = unsafe { Allocscope.alloc(BLOCK) };
                        // SAFETY: a live block.
                        unsafe { p.write(1) };
                        p as usize
                    })
                },
                // SAFETY: blocks from the producer's Allocscope.alloc with this layout.
                || Box::new(|p| unsafe { Allocscope.dealloc(p as *mut u8, BLOCK) }),
            )
        })
    });
    let pool: &'static LockFreePool<'static> =
        Box::leak(Box::new(LockFreePool::new(64, 8, 8192).unwrap()));
    group.bench_function(BenchmarkId::from_parameter("lock_free_pool"), |b| {
        b.iter_custom(|iters| {
            producer_consumer(
                iters,
                || {
                    let cache = pool.cache();
                    Box::new(move || {
                        let p = loop {
                            match cache.allocate_bytes(64, 8) {
                                Some(p) => break p,
                                None => std::thread::yield_now(),
                            }
                        };
                        // SAFETY: a live block.
                        unsafe { p.as_ptr().write(1) };
                        p.as_ptr() as usize
                    })
                },
                || {
                    let cache = pool.cache();
                    Box::new(move |p| {
                        // SAFETY: a live block of the pool handed over by the producer.
                        unsafe {
                            cache.deallocate_bytes(NonNull::new_unchecked(p as *mut u8), 64, 8)
                        }
                    })
                },
            )
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    pool_benches,
    stack_benches,
    buddy_benches,
    lock_free_benches
);
criterion_main!(benches);
