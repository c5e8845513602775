//! A spin lock, and through it a way to share a single-owner strategy allocator between threads
//! or install it as a `#[global_allocator]` in firmware:
//!
//! ```
//! use core::mem::MaybeUninit;
//! use allocscope_core::{buddy::Buddy, spin::SpinLock, typed::TypedAlloc};
//!
//! static HEAP: SpinLock<Buddy<'static>> = SpinLock::new(Buddy::empty(32));
//! static mut ARENA: [MaybeUninit<u8>; 64 * 1024] = [MaybeUninit::uninit(); 64 * 1024];
//!
//! // At start-up, before the first allocation (the only reference ever made to ARENA):
//! assert!(HEAP.lock().init(unsafe { &mut *core::ptr::addr_of_mut!(ARENA) }));
//! let p = HEAP.allocate::<u64>(4).unwrap();
//! unsafe { HEAP.deallocate(p, 4) };
//! ```
//!
//! A spin lock is acceptable here because the critical sections are a few dozen instructions
//! and never block. It is not for interrupt handlers: an interrupt that allocates while the
//! interrupted code holds the lock spins forever on a single core (disable interrupts around
//! allocation, or give the handler its own pool). The lock-free pool and the slab cache are the
//! choices for many threads allocating hard at once.
//!
//! May touch: [`crate::sync`], [`crate::typed`].

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

use crate::sync::{spin_hint, AtomicBool, Ordering};
use crate::typed::{global, impl_allocator_api2, TypedAlloc};

/// A test-and-test-and-set spin lock around a value.
#[derive(Debug)]
pub struct SpinLock<T> {
    locked: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time (acquire/release on `locked`), so
// sharing the lock only needs the value to be movable between threads.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock; `const` so it can initialise a `static`.
    #[cfg(not(loom))]
    pub const fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// An unlocked lock (loom's atomics have no `const` constructor).
    #[cfg(loom)]
    pub fn new(value: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Spins until the lock is free and takes it.
    #[inline]
    pub fn lock(&self) -> SpinGuard<'_, T> {
        loop {
            if let Some(guard) = self.try_lock() {
                return guard;
            }
            // Relaxed: only a hint that the lock may be free; the CAS in try_lock acquires.
            while self.locked.load(Ordering::Relaxed) {
                spin_hint();
            }
        }
    }

    /// Takes the lock if it is free.
    #[inline]
    pub fn try_lock(&self) -> Option<SpinGuard<'_, T>> {
        // Acquire on success: everything the previous holder wrote before its release store
        // is visible to us. Relaxed on failure: we learn nothing and touch nothing.
        self.locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| SpinGuard { lock: self })
    }

    /// Releases the lock whose guard was forgotten (`core::mem::forget`): for a hand-over no
    /// guard can span, such as `fork` (the lock taken before it, released after it in both
    /// processes, so the child never inherits it held by a thread it does not have).
    ///
    /// # Safety
    /// The lock is held, by the calling thread (or, in a forked child, by the thread that
    /// forked), and no guard of it is alive: the value is not in use.
    pub unsafe fn force_unlock(&self) {
        // Release: the holder's writes to the value happen-before the next holder's acquire.
        self.locked.store(false, Ordering::Release);
    }

    /// The value, without locking: `&mut self` proves nobody else holds it.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    /// The value, consuming the lock.
    pub fn into_inner(self) -> T {
        self.value.into_inner()
    }
}

/// Access to the value of a [`SpinLock`]; unlocks when dropped.
#[derive(Debug)]
pub struct SpinGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock, and `&mut self`
        // makes this the only reference made through it.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // Release: our writes to the value happen-before the next holder's acquire.
        self.lock.locked.store(false, Ordering::Release);
    }
}

// SAFETY: every call runs under the lock, so the inner allocator sees one caller at a time, as
// its single-owner contract requires; it upholds TypedAlloc's contract itself.
unsafe impl<A: TypedAlloc + Send> TypedAlloc for SpinLock<A> {
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.lock().allocate_bytes(size, align)
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.lock().deallocate_bytes(ptr, size, align) }
    }

    #[inline]
    unsafe fn resize_in_place(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        align: usize,
    ) -> bool {
        // SAFETY: forwarded unchanged; the caller upholds the contract.
        unsafe { self.lock().resize_in_place(ptr, old_size, new_size, align) }
    }
}

// SAFETY: forwards to the TypedAlloc implementation above, whose blocks have at least the
// requested size and alignment and stay valid until freed; null on failure.
unsafe impl<A: TypedAlloc + Send> GlobalAlloc for SpinLock<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        global::alloc(self, layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout`.
        unsafe { global::dealloc(self, ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc` with `layout`.
        unsafe { global::realloc(self, ptr, layout, new_size) }
    }
}

impl_allocator_api2!([A: TypedAlloc + Send] SpinLock<A>);
