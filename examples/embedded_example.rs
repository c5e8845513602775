//! Firmware-style allocation: a pool and a buddy allocator over static buffers (no OS, no
//! `std` in the allocation code), and a spin-locked buddy over a static region — the
//! `GlobalAlloc` a firmware installs with `#[global_allocator]`. Running out of memory is a `None` / `AllocError` / null pointer the
//! code handles, never a panic.
//!
//! The allocation code (module `firmware`) uses only `core` and `allocscope`'s `no_std` subset,
//! which builds for `thumbv7em-none-eabihf` with `--no-default-features`; this host program
//! adds `std` only to print what happens.
//!
//! `cargo run --release --example embedded_example`

use std::alloc::{GlobalAlloc, Layout};

use allocscope::buddy::Buddy;
use allocscope::spin::SpinLock;

/// The global heap: a buddy allocator over [`firmware::HEAP_MEMORY`], shared through a spin
/// lock. It is empty until `main` hands it its region.
///
/// Firmware puts `#[global_allocator]` on this static: there nothing allocates before `main`.
/// A host program's std runtime allocates before `main` (while this heap is still empty), so
/// here the same static is called directly, through `GlobalAlloc` and `allocator_api2`.
static HEAP: SpinLock<Buddy<'static>> = SpinLock::new(Buddy::empty(16));

mod firmware {
    use core::mem::{size_of, MaybeUninit};
    use core::ptr::{addr_of_mut, NonNull};

    use allocscope::buddy::Buddy;
    use allocscope::error::{last_error, AllocErrorKind};
    use allocscope::pool::Pool;
    use allocscope::typed::TypedAlloc;

    /// Memory for the global heap.
    pub static mut HEAP_MEMORY: [MaybeUninit<u8>; 1 << 20] = [MaybeUninit::uninit(); 1 << 20];
    static mut SAMPLE_MEMORY: [MaybeUninit<u8>; 4096] = [MaybeUninit::uninit(); 4096];
    static mut MESSAGE_MEMORY: [MaybeUninit<u8>; 32 * 1024] = [MaybeUninit::uninit(); 32 * 1024];

