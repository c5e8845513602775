//! The heap as this test binary's global allocator: everything the test harness and the tests
//! allocate goes through allocscope.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashMap;

use allocscope_core::{heap, Allocscope};

#[global_allocator]
static GLOBAL: Allocscope = Allocscope::new();

mod heap_support;
use heap_support::page_in_use;

fn fill(p: *mut u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: p..p+len is a live block.
        unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
    }
}

fn check(p: *const u8, len: usize, seed: u8) {
    for i in 0..len {
        // SAFETY: p..p+len is a live block.
        let byte = unsafe { *p.add(i) };
        assert_eq!(byte, seed.wrapping_add(i as u8), "byte {i} of {len}");
    }
}

#[test]
fn collections_work_on_the_heap() {
    let mut v: Vec<u64> = (0..100_000).collect();
    v.retain(|x| x % 3 == 0);
    assert_eq!(v.len(), 33_334);
    let mut m = HashMap::new();
    for i in 0..10_000 {
        m.insert(i.to_string(), vec![i; i % 17]);
    }
    assert_eq!(m["4242"].len(), 4242 % 17);
    let s: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    assert_eq!(s.len(), 1000);
}

#[test]
fn every_size_up_to_large_is_usable_and_distinct() {
    let sizes: Vec<usize> = (0..=4096).chain((4097..300_000).step_by(997)).collect();
    let mut blocks = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let p = heap::alloc(size, 8);
        assert!(!p.is_null(), "size {size}");
        // SAFETY: p is a live block of at least `size` bytes.
        assert!(unsafe { heap::usable_size(p) } >= size);
        fill(p, size, i as u8);
        blocks.push((p, size, i as u8));
    }
    for &(p, size, seed) in &blocks {
        check(p, size, seed);
    }
    for (p, _, _) in blocks {
        // SAFETY: live, freed once.
        unsafe { heap::free(p) };
    }
}

#[test]
fn alignments_up_to_one_mib_are_honoured() {
    let mut blocks = Vec::new();
    for shift in 0..=20 {
        let align = 1usize << shift;
        for size in [1, 7, 8, 24, 100, 1000, 5000, 70_000, 2 << 20] {
            let p = heap::alloc(size, align);
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: live block.
            assert!(unsafe { heap::usable_size(p) } >= size);
            fill(p, size, shift as u8);
            blocks.push((p, size, shift as u8));
        }
    }
    for (p, size, seed) in blocks {
        check(p, size, seed);
        // SAFETY: live, freed once.
        unsafe { heap::free(p) };
    }
}

#[test]
fn alignment_beyond_the_address_space_fails_cleanly() {
    // Any power of two is a valid alignment (64 MiB is served: see heap_large_limits); one
    // no mapping can hold is out of memory, as in glibc, and a non-power of two is invalid.
    allocscope_core::error::clear_last_error();
    let p = heap::alloc(64, 1 << (usize::BITS - 1));
    assert!(p.is_null());
    assert_eq!(
        allocscope_core::error::last_error(),
        Some(allocscope_core::error::AllocErrorKind::OutOfMemory)
    );
    let p = heap::alloc(64, 3 << 20);
    assert!(p.is_null());
    assert_eq!(
        allocscope_core::error::last_error(),
        Some(allocscope_core::error::AllocErrorKind::InvalidRequest)
    );
}

#[test]
fn out_of_memory_is_null_not_a_panic() {
    allocscope_core::error::clear_last_error();
    let p = heap::alloc(usize::MAX / 2, 8);
    assert!(p.is_null());
    assert!(allocscope_core::error::last_error().is_some());
    let layout = Layout::from_size_align(isize::MAX as usize - 4096, 8).unwrap();
    // SAFETY: a valid layout.
    assert!(unsafe { GLOBAL.alloc(layout) }.is_null());
}

