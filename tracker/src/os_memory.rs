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

/// Calls `f(first, part)` for the parts of `items` (in an anonymous mapping of ours) that
/// [`for_each_resident`] passes, `first` being the index of `part[0]`. For walks over sparse
/// tables: the leak check's walk of the block table's regions (4 MiB of words each, faulting
/// in zero pages for nothing) was a tenth of a short program's time under the instrumented
/// library.
pub(crate) fn for_each_touched<T>(items: &[T], f: &mut dyn FnMut(usize, &[T])) {
    let size = core::mem::size_of::<T>();
    let start = items.as_ptr() as usize;
    if size == 0 || start % size != 0 {
        return f(0, items);
    }
    for_each_resident(start, start + core::mem::size_of_val(items), &mut |a, b| {
        // Whole items: a run's ends are page boundaries or the slice's, multiples of `size`
        // from `start` when a page holds whole items; otherwise round outwards.
        let first = (a - start) / size;
        let end = ((b - start).div_ceil(size)).min(items.len());
        f(first, &items[first..end]);
    });
}

/// Calls `f(a, b)` for the runs of `start..end` (readable memory) whose pages are resident:
/// a page never touched reads as zero, or as its file's bytes, and holds nothing the program
/// wrote. A page of a system with swap may be out of memory and still hold data, so there,
/// and where the OS cannot tell (`mincore` missing or refused), the whole range is passed.
/// Allocates nothing.
pub(crate) fn for_each_resident(start: usize, end: usize, f: &mut dyn FnMut(usize, usize)) {
    if start >= end {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        if has_swap() {
            return f(start, end);
        }
        let page = page_size();
        // One byte per page, in chunks, on the stack.
        let mut vec = [0u8; 1024];
        let mut lo = start & !(page - 1);
        while lo < end {
            let n = (end - lo).div_ceil(page).min(vec.len());
            // SAFETY: mincore writes one byte per page of the range into `vec` (n bytes) and
            // reads no memory; a range with unmapped pages fails, which passes it whole.
            let ok =
                unsafe { libc::mincore(lo as *mut libc::c_void, n * page, vec.as_mut_ptr()) } == 0;
            let mut i = 0;
            while i < n {
                if ok && vec[i] & 1 == 0 {
                    i += 1;
                    continue;
                }
                let run = i;
                while i < n && (!ok || vec[i] & 1 != 0) {
                    i += 1;
                }
                f((lo + run * page).max(start), (lo + i * page).min(end));
            }
            lo += n * page;
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    f(start, end)
}

/// Whether the system has swap space on (a line in /proc/swaps beyond its header), read once
/// without allocating; `true` when it cannot be read.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn has_swap() -> bool {
    // 0 = not read yet, 1 = no swap, 2 = swap (or unknown).
    static SWAP: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
    // Relaxed: every thread that reads the file finds the same answer.
    match SWAP.load(core::sync::atomic::Ordering::Relaxed) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    let mut buf = [0u8; 256];
    // SAFETY: a NUL-terminated path; read fills at most `buf.len()` bytes of our buffer; the
    // descriptor is closed once read.
    let lines = unsafe {
        let fd = libc::open(c"/proc/swaps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            None
        } else {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            libc::close(fd);
            (n >= 0).then(|| buf[..n as usize].iter().filter(|&&b| b == b'\n').count())
        }
    };
    let swap = lines != Some(1);
    SWAP.store(
        if swap { 2 } else { 1 },
        core::sync::atomic::Ordering::Relaxed,
    );
    swap
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

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn only_touched_pages_are_passed_where_there_is_no_swap() {
        let page = page_size();
        let len = 64 * page;
        let base = map(len).unwrap();
        let start = base.as_ptr() as usize;
        // SAFETY: pages 3, 10 and 11 of our own fresh mapping.
        unsafe {
            base.as_ptr().add(3 * page + 5).write(1);
            base.as_ptr().add(10 * page).write(1);
            base.as_ptr().add(12 * page - 1).write(1);
        }
        let mut runs = Vec::new();
        // From the middle of page 3 to the middle of page 11: the runs are cut to the range.
        for_each_resident(
            start + 3 * page + 100,
            start + 11 * page + 7,
            &mut |a, b| runs.push((a - start, b - start)),
        );
        if has_swap() {
            assert_eq!(runs, [(3 * page + 100, 11 * page + 7)]);
        } else {
            assert_eq!(
                runs,
                [(3 * page + 100, 4 * page), (10 * page, 11 * page + 7)]
            );
        }
        // Items: the touched pages' words, with their indexes.
        // SAFETY: the mapping holds `len` zeroed bytes, u64-aligned.
        let words = unsafe { core::slice::from_raw_parts(base.as_ptr().cast::<u64>(), len / 8) };
        let mut parts = Vec::new();
        for_each_touched(words, &mut |first, part| parts.push((first, part.len())));
        let per_page = page / 8;
        if !has_swap() {
            assert_eq!(
                parts,
                [(3 * per_page, per_page), (10 * per_page, 2 * per_page)]
            );
        }
        // SAFETY: mapped above with this length; nothing refers to it any more.
        unsafe { unmap(base, len) };
    }
}
