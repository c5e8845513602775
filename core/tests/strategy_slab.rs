//! The slab cache: constructed objects kept across reuse, partial/full/empty lists, empty
//! slabs given back, magazines.

mod strategy_support;

use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use allocscope_core::slab::{SlabCache, MAGAZINE_BATCH, MAGAZINE_SLOTS, REAP_PERIOD};
use allocscope_core::typed::TypedAlloc;
use proptest::prelude::*;
use strategy_support::*;

/// An object with a costly constructor and a destructor, counted per test through `which`.
struct Conn {
    buffer: Vec<u8>,
    uses: u32,
    counter: &'static Counter,
}

#[derive(Default)]
struct Counter {
    built: AtomicUsize,
    dropped: AtomicUsize,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.counter.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

macro_rules! conn_ctor {
    ($counter:ident) => {{
        static $counter: Counter = Counter {
            built: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
        };
        fn make() -> Conn {
            $counter.built.fetch_add(1, Ordering::SeqCst);
            Conn {
                buffer: vec![0; 256],
                uses: 0,
                counter: &$counter,
            }
        }
        (&$counter, make as fn() -> Conn)
    }};
}

#[test]
fn constructed_state_is_kept_across_reuse() {
    let (counter, make) = conn_ctor!(KEPT);
    let os = HeapOs::default();
    {
        let cache = SlabCache::with_os(&os).with_constructor(make);
        let per_slab = cache.objects_per_slab();
        {
            let mut c = cache.get().unwrap();
            assert_eq!(c.buffer.len(), 256);
            c.uses += 1;
            c.buffer[0] = 42;
        }
        for _ in 0..10 {
            let mut c = cache.get().unwrap();
            assert_eq!(
                c.buffer[0], 42,
                "the same constructed object comes back as it was left"
            );
            c.uses += 1;
        }
        assert_eq!(cache.get().unwrap().uses, 11);
        assert_eq!(
            counter.built.load(Ordering::SeqCst),
            per_slab,
            "built once per slot, when the slab was made"
        );
        assert_eq!(counter.dropped.load(Ordering::SeqCst), 0);
    }
    assert_eq!(
        counter.dropped.load(Ordering::SeqCst),
        counter.built.load(Ordering::SeqCst),
        "dropped with their slab"
    );
    assert_eq!(os.live_regions(), 0);
}

#[test]
fn slabs_move_between_partial_full_and_empty_and_idle_empties_go_back() {
    let os = HeapOs::default();
    let cache = SlabCache::<[u64; 16]>::with_os(&os).with_max_empty(1);
    let n = cache.objects_per_slab();
    assert!(n >= 8);
    let mut objs: Vec<_> = (0..3 * n)
        .map(|_| cache.allocate::<[u64; 16]>(1).unwrap())
        .collect();
    assert_eq!(cache.slab_counts(), (0, 3, 0));
    let last = objs.pop().unwrap();
    // SAFETY: live objects of this cache.
    unsafe { cache.deallocate(last, 1) };
    assert_eq!(cache.slab_counts(), (1, 2, 0));
    for p in objs.drain(..) {
        // SAFETY: live objects.
        unsafe { cache.deallocate(p, 1) };
    }
    assert_eq!(
        cache.slab_counts(),
        (0, 0, 3),
        "empty slabs are kept for the next burst"
    );
    assert_eq!(cache.stats().used_bytes, 0);
    // A long stretch using one object at a time: two slabs stay idle for whole periods.
    for _ in 0..2 * REAP_PERIOD {
        let p = cache.allocate::<[u64; 16]>(1).unwrap();
        // SAFETY: live.
        unsafe { cache.deallocate(p, 1) };
    }
    // The slab in use plus max_empty idle ones remain.
    let (partial, full, empty) = cache.slab_counts();
    assert_eq!(
        partial + full + empty,
        2,
        "idle empty slabs beyond max_empty went back"
    );
    let decommitted = |os: &HeapOs| os.decommitted.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        decommitted(&os),
        1,
        "the idle slab's memory went back to the OS"
    );
    assert_eq!(cache.shrink(), 2);
    assert_eq!(decommitted(&os), 3);
    // Given-back slabs are reused (recommitted) before the arena grows.
    let reserved = os.reserved.load(std::sync::atomic::Ordering::SeqCst);
    let again: Vec<_> = (0..3 * n)
        .map(|_| cache.allocate::<[u64; 16]>(1).unwrap())
        .collect();
    assert_eq!(
        os.reserved.load(std::sync::atomic::Ordering::SeqCst),
        reserved
    );
    for p in again {
        // SAFETY: live objects.
        unsafe { cache.deallocate(p, 1) };
    }
    drop(cache);
    assert_eq!(
        os.live_regions(),
        0,
        "the arenas are released with the cache"
    );
}