#[test]
fn zeroed_allocations_are_zero_even_on_reused_memory() {
    for round in 0..3 {
        let mut dirty = Vec::new();
        for size in [8usize, 48, 200, 3000, 20_000, 100_000, 1 << 20] {
            let p = heap::alloc(size, 8);
            fill(p, size, 0xAB);
            dirty.push(p);
        }
        for p in dirty {
            // SAFETY: live, freed once.
            unsafe { heap::free(p) };
        }
        for size in [8usize, 48, 200, 3000, 20_000, 100_000, 1 << 20] {
            let p = heap::alloc_zeroed(size, 8);
            for i in 0..size {
                // SAFETY: live block of `size` bytes.
                let byte = unsafe { *p.add(i) };
                assert_eq!(byte, 0, "round {round} size {size} byte {i}");
            }
            // SAFETY: live, freed once.
            unsafe { heap::free(p) };
        }
    }
}

#[test]
fn realloc_keeps_contents_and_grows_in_place_within_the_block() {
    let p = heap::alloc(100, 8);
    fill(p, 100, 3);
    // SAFETY: p live; 100 -> 110 fits the 112 B block.
    let q = unsafe { heap::realloc(p, 110, 8) };
    assert_eq!(p, q, "in place within the class");
    check(q, 100, 3);
    let mut p = q;
    let mut size = 110;
    for new in [1000, 50_000, 300_000, 5 << 20, 64, 3] {
        // SAFETY: p is live with `size` bytes.
        let q = unsafe { heap::realloc(p, new, 8) };
        assert!(!q.is_null());
        check(q, size.min(new).min(100), 3);
        p = q;
        size = new;
    }
    // SAFETY: live, freed once.
    unsafe { heap::free(p) };
}

#[test]
fn cross_thread_frees_and_thread_churn_lose_nothing() {
    for _round in 0..4 {
        let (tx, rx) = std::sync::mpsc::channel::<Vec<usize>>();
        let producer = std::thread::spawn(move || {
            for batch in 0..200 {
                let blocks: Vec<usize> = (0..256)
                    .map(|i| {
                        let size = 16 + (i * 7 + batch) % 500;
                        let p = heap::alloc(size, 8);
                        fill(p, size, i as u8);
                        p as usize
                    })
                    .collect();
                tx.send(blocks).unwrap();
            }
        });
        let consumer = std::thread::spawn(move || {
            let mut batch = 0;
            while let Ok(blocks) = rx.recv() {
                for (i, p) in blocks.into_iter().enumerate() {
                    let size = 16 + (i * 7 + batch) % 500;
                    check(p as *const u8, size, i as u8);
                    // SAFETY: live block handed over by the producer; freed once.
                    unsafe { heap::free(p as *mut u8) };
                }
                batch += 1;
            }
            batch
        });
        producer.join().unwrap();
        assert_eq!(consumer.join().unwrap(), 200);
    }
}

#[test]
fn remote_frees_held_back_reach_their_pages_at_thread_exit_and_at_collect() {
    const SIZE: usize = 200;
    for freer_collects in [false, true] {
        // The owner is a thread of its own, so nothing else allocates from its pages.
        std::thread::spawn(move || {
            // Fewer blocks than a batch holds: without a push at exit or at `collect()`, every
            // one of them would stay held by the freeing thread. A size the test's own
            // allocations (the map, the barrier, the spawn) do not share a class with.
            let blocks: Vec<usize> = (0..40u8)
                .map(|i| {
                    let p = heap::alloc(SIZE, 8);
                    fill(p, SIZE, i);
                    p as usize
                })
                .collect();
            let mut pages: HashMap<usize, (u32, u32)> = HashMap::with_capacity(blocks.len());
            for &b in &blocks {
                let (page, used) = page_in_use(b).expect("the page of a live block is in use");
                pages.entry(page).or_insert((used, 0)).1 += 1;
            }
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let freer_barrier = barrier.clone();
            let handed = blocks.clone();
            let freer = std::thread::spawn(move || {
                for (i, &p) in handed.iter().enumerate() {
                    check(p as *const u8, SIZE, i as u8);
                    // SAFETY: live blocks of the owner, handed over; each freed once.
                    unsafe { heap::free(p as *mut u8) };
                }
                if freer_collects {
                    allocscope_core::collect();
                    // Stay alive while the owner looks: only `collect()` pushed the frees.
                    freer_barrier.wait();
                    freer_barrier.wait();
                }
            });
            // The owner takes the remote counts (and gives back pages that emptied).
            let owner_sees_every_free = || {
                allocscope_core::collect();
                for (&page, &(before, freed)) in &pages {
                    if let Some((_, after)) = page_in_use(page) {
                        assert!(
                            after <= before - freed,
                            "page {page:#x}: used {after}, was {before} with {freed} freed remotely"
                        );
                    }
                }
            };
            if freer_collects {
                barrier.wait();
                owner_sees_every_free();
                barrier.wait();
                freer.join().unwrap();
            } else {
                freer.join().unwrap();
                owner_sees_every_free();
            }
        })
        .join()
        .unwrap();
    }
}

