//! The strategy allocators side by side with glibc malloc (through `std::alloc::System`),
//! allocscope's general heap, and the best crate of each kind, on the same pattern in one run.
//!
//! `cargo bench --bench strategies -- --warm-up-time 1 --measurement-time 2`
//!
//! Every benchmark reports the time of one iteration of `N` operations (criterion's
//! throughput figure is per element: divide 1e9 by it for nanoseconds per pair). Patterns:
//!
//! * `pool_pairs`: fixed 64 B, an allocation immediately freed, 1000 times (the floor case).
//!   Each block gets a volatile one-byte write, which the compiler cannot drop, so neither can
//!   it drop the allocation; unlike `black_box(p).write(1)` it adds no spill of the pointer to
//!   the stack and reload (measured at 0.36 ns a pair here, 3.5 times the pool's budget);
//! * `pool_bursts`: fixed 64 B, bursts of 1000 allocated (each written once, its pointer
//!   kept in a fixed array) then freed LIFO from that array;
//! * `harness_floor` (in both): the same loops, writes and array over fixed blocks, without
//!   allocating (as for `buddy_random` and the ring); what an allocator spends above it is its
//!   own work;
//! * `stack_frame`: a frame of 1000 allocations of 8–256 B (each written once, about 130 KiB:
//!   more than L1), then everything freed at once; `harness_floor` writes at the same
//!   addresses without allocating; `stack_frame_l1`: the same with 128 allocations (about
//!   17 KiB, inside L1), where the allocator's own work is not hidden by the writes' misses;
//! * `buddy_random`: 4096 live blocks of 8–256 B, replaced at random (free + allocate);
//! * `lock_free_producer_consumer`: one thread allocates 64-byte blocks and hands them in
//!   batches of 256 to another that frees them (every free remote); time per block, in the
//!   steady state (both threads live for the whole benchmark).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

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
            p.write_volatile(1);
            a.dealloc(p, BLOCK);
        }
    }
}

fn typed_pairs<A: TypedAlloc>(a: &A) {
    for _ in 0..N {
        let p = a.allocate_bytes(64, 8).unwrap();
        // SAFETY: a live 64-byte block, freed at once.
        unsafe {
            p.as_ptr().write_volatile(1);
            a.deallocate_bytes(p, 64, 8);
        }
    }
}

/// The pointers of a burst: a fixed array, so the harness around a burst is a store and a
/// load per block (a `Vec`'s push and pop cost about as much as the pool's own work).
type Held = Box<[*mut u8; N]>;

fn held() -> Held {
    Box::new([std::ptr::null_mut(); N])
}

/// The harness alone for the pair and burst patterns: the same loops and writes over `N`
/// fixed 64-byte homes instead of an allocator.
struct Homes(Vec<[u64; 8]>);

impl Homes {
    fn new() -> Self {
        Homes(vec![[0; 8]; N])
    }

    fn pairs(&mut self) {
        let home = self.0.as_mut_ptr().cast::<u8>();
        for _ in 0..N {
            // SAFETY: the first home, 64 bytes of ours.
            unsafe { home.write_volatile(1) };
        }
    }

    fn bursts(&mut self, held: &mut Held) {
        for (slot, home) in held.iter_mut().zip(self.0.iter_mut()) {
            let p = (home as *mut [u64; 8]).cast::<u8>();
            // SAFETY: a home of ours.
            unsafe { p.write(1) };
            *slot = p;
        }
        // What the free loop reads: every pointer, newest first.
        let mut seen = 0;
        for &p in held.iter().rev() {
            seen ^= p as usize;
        }
        black_box(seen);
    }
}

fn global_bursts<A: GlobalAlloc>(a: &A, held: &mut Held) {
    // SAFETY: non-zero layouts; every pointer freed once with its layout.
    unsafe {
        for slot in held.iter_mut() {
            let p = a.alloc(BLOCK);
            p.write(1);
            *slot = p;
        }
        for &p in held.iter().rev() {
            a.dealloc(p, BLOCK);
        }
    }
}