#[test]
fn a_burst_that_refills_emptied_slabs_keeps_them() {
    let os = HeapOs::default();
    let cache = SlabCache::<[u64; 8]>::with_os(&os);
    let mut held = Vec::new();
    let (bursts, burst) = if cfg!(miri) { (3, 300) } else { (10, 1000) };
    for _ in 0..bursts {
        held.extend((0..burst).map(|_| cache.allocate::<[u64; 8]>(1).unwrap()));
        for p in held.drain(..) {
            // SAFETY: live objects.
            unsafe { cache.deallocate(p, 1) };
        }
    }
    assert!(cache.slab_counts().2 > 1);
    assert_eq!(
        os.decommitted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no slab was given back and taken again"
    );
}

#[test]
fn allocation_prefers_partial_slabs() {
    let os = HeapOs::default();
    let cache = SlabCache::<u64>::with_os(&os).with_max_empty(8);
    let n = cache.objects_per_slab();
    let objs: Vec<_> = (0..2 * n)
        .map(|_| cache.allocate::<u64>(1).unwrap())
        .collect();
    // SAFETY: live objects: one from the first slab, all of the second.
    unsafe {
        cache.deallocate(objs[0], 1);
        for p in &objs[n..] {
            cache.deallocate(*p, 1);
        }
    }
    assert_eq!(cache.slab_counts(), (1, 0, 1));
    let again = cache.allocate::<u64>(1).unwrap();
    assert_eq!(
        again, objs[0],
        "the partial slab fills before the empty one is touched"
    );
    assert_eq!(cache.slab_counts(), (0, 1, 1));
    assert!(cache.stats().fragmentation == 0.0);
}

#[test]
fn buffer_backed_cache_runs_out_and_reuses_given_back_slabs() {
    let mut buf = buffer(64 * 1024);
    let cache = SlabCache::<[u8; 200]>::from_buffer(&mut buf).with_max_empty(0);
    let mut objs = Vec::new();
    while let Some(p) = cache.allocate::<[u8; 200]>(1) {
        objs.push(p);
    }
    assert!(objs.len() >= 200, "{} objects", objs.len());
    assert_eq!(cache.stats().failures, 1);
    let count = objs.len();
    for p in objs.drain(..) {
        // SAFETY: live objects.
        unsafe { cache.deallocate(p, 1) };
    }
    assert!(cache.shrink() > 1);
    assert_eq!(
        cache.slab_counts(),
        (0, 0, 0),
        "all slabs given back to the buffer"
    );
    let again = (0..count)
        .filter(|_| cache.allocate::<[u8; 200]>(1).is_some())
        .count();
    assert_eq!(again, count);
}

#[test]
fn double_frees_are_refused_and_foreign_pointers_in_debug() {
    let os = HeapOs::default();
    let cache = SlabCache::<u64>::with_os(&os);
    let a = cache.allocate::<u64>(1).unwrap();
    let b = cache.allocate::<u64>(1).unwrap();
    // SAFETY: deliberate misuse that the cache must refuse.
    unsafe {
        cache.deallocate(a, 1);
        cache.deallocate(a, 1);
    }
    assert_eq!(cache.stats().misuse, 1);
    if cfg!(debug_assertions) {
        let mut outside = 0u64;
        // SAFETY: misuse, refused in debug builds before anything is read.
        unsafe { cache.deallocate(NonNull::from(&mut outside), 1) };
        assert_eq!(cache.stats().misuse, 2);
        let mag = cache.magazine();
        let c = mag.allocate::<u64>(1).unwrap();
        // SAFETY: misuse through a magazine.
        unsafe {
            mag.deallocate(c, 1);
            mag.deallocate(c, 1);
        }
        assert_eq!(cache.stats().misuse, 3);
    }
    let c = cache.allocate::<u64>(1).unwrap();
    let d = cache.allocate::<u64>(1).unwrap();
    assert_ne!(c, d, "the refused free did not put `a` on the list twice");
    // SAFETY: live objects.
    unsafe {
        cache.deallocate(b, 1);
        cache.deallocate(c, 1);
        cache.deallocate(d, 1);
    }
    assert_eq!(cache.stats().used_bytes, 0);
}

