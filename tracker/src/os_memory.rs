//! The tracker's own memory for its tables: whole mappings from the core's OS layer, never the
//! heap (the tables must exist before the heap can be tracked, and must not be tracked). Every
//! mapping is counted as overhead and listed, so the leak check can skip memory that holds the
//! tracker's copies of program pointers.
//!
//! May touch: [`allocscope_core::os`], [`allocscope_core::sync`].

use core::ptr::NonNull;

use allocscope_core::os::{align_up, Os, SystemOs};
use allocscope_core::sync::{AtomicUsize, Ordering};

/// Most mappings listed at once (tables grow by replacing their mapping, so few are alive).
const MAX_REGIONS: usize = 1024;

/// Start and length of each live mapping; (0, 0) marks a free entry. A region is published by
/// storing its length last (Release) and read length-first (Acquire).
static REGION_START: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];
static REGION_LEN: [AtomicUsize; MAX_REGIONS] = [const { AtomicUsize::new(0) }; MAX_REGIONS];

/// Bytes mapped by the tracker. Relaxed: a statistic.
static MAPPED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The OS page size.
pub(crate) fn page_size() -> usize {
    SystemOs.page_size()
}

/// Maps `bytes` (rounded up to pages) of zeroed, readable and writable memory.
pub(crate) fn map(bytes: usize) -> Option<NonNull<u8>> {
    map_aligned(bytes, page_size())
}

/// Transparent huge pages' size where the tracker asks for them (x86-64's and most aarch64
/// kernels' 2 MiB).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// As [`map`], with transparent huge pages asked for (`MADV_HUGEPAGE`, a hint the kernel may
/// ignore) and the mapping aligned to [`HUGE_PAGE`] so that every 2 MiB of it can be one. For
/// tables touched in random order across their whole length, where one TLB entry per 4 KiB
/// means a page walk for nearly every access. Released with [`unmap`] as usual.
pub(crate) fn map_huge(bytes: usize) -> Option<NonNull<u8>> {
    let ptr = map_aligned(bytes, HUGE_PAGE)?;
    SystemOs.hint_huge_pages(ptr, align_up(bytes.max(1), page_size()));
    Some(ptr)
}

/// [`map`] at a multiple of `align` (a power of two, at least a page).
fn map_aligned(bytes: usize, align: usize) -> Option<NonNull<u8>> {
    let len = align_up(bytes.max(1), page_size());
    let ptr = SystemOs.reserve(len, align)?;
    // Relaxed: a statistic.
    MAPPED_BYTES.fetch_add(len, Ordering::Relaxed);
    for i in 0..MAX_REGIONS {
        // Relaxed CAS claims the entry; the Release store of the length below publishes it.
        if REGION_START[i]
            .compare_exchange(
                0,
                ptr.as_ptr() as usize,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            REGION_LEN[i].store(len, Ordering::Release);
            break;
        }
    }
    Some(ptr)
}

/// Returns a mapping made by [`map`].
///
/// # Safety
/// `ptr` and `bytes` are exactly what was passed to and returned by one call of [`map`], and
/// nothing uses the memory afterwards.
pub(crate) unsafe fn unmap(ptr: NonNull<u8>, bytes: usize) {
    let len = align_up(bytes.max(1), page_size());
    for i in 0..MAX_REGIONS {
        // Relaxed: the entry was published by this module; only its owner removes it.
        if REGION_START[i].load(Ordering::Relaxed) == ptr.as_ptr() as usize {
            REGION_LEN[i].store(0, Ordering::Release);
            REGION_START[i].store(0, Ordering::Release);
            break;
        }
    }
    // Relaxed: a statistic.
    MAPPED_BYTES.fetch_sub(len, Ordering::Relaxed);
    // SAFETY: the caller passes one whole mapping of ours that nobody uses.
    unsafe { SystemOs.release(ptr, len) };
}

/// Gives `ptr..ptr+len` (part of a mapping of ours) an attribute of its own that nothing else
/// reads: it is left out of core dumps. Used on the guard pool's guard pages, which never
/// change, so that the kernel never merges them with a neighbouring slot's data pages when
/// those are inaccessible too; each slot's data pages then stay a mapping (VMA) of their own
/// and every change of their protection covers one whole VMA, with no split and no merge
/// (a split or merge allocates and frees kernel tree nodes: it doubled the price of each
/// `mprotect`). `false` where the OS has no such attribute (nothing changes then; the pool
/// still works, its `mprotect`s split and merge).
///
/// # Safety
/// The range is page-aligned and part of a live mapping made by [`map`].
pub(crate) unsafe fn set_apart(ptr: NonNull<u8>, len: usize) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: MADV_DONTDUMP changes no contents and no access, only whether the pages
        // appear in a core dump; the caller passes a range of our own mapping.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, libc::MADV_DONTDUMP) == 0 }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (ptr, len);
        false
    }
}

