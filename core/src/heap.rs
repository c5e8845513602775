//! TEMPORARY stand-in while the thread-caching heap is written (same interface): forwards to
//! the C library. Replaced by the real heap in the next commits.
#![allow(missing_docs)]

pub fn alloc(size: usize, align: usize) -> *mut u8 {
    let mut p = core::ptr::null_mut();
    // SAFETY: posix_memalign writes p on success.
    let r = unsafe { libc::posix_memalign(&mut p, align.max(core::mem::size_of::<usize>()), size) };
    if r == 0 { p.cast() } else { core::ptr::null_mut() }
}

pub fn alloc_zeroed(size: usize, align: usize) -> *mut u8 {
    let p = alloc(size, align);
    if !p.is_null() {
        // SAFETY: p is size bytes.
        unsafe { core::ptr::write_bytes(p, 0, size) };
    }
    p
}

/// # Safety
/// ptr from alloc.
pub unsafe fn free(ptr: *mut u8) {
    // SAFETY: caller.
    unsafe { libc::free(ptr.cast()) }
}

/// # Safety
/// ptr from alloc.
pub unsafe fn usable_size(ptr: *const u8) -> usize {
    // SAFETY: caller.
    unsafe { libc::malloc_usable_size(ptr as *mut _) }
}

/// # Safety
/// ptr from alloc.
pub unsafe fn realloc(ptr: *mut u8, new_size: usize, align: usize) -> *mut u8 {
    let n = alloc(new_size, align);
    if !n.is_null() && !ptr.is_null() {
        // SAFETY: caller.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, n, usable_size(ptr).min(new_size));
            free(ptr);
        }
    }
    n
}