#[test]
fn magazines_move_half_batches_and_give_everything_back_on_drop() {
    let os = HeapOs::default();
    let cache = SlabCache::<u32>::with_os(&os);
    {
        let mag = cache.magazine();
        let a = mag.boxed(7u32).unwrap();
        assert_eq!(*a, 7);
        assert_eq!(
            mag.cached(),
            MAGAZINE_BATCH - 1,
            "refilled with half a magazine"
        );
        drop(a);
        let many: Vec<_> = (0..100).map(|i| mag.boxed(i).unwrap()).collect();
        assert_eq!(many.iter().map(|b| **b).sum::<u32>(), 99 * 100 / 2);
        drop(many);
        assert!(mag.cached() <= MAGAZINE_SLOTS);
    }
    let s = cache.stats();
    assert_eq!(s.used_bytes, 0);
    assert_eq!(
        (s.allocations, s.deallocations),
        (counted(101), counted(101))
    );
}

/// The newest free object is on top of the magazine: a free then an allocation hands back the
/// same object, it is counted as held, and a burst longer than the magazine (which flushes
/// and refills it several times) keeps objects distinct and returns them.
#[test]
fn a_magazine_hands_back_the_object_freed_last() {
    let os = HeapOs::default();
    let cache = SlabCache::<[u64; 2]>::with_os(&os);
    {
        let mag = cache.magazine();
        let a = mag.allocate::<[u64; 2]>(1).unwrap();
        let held = mag.cached();
        // SAFETY: a live object, freed once.
        unsafe { mag.deallocate(a, 1) };
        assert_eq!(mag.cached(), held + 1);
        assert_eq!(mag.allocate::<[u64; 2]>(1), Some(a));
        assert_eq!(mag.cached(), held);
        let burst: Vec<_> = (0..3 * MAGAZINE_SLOTS as u64)
            .map(|i| {
                let p = mag.allocate::<[u64; 2]>(1).unwrap();
                // SAFETY: a fresh object.
                unsafe { p.as_ptr().write([i; 2]) };
                p
            })
            .chain([a])
            .collect();
        let distinct: std::collections::HashSet<_> = burst.iter().collect();
        assert_eq!(distinct.len(), burst.len());
        for (i, &p) in burst.iter().enumerate().rev() {
            if i < 3 * MAGAZINE_SLOTS {
                // SAFETY: written above.
                assert_eq!(unsafe { p.as_ptr().read() }, [i as u64; 2]);
            }
            // SAFETY: live objects, each freed once.
            unsafe { mag.deallocate(p, 1) };
        }
        assert!(mag.cached() <= MAGAZINE_SLOTS);
    }
    let s = cache.stats();
    assert_eq!((s.used_bytes, s.misuse), (0, 0));
    assert_eq!(cache.allocate::<[u64; 2]>(1).map(|_| ()), Some(()));
}

/// A magazine holds a full magazine's worth (the newest object apart from the list, the
/// others on it) and no more: the next free deposits the oldest half; a magazine dropped
/// full or nearly gives everything back, the newest object too, so `shrink` finds every slab
/// empty.
#[test]
fn a_full_magazine_gives_back_every_object_on_drop() {
    let os = HeapOs::default();
    let cache = SlabCache::<[u64; 4]>::with_os(&os);
    {
        let mag = cache.magazine();
        // Taken from the cache itself, so the magazine starts empty.
        let objects: Vec<_> = (0..=MAGAZINE_SLOTS)
            .map(|_| cache.allocate::<[u64; 4]>(1).unwrap())
            .collect();
        for (i, &p) in objects.iter().enumerate() {
            // SAFETY: live objects of the magazine's cache, each freed once.
            unsafe { mag.deallocate(p, 1) };
            assert_eq!(
                mag.cached(),
                if i < MAGAZINE_SLOTS {
                    i + 1
                } else {
                    MAGAZINE_SLOTS + 1 - MAGAZINE_BATCH
                },
                "full at {MAGAZINE_SLOTS}, then the oldest half goes to the depot"
            );
        }
        assert_eq!(
            mag.allocate::<[u64; 4]>(1),
            objects.last().copied(),
            "the object freed last comes back first"
        );
        // SAFETY: handed out again just above.
        unsafe { mag.deallocate(objects[MAGAZINE_SLOTS], 1) };
    }
    {
        // Dropped while exactly full.
        let mag = cache.magazine();
        for _ in 0..MAGAZINE_SLOTS {
            let p = cache.allocate::<[u64; 4]>(1).unwrap();
            // SAFETY: a live object of the magazine's cache, freed once.
            unsafe { mag.deallocate(p, 1) };
        }
        assert_eq!(mag.cached(), MAGAZINE_SLOTS);
    }
    let s = cache.stats();
    assert_eq!((s.used_bytes, s.misuse), (0, 0));
    cache.shrink();
    assert_eq!(cache.slab_counts(), (0, 0, 0), "every object went back");
}

