//! A firmware image that calls every allocation path of every strategy allocator — `TypedAlloc`
//! (`allocate_bytes`, `deallocate_bytes`, `resize_in_place`, `allocate`, `deallocate`,
//! `boxed`), `allocator_api2::Allocator` (`allocate`, `allocate_zeroed`, `grow`,
//! `grow_zeroed`, `shrink`, `deallocate`), and `GlobalAlloc` on a spin-locked strategy — with
//! sizes and alignments the optimiser cannot see (read with volatile loads), on pool, stack (and
//! its scopes), buddy, slab cache (and its magazine), lock-free pool (and its per-thread cache).
//!
//! The panic handler calls a function that exists nowhere. After fat LTO and the linker's
//! garbage collection, the handler survives only if some panic remains reachable, and then
//! the link fails naming `allocscope_allocation_path_can_panic`. So a successful link is the
//! proof that, as compiled for `thumbv7em-none-eabihf` in release, none of these paths can
//! panic (tests/no_panic.sh also checks that the check can fail).
//!
//! Constructors (`from_buffer`, `empty`) run too; they are set-up, but a panic there would fail
//! the link as well.
#![no_std]
#![no_main]
// Each build enables one strategy's feature: the others' statics and imports go unused.
#![allow(unused)]

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};

use allocator_api2::alloc::Allocator;
use allocscope_core::buddy::Buddy;
use allocscope_core::lock_free::LockFreePool;
use allocscope_core::pool::Pool;
use allocscope_core::slab::SlabCache;
use allocscope_core::spin::SpinLock;
use allocscope_core::stack::Stack;
use allocscope_core::typed::TypedAlloc;

/// Request sizes and alignments, set by "the outside world" (a debugger, say): volatile loads
/// keep every branch of the allocation paths alive.
static mut INPUTS: [usize; 4] = [24, 8, 200, 16];
/// Where results go, so that nothing is optimised away.
static mut SINK: usize = 0;

static mut POOL_MEMORY: [MaybeUninit<u8>; 4096] = [MaybeUninit::uninit(); 4096];
static mut STACK_MEMORY: [MaybeUninit<u8>; 4096] = [MaybeUninit::uninit(); 4096];
static mut BUDDY_MEMORY: [MaybeUninit<u8>; 8192] = [MaybeUninit::uninit(); 8192];
static mut SLAB_MEMORY: [MaybeUninit<u8>; 16384] = [MaybeUninit::uninit(); 16384];
static mut LOCK_FREE_MEMORY: [MaybeUninit<u8>; 8192] = [MaybeUninit::uninit(); 8192];
static mut GLOBAL_MEMORY: [MaybeUninit<u8>; 8192] = [MaybeUninit::uninit(); 8192];

static GLOBAL: SpinLock<Buddy<'static>> = SpinLock::new(Buddy::empty(16));

fn input(i: usize) -> usize {
    // SAFETY: a plain read of a static nothing else writes concurrently (one thread).
    unsafe {
        addr_of_mut!(INPUTS)
            .cast::<usize>()
            .add(i % 4)
            .read_volatile()
    }
}

fn sink(value: usize) {
    // SAFETY: as in `input`.
    unsafe { addr_of_mut!(SINK).write_volatile(value) }
}

/// Takes a static buffer (each is taken exactly once, in `_start`).
///
/// # Safety
/// No other reference to `buffer` exists or is made afterwards.
unsafe fn take<const N: usize>(
    buffer: *mut [MaybeUninit<u8>; N],
) -> &'static mut [MaybeUninit<u8>] {
    // SAFETY: the caller's guarantee.
    unsafe { &mut *buffer }
}