/// Makes `ptr..ptr+len` (part of a mapping of ours) fault on any access whatever the
/// mapping's protection, with guard markers in the page table (`MADV_GUARD_INSTALL`, Linux
/// 6.13): the range's contents are dropped, and the mapping is neither split nor changed, so
/// a later `mprotect` over a run of guard-pool slots opens their data pages in one call while
/// the guard pages between them keep faulting. `false` where the kernel has no guard markers.
///
/// # Safety
/// The range is page-aligned, part of a live mapping made by [`map`], and holds nothing
/// anyone needs.
pub(crate) unsafe fn install_guard_markers(ptr: NonNull<u8>, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        /// From the kernel's uapi `asm-generic/mman-common.h` (not in the `libc` crate yet).
        const MADV_GUARD_INSTALL: libc::c_int = 102;
        // SAFETY: the caller passes a range of our own mapping whose contents nobody needs;
        // an older kernel refuses the advice with EINVAL and changes nothing.
        unsafe { libc::madvise(ptr.as_ptr().cast(), len, MADV_GUARD_INSTALL) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (ptr, len);
        false
    }
}

/// Bytes the tracker has mapped for itself.
pub(crate) fn mapped_bytes() -> usize {
    // Relaxed: a statistic.
    MAPPED_BYTES.load(Ordering::Relaxed)
}

/// Calls `f(start, len)` for every mapping the tracker holds.
pub(crate) fn for_each_region(f: &mut dyn FnMut(usize, usize)) {
    for i in 0..MAX_REGIONS {
        // Acquire pairs with the Release in `map`: a non-zero length comes with its start.
        let len = REGION_LEN[i].load(Ordering::Acquire);
        if len != 0 {
            f(REGION_START[i].load(Ordering::Relaxed), len);
        }
    }
}

/// A growable array of plain `Copy` values in tracker-owned memory (for data that outlives any
/// heap: stack frames, quarantine entries).
pub(crate) struct MappedArray<T: Copy> {
    ptr: NonNull<T>,
    cap: usize,
}

impl<T: Copy> MappedArray<T> {
    /// An array of `cap` zeroed elements; `None` when the OS refuses.
    ///
    /// # Safety
    /// All-zero bytes are a valid `T` (plain integers, `Option` of a non-null type, ...).
    pub(crate) unsafe fn zeroed(cap: usize) -> Option<Self> {
        let bytes = cap.checked_mul(core::mem::size_of::<T>())?;
        let ptr = map(bytes)?.cast();
        Some(MappedArray { ptr, cap })
    }

    pub(crate) fn capacity(&self) -> usize {
        self.cap
    }

    pub(crate) fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T: Copy> Drop for MappedArray<T> {
    fn drop(&mut self) {
        // SAFETY: this value owns the mapping made in `zeroed` with the same byte count.
        unsafe { unmap(self.ptr.cast(), self.cap * core::mem::size_of::<T>()) }
    }
}

// SAFETY: the array is plain memory owned by this value; access is synchronised by its owner.
unsafe impl<T: Copy + Send> Send for MappedArray<T> {}
// SAFETY: as above.
unsafe impl<T: Copy + Sync> Sync for MappedArray<T> {}

/// A growable vector of plain `Copy` values in tracker-owned mappings: for working data that
/// holds copies of the program's pointers (the leak scan's block list), which must never sit in
/// heap memory the scan reads — not even after being freed.
pub(crate) struct MappedVec<T: Copy> {
    array: Option<MappedArray<T>>,
    len: usize,
}

impl<T: Copy> MappedVec<T> {
    pub(crate) fn new() -> Self {
        MappedVec {
            array: None,
            len: 0,
        }
    }

    /// An empty vector with room for `cap` values mapped now (so that the mapping exists, and
    /// is listed, before anything is pushed).
    pub(crate) fn with_capacity(cap: usize) -> Self {
        MappedVec {
            // SAFETY: slots past `len` are never read before being written.
            array: unsafe { MappedArray::zeroed(cap.max(1)) },
            len: 0,
        }
    }

    /// Appends `value`; `false` when the OS refuses memory.
    pub(crate) fn push(&mut self, value: T) -> bool {
        let cap = self.array.as_ref().map_or(0, MappedArray::capacity);
        if self.len == cap {
            let new_cap = (cap * 2)
                .max(4096 / core::mem::size_of::<T>().max(1))
                .max(16);
            // SAFETY: slots past `len` are never read before being written, so their zeroed
            // contents need not be valid values of T.
            let Some(new) = (unsafe { MappedArray::<T>::zeroed(new_cap) }) else {
                return false;
            };
            if let Some(old) = &self.array {
                // SAFETY: both arrays hold at least `len` elements and do not overlap.
                unsafe { core::ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), self.len) };
            }
            self.array = Some(new);
        }
        let Some(array) = &self.array else {
            return false;
        };
        // SAFETY: `len < capacity` after the growth above.
        unsafe { array.as_ptr().add(self.len).write(value) };
        self.len += 1;
        true
    }

    pub(crate) fn as_slice(&self) -> &[T] {
        match &self.array {
            // SAFETY: the first `len` elements were written by `push`.
            Some(a) => unsafe { core::slice::from_raw_parts(a.as_ptr(), self.len) },
            None => &[],
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [T] {
        match &self.array {
            // SAFETY: as in `as_slice`; `&mut self` gives exclusive access.
            Some(a) => unsafe { core::slice::from_raw_parts_mut(a.as_ptr(), self.len) },
            None => &mut [],
        }
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        let a = self.array.as_ref()?;
        // SAFETY: element `len` (the old last one) was written by `push`.
        Some(unsafe { a.as_ptr().add(self.len).read() })
    }
}