/// A magazine that flushes keeps its newest objects, last freed first out, with the right
/// count: objects linked through their first word (here not even pointer-aligned, over a
/// caller's buffer) and objects in slots (a type smaller than a pointer) alike.
#[test]
fn a_flushed_magazine_keeps_its_newest_objects_in_order() {
    fn check<T>(cache: &SlabCache<'_, T>) {
        let mag = cache.magazine();
        let total = 2 * MAGAZINE_SLOTS + 1;
        let objects: Vec<NonNull<u8>> = (0..total)
            .map(|_| mag.allocate_bytes(size_of::<T>(), align_of::<T>()).unwrap())
            .collect();
        for &p in &objects {
            // SAFETY: live objects of this magazine, each freed once.
            unsafe { mag.deallocate_bytes(p, size_of::<T>(), align_of::<T>()) };
            assert!(mag.cached() <= MAGAZINE_SLOTS);
        }
        let held = mag.cached();
        assert!(held >= MAGAZINE_BATCH, "a flush keeps half a magazine");
        for (taken, &p) in objects.iter().rev().take(held).enumerate() {
            assert_eq!(
                mag.allocate_bytes(size_of::<T>(), align_of::<T>()),
                Some(p),
                "the newest objects come back last freed first"
            );
            assert_eq!(mag.cached(), held - taken - 1);
        }
        for &p in objects.iter().rev().take(held) {
            // SAFETY: handed out again just above.
            unsafe { mag.deallocate_bytes(p, size_of::<T>(), align_of::<T>()) };
        }
    }
    let mut buffer = vec![std::mem::MaybeUninit::new(0u8); 64 * 1024];
    let linked = SlabCache::<[u8; 13]>::from_buffer(&mut buffer);
    check(&linked);
    assert_eq!((linked.stats().used_bytes, linked.stats().misuse), (0, 0));
    let os = HeapOs::default();
    let slots = SlabCache::<u16>::with_os(&os);
    check(&slots);
    assert_eq!((slots.stats().used_bytes, slots.stats().misuse), (0, 0));
}