fn typed_bursts<A: TypedAlloc>(a: &A, held: &mut Held) {
    for slot in held.iter_mut() {
        let p = a.allocate_bytes(64, 8).unwrap();
        // SAFETY: a live block.
        unsafe { p.as_ptr().write(1) };
        *slot = p.as_ptr();
    }
    for &p in held.iter().rev() {
        // SAFETY: live blocks of this allocator, each freed once.
        unsafe { a.deallocate_bytes(NonNull::new_unchecked(p), 64, 8) };
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

    let mut homes = Homes::new();
    let mut group = c.benchmark_group("pool_pairs");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function("harness_floor", |b| b.iter(|| homes.pairs()));
    group.bench_function("glibc", |b| b.iter(|| global_pairs(&System)));
    group.bench_function("allocscope_heap", |b| b.iter(|| global_pairs(&heap)));
    group.bench_function("pool", |b| b.iter(|| typed_pairs(&pool)));
    group.bench_function("slab_magazine", |b| b.iter(|| typed_pairs(&magazine)));
    group.bench_function("lock_free_cache", |b| b.iter(|| typed_pairs(&cache)));
    group.bench_function("lockfree_object_pool", |b| {
        b.iter(|| {
            for _ in 0..N {
                let mut obj = object_pool.pull();
                // SAFETY: the object's first byte, ours while `obj` lives.
                unsafe { obj.as_mut_ptr().write_volatile(1) };
            }
        })
    });
    group.finish();

    let mut group = c.benchmark_group("pool_bursts");
    group.throughput(Throughput::Elements(N as u64));
    let mut held = held();
    group.bench_function("harness_floor", |b| b.iter(|| homes.bursts(&mut held)));
    group.bench_function("glibc", |b| b.iter(|| global_bursts(&System, &mut held)));
    group.bench_function("allocscope_heap", |b| {
        b.iter(|| global_bursts(&heap, &mut held))
    });
    group.bench_function("pool", |b| b.iter(|| typed_bursts(&pool, &mut held)));
    group.bench_function("slab_magazine", |b| {
        b.iter(|| typed_bursts(&magazine, &mut held))
    });
    group.bench_function("lock_free_cache", |b| {
        b.iter(|| typed_bursts(&cache, &mut held))
    });
    // Its objects are guards (returned on drop), so they are held in a Vec.
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
    // A frame that spills out of L1 (about 130 KiB: the writes to fresh lines are most of
    // what a bump allocation costs, for every allocator) and one that stays in it (128
    // allocations, about 17 KiB: the allocator's own work shows).
    stack_frame(c, "stack_frame", N);
    stack_frame(c, "stack_frame_l1", 128);
}

/// A frame of `count` allocations of 8–256 B, each written once, then everything freed.
fn stack_frame(c: &mut Criterion, name: &str, count: usize) {
    let sizes = sizes(count);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(count as u64));
    // The harness alone: the same writes at the addresses a bump allocator gives, in a
    // buffer of our own.
    let mut frame = vec![0u64; 256 * count / 8];
    group.bench_function("harness_floor", |b| {
        let base = frame.as_mut_ptr().cast::<u8>();
        b.iter(|| {
            let mut at = 0;
            for &size in &sizes {
                // SAFETY: `at` stays below the sum of the rounded sizes, within the buffer.
                unsafe { base.add(at).write_volatile(1) };
                at += (size + 7) & !7;
            }
        })
    });
    drop(frame);
    let mut held = vec![std::ptr::null_mut::<u8>(); count];
    group.bench_function("glibc", |b| {
        b.iter(|| {
            for (slot, &size) in held.iter_mut().zip(&sizes) {
                // SAFETY: a non-zero layout.
                let p = unsafe { System.alloc(Layout::from_size_align_unchecked(size, 8)) };
                // SAFETY: a live block.
                unsafe { p.write(1) };
                *slot = p;
            }
            for (&p, &size) in held.iter().zip(&sizes) {
                // SAFETY: live blocks, freed once with the layout they were allocated with.
                unsafe { System.dealloc(p, Layout::from_size_align_unchecked(size, 8)) };
            }
        })
    });
    let mut bump = bumpalo::Bump::with_capacity(256 * count);
    group.bench_function("bumpalo", |b| {
        b.iter(|| {
            for &size in &sizes {
                // SAFETY: sizes are 8..=256, the alignment a power of two.
                let p = bump.alloc_layout(unsafe { Layout::from_size_align_unchecked(size, 8) });
                // SAFETY: a live block.
                unsafe { p.as_ptr().write_volatile(1) };
            }
            bump.reset();
        })
    });
    let mut stack = Stack::new(256 * count).unwrap();
    group.bench_function("stack", |b| {
        b.iter(|| {
            for &size in &sizes {
                let p = stack.allocate_bytes(size, 8).unwrap();
                // SAFETY: a live block.
                unsafe { p.as_ptr().write_volatile(1) };
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
    // A power-of-two slot count, picked with a mask: a division here would cost every
    // allocator a few nanoseconds that are not theirs (a fifth of glibc's time at 4096 slots).
    assert!(slots.len().is_power_of_two());
    let mask = slots.len() as u64 - 1;
    for _ in 0..N {
        let i = (rng.next() & mask) as usize;
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

type Producer = Box<dyn FnMut() -> usize>;
type Consumer = Box<dyn FnMut(usize)>;

/// Blocks handed over at once, as in PERFORMANCE.md's producer/consumer pattern.
const HANDOFF: usize = 256;

/// One batch of addresses in the hand-over ring: `len` is 0 while the producer may fill it,
/// else the number of addresses the consumer is to free.
struct Handoff {
    len: AtomicUsize,
    slots: [AtomicUsize; HANDOFF],
}

/// The blocks of the next batch of a job with `left` blocks to go.
fn batch_len(left: u64) -> usize {
    left.min(HANDOFF as u64) as usize
}

/// One producer allocating blocks, one consumer freeing them (every free remote), handing
/// them over in batches of [`HANDOFF`] through a ring of 16 batches (so the hand-over costs a
/// plain store and load per block and one cache-line transfer per batch, not per block). The
/// two threads live for the whole benchmark and run one sample's blocks per job, so what is
/// measured is the steady state (threads born for each sample of a few hundred blocks measured
/// their start-up instead: glibc's arena and tcache set-up, first touches).
fn producer_consumer(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    make_producer: impl FnOnce() -> Producer + Send,
    make_consumer: impl FnOnce() -> Consumer + Send,
) {
    const RING: usize = 16;
    let ring: Vec<Handoff> = (0..RING)
        .map(|_| Handoff {
            len: AtomicUsize::new(0),
            slots: [const { AtomicUsize::new(0) }; HANDOFF],
        })
        .collect();
    let ring = &ring;
    let (to_producer, producer_jobs) = mpsc::channel::<u64>();
    let (to_consumer, consumer_jobs) = mpsc::channel::<u64>();
    let (done, finished) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let producer_done = done.clone();
        s.spawn(move || {
            let mut alloc = make_producer();
            let mut at = 0;
            for mut left in producer_jobs {
                while left != 0 {
                    let batch = &ring[at % RING];
                    at += 1;
                    let mut spins = 0;
                    // Acquire: the consumer is done with the batch's previous addresses.
                    while batch.len.load(Ordering::Acquire) != 0 {
                        wait(&mut spins);
                    }
                    let n = batch_len(left);
                    for slot in &batch.slots[..n] {
                        // Relaxed: published by the Release store of `len`.
                        slot.store(alloc(), Ordering::Relaxed);
                    }
                    // Release: the blocks' contents and ownership go with the addresses.
                    batch.len.store(n, Ordering::Release);
                    left -= n as u64;
                }
                producer_done.send(()).unwrap();
            }
        });
        s.spawn(move || {
            let mut free = make_consumer();
            let mut at = 0;
            for mut left in consumer_jobs {
                while left != 0 {
                    let batch = &ring[at % RING];
                    at += 1;
                    let mut spins = 0;
                    // Acquire: pairs with the producer's Release store.
                    let n = loop {
                        let n = batch.len.load(Ordering::Acquire);
                        if n != 0 {
                            break n;
                        }
                        wait(&mut spins);
                    };
                    for slot in &batch.slots[..n] {
                        // Relaxed: ordered by the Acquire load of `len`.
                        free(slot.load(Ordering::Relaxed));
                    }
                    // Release: the batch may be refilled.
                    batch.len.store(0, Ordering::Release);
                    left -= n as u64;
                }
                done.send(()).unwrap();
            }
        });
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|blocks| {
                let start = Instant::now();
                to_producer.send(blocks).unwrap();
                to_consumer.send(blocks).unwrap();
                finished.recv().unwrap();
                finished.recv().unwrap();
                start.elapsed()
            })
        });
        // Ends both threads' job loops.
        drop((to_producer, to_consumer));
    });
}

/// The producer/consumer pattern through a `GlobalAlloc` (glibc, allocscope's heap).
fn global_producer_consumer<A: GlobalAlloc + Sync>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    a: &'static A,
) {
    producer_consumer(
        group,
        name,
        || {
            Box::new(|| {
                // SAFETY: a non-zero layout.
                let p = unsafe { a.alloc(BLOCK) };
                // SAFETY: a live block.
                unsafe { p.write(1) };
                p as usize
            })
        },
        // SAFETY: blocks from the producer's `a.alloc` with this layout.
        || Box::new(|p| unsafe { a.dealloc(p as *mut u8, BLOCK) }),
    );
}

fn lock_free_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("lock_free_producer_consumer");
    group.throughput(Throughput::Elements(1));
    // The harness alone: blocks come from a fixed array, frees do nothing.
    let homes: &'static mut [u64] = Box::leak(vec![0u64; 8 * 8192].into_boxed_slice());
    let homes_base = homes.as_mut_ptr() as usize;
    producer_consumer(
        &mut group,
        "harness_floor",
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
    );
    global_producer_consumer(&mut group, "glibc", &System);
    global_producer_consumer(&mut group, "allocscope_heap", &Allocscope);
    let pool: &'static LockFreePool<'static> =
        Box::leak(Box::new(LockFreePool::new(64, 8, 8192).unwrap()));
    producer_consumer(
        &mut group,
        "lock_free_pool",
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
                unsafe { cache.deallocate_bytes(NonNull::new_unchecked(p as *mut u8), 64, 8) }
            })
        },
    );
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