    /// Takes the one reference ever made to the global heap's memory.
    ///
    /// # Safety
    /// Called once, before anything else touches `HEAP_MEMORY`.
    pub unsafe fn heap_memory() -> &'static mut [MaybeUninit<u8>] {
        // SAFETY: the caller's guarantee: this is the only reference to HEAP_MEMORY.
        unsafe { &mut *addr_of_mut!(HEAP_MEMORY) }
    }

    /// A sensor reading, the fixed-size object a pool is for.
    #[derive(Clone, Copy)]
    pub struct Sample {
        pub channel: u16,
        pub value: i32,
        pub timestamp: u64,
        pub raw: [u8; 16],
    }

    /// What the pool did: blocks that fit, the error when it ran out, and whether freeing one
    /// block made the next allocation succeed.
    pub struct PoolRun {
        pub block_size: usize,
        pub fitted: usize,
        pub error: Option<AllocErrorKind>,
        pub failures: u64,
        pub reused_after_free: bool,
        pub intact: bool,
    }

    /// Fills a pool over a 4 KiB static buffer until it says no.
    ///
    /// # Safety
    /// Called once (it takes the only reference to `SAMPLE_MEMORY`).
    pub unsafe fn pool_until_exhausted() -> PoolRun {
        // SAFETY: the caller's guarantee: the only reference to SAMPLE_MEMORY.
        let buffer: &'static mut [MaybeUninit<u8>] = unsafe { &mut *addr_of_mut!(SAMPLE_MEMORY) };
        let pool = Pool::from_buffer(buffer, size_of::<Sample>(), 8)
            .expect("4 KiB holds at least one sample");
        let mut held: [Option<NonNull<Sample>>; 256] = [None; 256];
        let mut fitted = 0;
        let error = loop {
            match pool.allocate::<Sample>(1) {
                Some(p) => {
                    // SAFETY: a fresh block of one Sample.
                    unsafe {
                        p.as_ptr().write(Sample {
                            channel: fitted as u16,
                            value: -(fitted as i32),
                            timestamp: fitted as u64,
                            raw: [fitted as u8; 16],
                        })
                    };
                    held[fitted] = Some(p);
                    fitted += 1;
                }
                None => break last_error(),
            }
        };
        // Free one reading: the next allocation gets its block back.
        let first = held[0].take().expect("at least one sample fitted");
        // SAFETY: allocated above with count 1, not used afterwards.
        unsafe { pool.deallocate(first, 1) };
        let again = pool.allocate::<Sample>(1);
        let reused_after_free = again == Some(first);
        held[0] = again;
        let failures = pool.stats().failures;
        // Every reading is still what was written: no two blocks overlap.
        let intact = held[1..fitted].iter().enumerate().all(|(i, p)| {
            let n = i + 1;
            // SAFETY: a live, initialised Sample (written above, not freed yet).
            let s = unsafe { p.expect("held").as_ptr().read() };
            s.channel == n as u16
                && s.value == -(n as i32)
                && s.timestamp == n as u64
                && s.raw == [n as u8; 16]
        });
        for p in held.iter().flatten() {
            // SAFETY: every held pointer is a live block of one Sample, freed once.
            unsafe { pool.deallocate(*p, 1) };
        }
        PoolRun {
            block_size: pool.block_size(),
            fitted,
            error,
            failures,
            reused_after_free,
            intact,
        }
    }

    /// What the buddy did with messages of mixed sizes.
    pub struct BuddyRun {
        pub heap_size: usize,
        pub messages: usize,
        pub used_at_exhaustion: usize,
        pub error: Option<AllocErrorKind>,
        pub big_with_holes: bool,
        pub fragmentation_with_holes: f64,
        pub big_after_coalescing: bool,
    }

    /// Messages of 100–1500 bytes into a buddy over a 32 KiB static buffer until it says no;
    /// then every other message freed (holes: a 8 KiB block does not fit); then all freed (the
    /// buddies coalesce: it fits).
    ///
    /// # Safety
    /// Called once (it takes the only reference to `MESSAGE_MEMORY`).
    pub unsafe fn buddy_until_exhausted() -> BuddyRun {
        // SAFETY: the caller's guarantee: the only reference to MESSAGE_MEMORY.
        let buffer: &'static mut [MaybeUninit<u8>] = unsafe { &mut *addr_of_mut!(MESSAGE_MEMORY) };
        let buddy = Buddy::from_buffer(buffer, 32).expect("32 KiB is room for a buddy heap");
        let mut held: [Option<(NonNull<u8>, usize)>; 128] = [None; 128];
        let mut n = 0;
        let mut size = 100;
        let error = loop {
            if n == held.len() {
                break None;
            }
            match buddy.allocate_bytes(size, 8) {
                Some(p) => {
                    held[n] = Some((p, size));
                    n += 1;
                    size = 100 + (size * 7 + 300) % 1400;
                }
                None => break last_error(),
            }
        };
        let used_at_exhaustion = buddy.stats().used_bytes;
        for slot in held.iter_mut().step_by(2) {
            if let Some((p, size)) = slot.take() {
                // SAFETY: allocated above with this size and alignment, freed once.
                unsafe { buddy.deallocate_bytes(p, size, 8) };
            }
        }
        let big = buddy.allocate_bytes(8 * 1024, 8);
        let big_with_holes = big.is_some();
        let fragmentation_with_holes = buddy.stats().fragmentation;
        if let Some(p) = big {
            // SAFETY: allocated just above.
            unsafe { buddy.deallocate_bytes(p, 8 * 1024, 8) };
        }
        for (p, size) in held.iter_mut().filter_map(Option::take) {
            // SAFETY: the remaining blocks, each freed once.
            unsafe { buddy.deallocate_bytes(p, size, 8) };
        }
        let big = buddy.allocate_bytes(8 * 1024, 8);
        let big_after_coalescing = big.is_some();
        if let Some(p) = big {
            // SAFETY: allocated just above.
            unsafe { buddy.deallocate_bytes(p, 8 * 1024, 8) };
        }
        BuddyRun {
            heap_size: buddy.heap_size(),
            messages: n,
            used_at_exhaustion,
            error,
            big_with_holes,
            fragmentation_with_holes,
            big_after_coalescing,
        }
    }
}