/// A magazine's full halves wait in the cache's depot as chains: after a burst of frees no
/// slab is empty although nothing is in use (the objects wait in the depot, counted free), a
/// burst as long again comes back from the depot without a new slab, a burst beyond the
/// depot's bound goes to the slabs, and chains left idle for a whole reap period go back to
/// their slabs, whose memory the next reaps give back; `shrink` empties the depot first.
#[test]
fn full_magazine_halves_wait_in_the_depot_and_idle_chains_go_back_to_their_slabs() {
    use allocscope_core::slab::{DEPOT_BYTES, DEPOT_CHAINS};
    // Under miri, objects large enough that the depot's byte bound holds 4 chains, not 64:
    // the same paths with a sixteenth of the operations.
    const WORDS: usize = if cfg!(miri) { 512 } else { 8 };
    type Obj = [u64; WORDS];
    let os = HeapOs::default();
    let cache = SlabCache::<Obj>::with_os(&os).with_max_empty(1);
    let depot_chains = DEPOT_CHAINS.min(DEPOT_BYTES / (MAGAZINE_BATCH * size_of::<Obj>()));
    let depot_objects = depot_chains * MAGAZINE_BATCH;
    let mag = cache.magazine();
    let burst = |n: usize| -> Vec<NonNull<Obj>> {
        (0..n)
            .map(|i| {
                let p = mag.allocate::<Obj>(1).unwrap();
                // SAFETY: a fresh object.
                unsafe { p.as_ptr().cast::<u64>().write(i as u64) };
                p
            })
            .collect()
    };
    let free = |objects: Vec<NonNull<Obj>>| {
        for (i, p) in objects.into_iter().enumerate() {
            // SAFETY: written by `burst`.
            assert_eq!(unsafe { p.as_ptr().cast::<u64>().read() }, i as u64);
            // SAFETY: live objects of this magazine, each freed once.
            unsafe { mag.deallocate(p, 1) };
        }
    };
    // A burst the depot holds: every flushed half waits there.
    let n = depot_objects - MAGAZINE_SLOTS;
    let first = burst(n);
    let distinct: std::collections::HashSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), n);
    free(first);
    let (partial, full, empty) = cache.slab_counts();
    assert_eq!(
        empty, 0,
        "the freed objects wait in the depot, not in their slabs"
    );
    // A live magazine's own objects count as of its last batch move: up to a magazine's
    // worth of frees since then still count as used.
    let unpublished = MAGAZINE_SLOTS * size_of::<Obj>();
    assert!(
        cache.stats().used_bytes <= unpublished,
        "objects in the depot count as free: {:?}",
        cache.stats()
    );
    let slabs = partial + full;
    let again = burst(n);
    assert_eq!(
        cache.slab_counts().0 + cache.slab_counts().1,
        slabs,
        "no new slab"
    );
    free(again);
    // A burst twice the depot's bound: the rest goes to the slabs, all distinct.
    let big = burst(2 * depot_objects);
    let distinct: std::collections::HashSet<_> = big.iter().collect();
    assert_eq!(distinct.len(), big.len());
    free(big);
    assert!(
        cache.slab_counts().2 > 0,
        "past the depot's bound, objects go back to slabs"
    );
    assert!(cache.stats().used_bytes <= unpublished);
    assert_eq!(cache.stats().misuse, 0);
    let before: usize = {
        let (p, f, e) = cache.slab_counts();
        p + f + e
    };
    // Under miri (minutes for these reap periods) the drain is checked by `shrink` below.
    if !cfg!(miri) {
        // Small bursts that cross the magazine's bounds move chains in and out of the top of the
        // depot; the chains below stay idle, go back to their slabs at a reap, and the slabs they
        // empty are given back at the next ones.
        for _ in 0..400 {
            free(burst(3 * MAGAZINE_SLOTS));
        }
        let (p, f, e) = cache.slab_counts();
        assert!(
            2 * (p + f + e) < before,
            "idle chains and then their slabs went back: {before} slabs before, {p}+{f}+{e} after"
        );
        assert!(cache.stats().used_bytes <= unpublished);
        assert_eq!(cache.stats().misuse, 0);
    }
    drop(mag);
    assert_eq!((cache.stats().used_bytes, cache.stats().misuse), (0, 0));
    cache.shrink();
    assert_eq!(
        cache.slab_counts(),
        (0, 0, 0),
        "shrink empties the depot first"
    );
}

/// Through a magazine, a constructor cache hands out constructed objects that keep their state
/// across reuse (`get`), and raw memory through the byte interface (dropped when taken,
/// rebuilt when given back): nothing leaks, nothing is dropped twice.
#[test]
fn a_magazine_over_a_constructor_cache_keeps_constructed_state() {
    let (counter, make) = conn_ctor!(MAG);
    let os = HeapOs::default();
    {
        let cache = SlabCache::with_os(&os).with_constructor(make);
        {
            let mag = cache.magazine();
            {
                let mut c = mag.get().unwrap();
                c.uses = 5;
                c.buffer[1] = 7;
            }
            let c = mag.get().unwrap();
            assert_eq!(
                (c.uses, c.buffer[1]),
                (5, 7),
                "the same object, as it was left"
            );
            drop(c);
            let raw: Vec<_> = (0..MAGAZINE_SLOTS + 3)
                .map(|i| {
                    mag.boxed(Conn {
                        buffer: vec![i as u8; 2],
                        uses: i as u32,
                        counter,
                    })
                    .ok()
                    .unwrap()
                })
                .collect();
            assert!(raw.iter().enumerate().all(|(i, c)| c.uses == i as u32));
            drop(raw);
            assert_eq!(mag.get().unwrap().buffer.len(), 256, "rebuilt on free");
        }
        assert_eq!(cache.stats().used_bytes, 0);
    }
    assert_eq!(
        counter.built.load(Ordering::SeqCst) + MAGAZINE_SLOTS + 3,
        counter.dropped.load(Ordering::SeqCst),
        "every built object and every boxed value dropped once"
    );
    assert_eq!(os.live_regions(), 0);
}

