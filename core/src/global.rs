//! The type users install: `#[global_allocator] static A: Allocscope = Allocscope::new();`.
//! It is a zero-sized handle onto the process-wide thread-caching heap ([`crate::heap`]), usable
//! as a `GlobalAlloc`, as an `allocator_api2::alloc::Allocator` (`Vec<T, Allocscope>`), and
//! through the typed calls of [`TypedAlloc`] (`allocate::<T>(count)`, `allocate_bytes`, ...).
//!
//! May touch: [`crate::heap`], [`crate::error`].

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use crate::heap;
use crate::typed::{impl_allocator_api2, TypedAlloc};

/// The allocscope heap: lock-free, thread-caching, returns memory to the OS after peaks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocscope;

impl Allocscope {
    /// The handle; `const` so it can initialise a `static` `#[global_allocator]`.
    pub const fn new() -> Self {
        Allocscope
    }
}

// SAFETY: blocks come from the heap, which returns blocks of at least the requested size and
// alignment, disjoint from every live block, valid until freed (the heap is never torn down);
// `resize_in_place` reports success only when the block's usable size covers the new size.
unsafe impl TypedAlloc for Allocscope {
    /// Allocates `size` bytes aligned to `align` (a power of two). `None` when out of memory
    /// or when the request is invalid; [`crate::error::last_error`] says which.
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            crate::error::record(crate::error::AllocErrorKind::InvalidRequest);
            return None;
        }
        NonNull::new(heap::alloc(size, align))
    }

    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, _size: usize, _align: usize) {
        // SAFETY: the caller guarantees `ptr` is a live allocation of this heap.
        unsafe { heap::free(ptr.as_ptr()) }
    }

    unsafe fn resize_in_place(
        &self,
        ptr: NonNull<u8>,
        _old_size: usize,
        new_size: usize,
        _align: usize,
    ) -> bool {
        // SAFETY: the caller guarantees `ptr` is a live block of this heap.
        new_size <= unsafe { heap::usable_size(ptr.as_ptr()) }
    }
}

// SAFETY: every method forwards to the heap, which returns blocks of at least the requested
// size and alignment, or null; `dealloc`/`realloc` get only pointers this heap returned.
unsafe impl GlobalAlloc for Allocscope {
    // Always inline: a wrapper (the tracker's default path) otherwise calls this as a function
    // of its own, with a second frame around the heap's fast path (cachegrind, the tracker's
    // overhead bench: 15 instructions a pair fewer inline).
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        heap::alloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        heap::alloc_zeroed(layout.size(), layout.align())
    }

    // Always inline: as for `alloc`.
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: GlobalAlloc's contract: `ptr` was returned by this allocator.
        unsafe { heap::free(ptr) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: GlobalAlloc's contract: `ptr` was returned by this allocator with `layout`.
        unsafe { heap::realloc(ptr, new_size, layout.align()) }
    }
}

impl_allocator_api2!([] Allocscope);