/// Every `TypedAlloc` and `Allocator` path of `a`, with opaque sizes.
fn exercise<A: TypedAlloc + Allocator>(a: &A) {
    let (size, align, big, big_align) = (input(0), input(1), input(2), input(3));
    if let Some(p) = a.allocate_bytes(size, align) {
        sink(p.as_ptr() as usize);
        // SAFETY: `p` came from allocate_bytes(size, align) on `a`.
        let grown = unsafe { a.resize_in_place(p, size, big, align) };
        let now = if grown { big } else { size };
        // SAFETY: as above, with the size the block has now.
        unsafe { a.deallocate_bytes(p, now, align) };
    }
    if let Some(p) = <A as TypedAlloc>::allocate::<u64>(a, size) {
        sink(p.as_ptr() as usize);
        // SAFETY: `p` came from allocate::<u64>(size).
        unsafe { <A as TypedAlloc>::deallocate(a, p, size) };
    }
    if let Ok(owned) = a.boxed(size) {
        sink(*owned);
    }
    let (Ok(small), Ok(large)) = (
        Layout::from_size_align(size, align),
        Layout::from_size_align(big, big_align),
    ) else {
        return;
    };
    if let Ok(p) = Allocator::allocate(a, small) {
        let p = p.cast::<u8>();
        // SAFETY: `p` is a live block of `small`; grow asks for `large`, which the caller
        // must make no smaller: checked here.
        let p = match (large.size() >= small.size()).then(|| unsafe { a.grow(p, small, large) }) {
            Some(Ok(q)) => {
                let q = q.cast::<u8>();
                // SAFETY: `q` is a live block of `large`, shrunk back to `small`.
                match unsafe { a.shrink(q, large, small) } {
                    Ok(r) => (r.cast::<u8>(), small),
                    Err(_) => (q, large),
                }
            }
            _ => (p, small),
        };
        // SAFETY: `p.0` is live with layout `p.1`.
        unsafe { Allocator::deallocate(a, p.0, p.1) };
    }
    if let Ok(p) = a.allocate_zeroed(small) {
        let p = p.cast::<u8>();
        if large.size() >= small.size() {
            // SAFETY: `p` is a live block of `small`, `large` is no smaller.
            match unsafe { a.grow_zeroed(p, small, large) } {
                // SAFETY: the grown block, with its layout.
                Ok(q) => unsafe { Allocator::deallocate(a, q.cast(), large) },
                // SAFETY: on failure the old block is still live.
                Err(_) => unsafe { Allocator::deallocate(a, p, small) },
            }
        } else {
            // SAFETY: `p` is live with layout `small`.
            unsafe { Allocator::deallocate(a, p, small) };
        }
    }
}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    #[cfg(feature = "pool")]
    pool();
    #[cfg(feature = "stack")]
    stack();
    #[cfg(feature = "buddy")]
    buddy();
    #[cfg(feature = "slab")]
    slab();
    #[cfg(feature = "lock_free")]
    lock_free();
    #[cfg(feature = "global")]
    global();
    // The check's own test: a panic the optimiser cannot remove must fail the link.
    #[cfg(feature = "must_fail")]
    if input(0) == 12345 {
        panic!("reachable");
    }
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(feature = "pool")]
fn pool() {
    // SAFETY (every `take` below): each static buffer is taken once, by its strategy's function.
    let pool_memory = unsafe { take(addr_of_mut!(POOL_MEMORY)) };
    if let Some(pool) = Pool::from_buffer(pool_memory, input(0), input(1)) {
        exercise(&pool);
    }
}

#[cfg(feature = "stack")]
fn stack() {
    let stack_memory = unsafe { take(addr_of_mut!(STACK_MEMORY)) };
    let mut stack = Stack::from_buffer(stack_memory);
    exercise(&stack);
    let marker = stack.marker();
    if let Some(p) = stack.allocate_bytes(input(0), input(1)) {
        sink(p.as_ptr() as usize);
    }
    // SAFETY: nothing allocated after `marker` is used any more.
    unsafe { stack.reset_to(marker) };
    {
        let mut scope = stack.scope();
        exercise(&scope);
        let inner = scope.scope();
        exercise(&inner);
    }
    stack.reset();
}

#[cfg(feature = "buddy")]
fn buddy() {
    let buddy_memory = unsafe { take(addr_of_mut!(BUDDY_MEMORY)) };
    if let Some(buddy) = Buddy::from_buffer(buddy_memory, input(3)) {
        exercise(&buddy);
    }
}

#[cfg(feature = "slab")]
fn slab() {
    let slab_memory = unsafe { take(addr_of_mut!(SLAB_MEMORY)) };
    let slab = SlabCache::<[u64; 3]>::from_buffer(slab_memory).with_constructor(|| [0; 3]);
    exercise(&slab);
    if let Some(object) = slab.get() {
        sink(object[0] as usize);
    }
    {
        let magazine = slab.magazine();
        exercise(&magazine);
        if let Some(object) = magazine.get() {
            sink(object[1] as usize);
        };
    }
    sink(slab.shrink());
}

#[cfg(feature = "lock_free")]
fn lock_free() {
    let lock_free_memory = unsafe { take(addr_of_mut!(LOCK_FREE_MEMORY)) };
    if let Some(lock_free) = LockFreePool::from_buffer(lock_free_memory, input(0), input(1)) {
        exercise(&lock_free);
        let cache = lock_free.cache();
        exercise(&cache);
    }
}

#[cfg(feature = "global")]
fn global() {
    let global_memory = unsafe { take(addr_of_mut!(GLOBAL_MEMORY)) };
    if GLOBAL.lock().init(global_memory) {
        exercise(&GLOBAL);
        if let Ok(layout) = Layout::from_size_align(input(0), input(1)) {
            // SAFETY: GlobalAlloc's contract: a non-zero size (checked), the same layout at
            // free, realloc to a non-zero size that does not overflow (checked).
            unsafe {
                if layout.size() != 0 {
                    let p = GLOBAL.alloc(layout);
                    let q = GLOBAL.alloc_zeroed(layout);
                    let grown = Layout::from_size_align(input(2), layout.align());
                    match grown {
                        Ok(grown) if !p.is_null() && grown.size() != 0 => {
                            match NonNull::new(GLOBAL.realloc(p, layout, grown.size())) {
                                Some(r) => GLOBAL.dealloc(r.as_ptr(), grown),
                                None => GLOBAL.dealloc(p, layout),
                            }
                        }
                        _ if !p.is_null() => GLOBAL.dealloc(p, layout),
                        _ => {}
                    }
                    if !q.is_null() {
                        GLOBAL.dealloc(q, layout);
                    }
                }
            }
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    extern "C" {
        /// Defined nowhere: referencing it fails the link.
        fn allocscope_allocation_path_can_panic() -> !;
    }
    // SAFETY: never runs — the image only links if this call is unreachable.
    unsafe { allocscope_allocation_path_can_panic() }
}
