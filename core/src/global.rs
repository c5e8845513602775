//! The type users install: `#[global_allocator] static A: Allocscope = Allocscope::new();`.
//! It is a zero-sized handle onto the process-wide thread-caching heap ([`crate::heap`]), usable
//! as a `GlobalAlloc`, as an `allocator_api2::alloc::Allocator` (`Vec<T, Allocscope>`), and
//! through typed calls.
//!
//! May touch: [`crate::heap`], [`crate::error`].

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

use crate::heap;

/// The allocscope heap: lock-free, thread-caching, returns memory to the OS after peaks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Allocscope;

impl Allocscope {
    /// The handle; `const` so it can initialise a `static` `#[global_allocator]`.
    pub const fn new() -> Self {
        Allocscope
    }

    /// Allocates room for `count` values of `T` (uninitialised). `None` when out of memory or
    /// when `count * size_of::<T>()` overflows. A zero-sized request gives a dangling pointer.
    pub fn allocate<T>(&self, count: usize) -> Option<NonNull<T>> {
        let layout = Layout::array::<T>(count).ok()?;
        if layout.size() == 0 {
            return Some(NonNull::dangling());
        }
        self.allocate_bytes(layout.size(), layout.align())
            .map(NonNull::cast)
    }

    /// Frees what [`Allocscope::allocate`] gave.
    ///
    /// # Safety
    /// `ptr` came from `allocate::<T>(count)` on this heap with the same `count`, and is not
    /// used afterwards.
    pub unsafe fn deallocate<T>(&self, ptr: NonNull<T>, count: usize) {
        if core::mem::size_of::<T>() == 0 || count == 0 {
            return;
        }
        // SAFETY: the caller guarantees `ptr` is a live allocation of this heap.
        unsafe { heap::free(ptr.as_ptr().cast()) }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two). `None` when out of memory or
    /// when the request is invalid; [`crate::error::last_error`] says which.
    pub fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !align.is_power_of_two() {
            crate::error::record(crate::error::AllocErrorKind::InvalidRequest);
            return None;
        }
        NonNull::new(heap::alloc(size.max(1), align))
    }

    /// Frees what [`Allocscope::allocate_bytes`] gave.
    ///
    /// # Safety
    /// `ptr` came from `allocate_bytes(size, align)` on this heap and is not used afterwards.
    pub unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        let _ = (size, align);
        // SAFETY: the caller guarantees `ptr` is a live allocation of this heap.
        unsafe { heap::free(ptr.as_ptr()) }
    }
}

// SAFETY: every method forwards to the heap, which returns blocks of at least the requested
// size and alignment, or null; `dealloc`/`realloc` get only pointers this heap returned.
unsafe impl GlobalAlloc for Allocscope {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        heap::alloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        heap::alloc_zeroed(layout.size(), layout.align())
    }

    #[inline]
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

// SAFETY: blocks stay valid until deallocated (the heap is process-wide and never torn down);
// copies of the zero-sized handle share the same heap.
unsafe impl Allocator for Allocscope {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            let dangling = layout.align() as *mut u8;
            // SAFETY: align is non-zero.
            let p = unsafe { NonNull::new_unchecked(dangling) };
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        let p = NonNull::new(heap::alloc(layout.size(), layout.align())).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: Allocator's contract: `ptr` is currently allocated by this allocator.
            unsafe { heap::free(ptr.as_ptr()) }
        }
    }
}