#[test]
fn stats_and_page_walk_see_live_blocks() {
    // Another thread, so other tests' traffic on this thread doesn't matter; we look at our
    // own pages through the walk by address.
    std::thread::spawn(|| {
        let blocks: Vec<*mut u8> = (0..10_000).map(|_| heap::alloc(48, 8)).collect();
        let first = blocks[0] as usize;
        let mut found = None;
        allocscope_core::walk_pages(&mut |page| {
            if first >= page.address && first < page.address + page.size {
                found = Some(*page);
            }
        });
        let page = found.expect("the page of a live block is walked");
        assert_eq!(page.block_size, 48);
        assert!(page.used >= 1 && page.used <= page.capacity);
        assert!(page.committed);
        let s = allocscope_core::stats();
        assert!(s.live_bytes >= 10_000 * 48, "{}", s.live_bytes);
        assert!(s.classes[allocscope_core::size_class::class_of(48)].live_blocks >= 10_000);
        assert!(s.committed_bytes >= s.live_bytes);
        assert!(s.reserved_bytes >= s.committed_bytes);
        if cfg!(feature = "stats") {
            assert!(s.allocs >= 10_000);
        }
        for p in blocks {
            // SAFETY: live, freed once.
            unsafe { heap::free(p) };
        }
    })
    .join()
    .unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn blocks_up_to_512_kib_live_on_big_pages_reused_in_place_and_purged() {
    use allocscope_core::size_class::{class_of, CLASS_MAX, CLASS_SIZE, MEDIUM_MAX};
    std::thread::spawn(|| {
        let resident = |p: *mut u8| {
            let mut v = [0u8; 1];
            // SAFETY: mincore reads the state of one page of a mapping of ours into `v`.
            let r = unsafe { libc::mincore(p.cast(), 4096, v.as_mut_ptr()) };
            assert_eq!(r, 0, "the page stays mapped");
            v[0] & 1 != 0
        };
        for size in [MEDIUM_MAX + 1, 300_000, CLASS_MAX] {
            let a = heap::alloc(size, 16);
            assert!(!a.is_null(), "size {size}");
            fill(a, size, 3);
            // The block lies in a page of its class (not a mapping of its own).
            let mut page = None;
            allocscope_core::walk_pages(&mut |info| {
                if (a as usize) >= info.address && (a as usize) < info.address + info.size {
                    page = Some(*info);
                }
            });
            let page = page.expect("the big page is walked");
            assert_eq!(page.block_size, CLASS_SIZE[class_of(size)], "size {size}");
            assert!(page.capacity >= 7, "{page:?}");
            // SAFETY: live, freed once.
            unsafe { heap::free(a) };
            // Freed and asked for again, the same block comes back, still resident.
            let b = heap::alloc(size, 16);
            assert_eq!(a, b, "size {size}: the freed block is reused");
            assert!(resident(b));
            // SAFETY: live, freed once.
            unsafe { heap::free(b) };
            // An empty big page goes back to the OS (here at once, by collect).
            allocscope_core::collect();
            let tail = ((b as usize + size - 1) & !4095) as *mut u8;
            assert!(!resident(tail), "size {size}: purged after collect");
        }
    })
    .join()
    .unwrap();
}

#[test]
fn metadata_regions_cover_the_page_descriptors_of_live_blocks() {
    let p = heap::alloc(40, 8);
    let mut regions = Vec::new();
    allocscope_core::for_each_metadata_region(&mut |addr, len| regions.push((addr, len)));
    // The block itself is never metadata; its segment's header (4 MiB below) is.
    let segment = p as usize & !((4 << 20) - 1);
    assert!(regions
        .iter()
        .all(|&(a, l)| !(a <= p as usize && (p as usize) < a + l)));
    assert!(regions.iter().any(|&(a, l)| a == segment && l >= 4096));
    // And the calling thread's heap is listed (at least one region outside any segment).
    assert!(regions.iter().any(|&(a, _)| a % (4 << 20) != 0));
    // SAFETY: live, freed once.
    unsafe { heap::free(p) };
}

#[cfg(target_os = "linux")]
#[test]
fn freed_large_spans_are_reused_and_huge_ones_released() {
    std::thread::spawn(|| {
        let a = heap::alloc(1 << 20, 8);
        // SAFETY: live, freed once.
        unsafe { heap::free(a) };
        let b = heap::alloc((1 << 20) - 4096, 8);
        assert_eq!(
            a, b,
            "a span of the right size is taken from the thread's cache"
        );
        // SAFETY: live, freed once.
        unsafe { heap::free(b) };
        let huge = heap::alloc(100 << 20, 8);
        let page = (huge as usize & !4095) as *mut libc::c_void;
        let mut resident = [0u8; 1];
        // SAFETY: mincore reads the mapping state of one page into a 1-byte vector.
        let mapped = unsafe { libc::mincore(page, 4096, resident.as_mut_ptr()) };
        assert_eq!(mapped, 0);
        // SAFETY: live, freed once.
        unsafe { heap::free(huge) };
        // A span that big is not cached: its pages are unmapped at once (mincore: ENOMEM).
        // SAFETY: as above; the address is no longer mapped.
        let unmapped = unsafe { libc::mincore(page, 4096, resident.as_mut_ptr()) };
        assert_eq!(unmapped, -1);
    })
    .join()
    .unwrap();
}

#[test]
fn typed_calls_and_collections_in_the_heap() {
    use allocscope_core::typed::TypedAlloc;
    let a = Allocscope::new();
    let p = a.allocate::<u64>(1000).expect("allocate");
    // SAFETY: room for 1000 u64.
    unsafe { p.as_ptr().write_bytes(7, 1000) };
    // SAFETY: allocated above with the same count.
    unsafe { a.deallocate(p, 1000) };
    let owned = a.boxed(String::from("allocscope")).expect("boxed");
    assert_eq!(owned.len(), 10);
    drop(owned);
    let mut v: allocator_api2::vec::Vec<u32, Allocscope> = allocator_api2::vec::Vec::new_in(a);
    v.extend(0..10_000u32);
    assert_eq!(v.iter().map(|&x| u64::from(x)).sum::<u64>(), 49_995_000);
    assert!(
        a.allocate::<u64>(usize::MAX).is_none(),
        "overflowing count is refused"
    );
}

#[test]
fn large_blocks_grow_by_realloc_keeping_their_contents() {
    let mut size = 100_000usize;
    let mut p = heap::alloc(size, 4096);
    fill(p, size, 9);
    while size < 40 << 20 {
        let new = size + size / 4;
        // SAFETY: p is live with `size` bytes, allocated with alignment 4096.
        let q = unsafe { heap::realloc(p, new, 4096) };
        assert!(!q.is_null());
        assert_eq!(q as usize % 4096, 0);
        // The old bytes are all there (first and last 4 KiB checked, plus a sample).
        for i in (0..4096)
            .chain(size - 4096..size)
            .chain((0..size).step_by(65_521))
        {
            // SAFETY: q is live with at least `new` > i bytes.
            let byte = unsafe { *q.add(i) };
            assert_eq!(
                byte,
                9u8.wrapping_add(i as u8),
                "byte {i} after growing to {new}"
            );
        }
        for i in size..new {
            // SAFETY: q is live with `new` bytes.
            unsafe { *q.add(i) = 9u8.wrapping_add(i as u8) };
        }
        p = q;
        size = new;
    }
    // SAFETY: live, freed once.
    unsafe { heap::free(p) };
}

/// A buffer grown a byte at a time past the classes moves a handful of times: the headroom a
/// large block grows by keeps the next requests at least half of it, the most `realloc` lets
/// a block waste in place (with twice the mapping of headroom it moved at every other page:
/// 2,055 times from 60 kB to 700 kB). Linux only: large blocks grow by `mremap` there, and
/// elsewhere a large block moves at every grow past its mapping (55 moves under Wine).
#[cfg(target_os = "linux")]
#[test]
fn a_buffer_grown_a_byte_at_a_time_past_the_classes_moves_a_few_times() {
    let mut size = 60_000usize;
    let mut p = heap::alloc(size, 8);
    assert!(!p.is_null());
    // SAFETY: p is live with `size` bytes.
    unsafe { p.write(7) };
    let mut moves = 0;
    while size < 700_000 {
        // SAFETY: p is live with `size` bytes, allocated with alignment 8.
        let q = unsafe { heap::realloc(p, size + 1, 8) };
        assert!(!q.is_null());
        // SAFETY: q is live with `size + 1` bytes.
        assert_eq!(unsafe { q.read() }, 7);
        moves += usize::from(q != p);
        p = q;
        size += 1;
    }
    assert!(moves <= 16, "moved {moves} times");
    // SAFETY: live, freed once.
    unsafe { heap::free(p) };
}

/// A large block whose mapping has free addresses after it grows there: same address, no
/// page moved (it moved to a fresh region at every grow before). Aligned mappings are trimmed,
/// which often leaves a gap after one: blocks are allocated (and kept, so that none is handed
/// out twice) until one has a free page after it, which a resize by one page then takes.
#[cfg(target_os = "linux")]
#[test]
fn a_large_block_grows_in_place_where_the_addresses_after_it_are_free() {
    let mut held = Vec::new();
    let mut in_place = 0;
    for attempt in 0..40u8 {
        let size = 6 << 20;
        let p = heap::alloc(size, 8);
        assert!(!p.is_null());
        // SAFETY: p is live.
        let usable = unsafe { heap::usable_size(p) };
        let end = p as usize + usable;
        // Whether the page after the mapping is free: a mapping there, replacing nothing.
        // SAFETY: MAP_FIXED_NOREPLACE never replaces a mapping; ours is unmapped at once.
        let free = unsafe {
            let q = libc::mmap(
                end as *mut libc::c_void,
                4096,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            );
            if q != libc::MAP_FAILED {
                libc::munmap(q, 4096);
            }
            q as usize == end
        };
        if !free {
            held.push(p);
            continue;
        }
        fill(p, size, attempt);
        // SAFETY: p is live with `size` bytes.
        let q = unsafe { heap::realloc(p, usable + 4096, 8) };
        assert_eq!(
            q, p,
            "attempt {attempt}: moved although the page after it was free"
        );
        in_place += 1;
        check(q, size, attempt);
        // SAFETY: live, freed once.
        unsafe { heap::free(q) };
    }
    for p in held {
        // SAFETY: live, freed once.
        unsafe { heap::free(p) };
    }
    assert!(in_place > 0, "no large block had a free page after it");
}

#[test]
fn next_block_names_the_block_the_next_allocation_of_the_size_takes() {
    // Run on a thread of its own: the harness's threads allocate between our calls otherwise.
    std::thread::spawn(|| {
        let mut named = 0;
        for &(size, align) in &[(24usize, 8usize), (100, 16), (1000, 8), (8, 8)] {
            let mut held = Vec::with_capacity(64);
            for _ in 0..64 {
                let hint = heap::next_block(size, align);
                let p = heap::alloc(size, align);
                assert!(!p.is_null());
                // The hint names the block, or nothing (a fresh page is about to be taken).
                if !hint.is_null() {
                    assert_eq!(hint, p, "size {size} align {align}");
                    named += 1;
                }
                held.push(p);
            }
            for p in held {
                // SAFETY: live blocks of this heap, each freed once.
                unsafe { heap::free(p) };
            }
        }
        // Most of them: a page hands out its blocks in runs (lazy extension, free lists taken
        // over), and only the first of a run is unnamed.
        assert!(named >= 128, "the hint named only {named} of 256 blocks");
        // Sizes and alignments the fast path does not serve have no hint.
        assert!(heap::next_block(4096, 8).is_null());
        assert!(heap::next_block(64, 64).is_null());
    })
    .join()
    .unwrap();
}