fn main() {
    // Before the first allocation of the program: give the global heap its region.
    // SAFETY: called once, first thing in main; nothing else references HEAP_MEMORY.
    let region = unsafe { firmware::heap_memory() };
    let size = region.len();
    let ready = HEAP.lock().init(region);
    assert!(ready, "the global heap takes its region");
    println!(
        "embedded_example: a {} KiB static region for the SpinLock<Buddy> heap",
        size / 1024
    );

    // SAFETY: called once.
    let pool = unsafe { firmware::pool_until_exhausted() };
    println!(
        "\npool of {} B sensor samples over a 4 KiB static buffer:",
        pool.block_size
    );
    println!(
        "  {} samples fitted; the next allocation returned None ({:?}), {} failure(s) counted",
        pool.fitted, pool.error, pool.failures
    );
    println!(
        "  every sample read back intact: {}; after freeing one, the next allocation {} its block",
        pool.intact,
        if pool.reused_after_free {
            "got back"
        } else {
            "did not get"
        }
    );

    // SAFETY: called once.
    let buddy = unsafe { firmware::buddy_until_exhausted() };
    println!(
        "\nbuddy over a 32 KiB static buffer ({} B of heap after its bitmaps):",
        buddy.heap_size
    );
    println!(
        "  {} messages of 100-1500 B, {} B in use, then None ({:?})",
        buddy.messages, buddy.used_at_exhaustion, buddy.error
    );
    println!(
        "  every other message freed: an 8 KiB block {} (fragmentation {:.2})",
        if buddy.big_with_holes {
            "fits"
        } else {
            "does not fit: None"
        },
        buddy.fragmentation_with_holes
    );
    println!(
        "  all freed, buddies coalesced: an 8 KiB block {}",
        if buddy.big_after_coalescing {
            "fits"
        } else {
            "still does not fit"
        }
    );

    // The spin-locked heap as a GlobalAlloc and behind collections; a request it cannot
    // serve is answered with null (GlobalAlloc) and with an error (try_reserve), not a panic.
    let mut readings = allocator_api2::vec::Vec::new_in(&HEAP);
    readings.extend(0..10_000u32);
    let mut text = allocator_api2::vec::Vec::new_in(&HEAP);
    text.extend_from_slice(b"10000 readings");
    let s = HEAP.lock().stats();
    println!(
        "\nSpinLock<Buddy> over the static region: a Vec of {} u32 and a {}-byte buffer live: {} KiB used, peak {} KiB",
        readings.len(),
        text.len(),
        s.used_bytes / 1024,
        s.peak_used_bytes / 1024
    );
    let too_big = Layout::from_size_align(2 << 20, 8).expect("a valid layout");
    // SAFETY: a non-zero layout; a non-null result would be freed below.
    let p = unsafe { HEAP.alloc(too_big) };
    println!("  GlobalAlloc::alloc of 2 MiB returned {p:?}");
    if !p.is_null() {
        // SAFETY: allocated just above with `too_big`.
        unsafe { HEAP.dealloc(p, too_big) };
    }
    match readings.try_reserve(1 << 20) {
        Ok(()) => println!("  Vec::try_reserve of 1M more readings succeeded"),
        Err(e) => println!("  Vec::try_reserve of 1M more readings returned Err({e})"),
    }
    drop((readings, text));
    let s = HEAP.lock().stats();
    println!(
        "  after the Vecs are dropped: {} B used; failures counted by the heap: {}",
        s.used_bytes, s.failures
    );
}