#[test]
fn magazines_on_two_threads_exchange_objects() {
    let os = HeapOs::default();
    let cache = SlabCache::<[u64; 4]>::with_os(&os);
    let (tx, rx) = std::sync::mpsc::sync_channel::<(Sent<[u64; 4]>, u64)>(64);
    let rounds = if cfg!(miri) { 200 } else { 20_000 };
    std::thread::scope(|s| {
        let cache = &cache;
        s.spawn(move || {
            let mag = cache.magazine();
            for i in 0..rounds {
                let p = mag.allocate::<[u64; 4]>(1).unwrap();
                // SAFETY: a fresh object.
                unsafe { p.as_ptr().write([i; 4]) };
                tx.send((Sent(p), i)).unwrap();
            }
        });
        s.spawn(move || {
            let mag = cache.magazine();
            for (Sent(p), i) in rx.iter() {
                // SAFETY: the producer wrote it before sending and no longer touches it.
                assert_eq!(unsafe { p.as_ptr().read() }, [i; 4]);
                // SAFETY: a live object of this cache, freed through another magazine.
                unsafe { mag.deallocate(p, 1) };
            }
        });
    });
    let s = cache.stats();
    assert_eq!(s.used_bytes, 0);
    assert_eq!(s.allocations, counted(rounds));
}

#[test]
fn allocator_api2_box_and_raw_interface_on_a_constructor_cache() {
    let (counter, make) = conn_ctor!(RAW);
    let os = HeapOs::default();
    let cache = SlabCache::with_os(&os).with_constructor(make);
    let boxed = allocator_api2::boxed::Box::new_in(
        Conn {
            buffer: vec![1; 4],
            uses: 9,
            counter,
        },
        &cache,
    );
    assert_eq!(boxed.uses, 9);
    drop(boxed);
    // The raw interface dropped the constructed object before handing out the memory and
    // rebuilt it on free: nothing leaked, nothing dropped twice.
    let got = cache.get().unwrap();
    assert_eq!(got.buffer.len(), 256);
    drop(got);
    drop(cache);
    assert_eq!(
        counter.built.load(Ordering::SeqCst) + 1,
        counter.dropped.load(Ordering::SeqCst)
    );
}

#[test]
fn get_without_constructor_is_refused() {
    let os = HeapOs::default();
    let cache = SlabCache::<u64>::with_os(&os);
    assert!(cache.get().is_none());
    assert!(cache.magazine().get().is_none());
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(bool),
    Free(usize, bool),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![3 => any::<bool>().prop_map(Op::Alloc), 2 => (any::<usize>(), any::<bool>()).prop_map(|(i, m)| Op::Free(i, m))],
        1..300,
    )
}

proptest! {
    #![proptest_config(config())]

    /// Random sequences through the cache and a magazine against a model: objects are
    /// distinct, aligned and keep their contents; slab lists account for every slab; once
    /// everything is freed (and the magazine dropped) nothing is in use and shrink leaves no
    /// slab.
    #[test]
    fn slab_matches_model(ops in ops()) {
        let os = HeapOs::default();
        let cache = SlabCache::<[u32; 10]>::with_os(&os).with_max_empty(2);
        let mut live: Vec<(NonNull<[u32; 10]>, u32)> = Vec::new();
        {
            let mag = cache.magazine();
            for (seed, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Alloc(via_mag) => {
                        let p = if via_mag { mag.allocate::<[u32; 10]>(1) } else { cache.allocate::<[u32; 10]>(1) };
                        let p = p.unwrap();
                        prop_assert_eq!(p.as_ptr() as usize % 4, 0);
                        prop_assert!(live.iter().all(|(q, _)| *q != p));
                        // SAFETY: a fresh object.
                        unsafe { p.as_ptr().write([seed as u32; 10]) };
                        live.push((p, seed as u32));
                    }
                    Op::Free(i, via_mag) if !live.is_empty() => {
                        let (p, seed) = live.swap_remove(i % live.len());
                        // SAFETY: a live object written above.
                        prop_assert_eq!(unsafe { p.as_ptr().read() }, [seed; 10]);
                        // SAFETY: a live object.
                        unsafe { if via_mag { mag.deallocate(p, 1) } else { cache.deallocate(p, 1) } };
                    }
                    Op::Free(..) => {}
                }
                let (partial, full, empty) = cache.slab_counts();
                let slots = (partial + full + empty) * cache.objects_per_slab();
                prop_assert!(live.len() <= slots);
            }
            for (p, _) in live.drain(..) {
                // SAFETY: live objects.
                unsafe { cache.deallocate(p, 1) };
            }
        }
        prop_assert_eq!(cache.stats().used_bytes, 0);
        prop_assert_eq!(cache.stats().misuse, 0);
        cache.shrink();
        prop_assert_eq!(cache.slab_counts(), (0, 0, 0));
        drop(cache);
        prop_assert_eq!(os.live_regions(), 0);
    }
}
