//! The platform layer: the only place that talks to the operating system about memory.
//!
//! One small interface, [`Os`]: reserve address space, commit it, decommit it (give the physical
//! memory back but keep the addresses), release it, protect it (guard pages), and two hints (huge
//! pages, NUMA node). Three implementations:
//!
//! * [`SystemOs`] — `mmap`/`madvise`/`munmap`/`mprotect` on Unix, `VirtualAlloc`/`VirtualFree`/
//!   `VirtualProtect` on Windows;
//! * [`FixedBufferOs`] — carves a caller-provided buffer, so tests and firmware run without an OS;
//! * anything a user writes (the trait is public).
//!
//! Contract shared by every implementation: memory returned by [`Os::reserve`] and memory that
//! was [`Os::decommit`]ted and then [`Os::commit`]ted again reads as zero. The heap relies on this
//! to skip the `memset` of `calloc` on fresh memory.
//!
//! May touch: `libc` / `windows-sys`. Nothing here allocates.

use core::ptr::NonNull;

// Process-wide caches and the fixed buffer's bump pointer are never part of a loom model
// (loom's atomics cannot live in statics or const fns), so plain atomics are used here.
use core::sync::atomic::{AtomicUsize, Ordering};

/// Memory access for [`Os::protect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No access: any load or store faults (a guard page).
    None,
    /// Loads and stores allowed.
    ReadWrite,
}

/// The platform interface. All sizes and addresses passed to the `unsafe` methods must be
/// multiples of [`Os::page_size`] and lie inside one region returned by [`Os::reserve`].
pub trait Os: Sync {
    /// The granularity of commit, decommit and protect (the OS page, usually 4 KiB).
    fn page_size(&self) -> usize;

    /// Reserves `size` bytes of address space aligned to `align` (a power of two). The memory
    /// reads as zero. Returns `None` when the address space or the buffer is exhausted.
    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>>;

    /// As [`Os::reserve`], for memory handed to the program whole at once (a large block):
    /// the OS applies its own limit on committed memory as it does to the system allocator's
    /// mappings, so an allocation larger than the machine could ever back fails now, with the
    /// system's policy, instead of succeeding and failing at first touch. The same as
    /// `reserve` where the OS draws no such line.
    fn reserve_backed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.reserve(size, align)
    }

    /// As [`Os::reserve_backed`], but aligned at `offset` bytes into the region instead of at
    /// its start: `start + offset` is a multiple of `align` (a power of two; `offset` at most
    /// `size`). A large block aligned to more than half a segment keeps its header one segment
    /// before it. `None` where the OS cannot place a region so: the default, unless `offset`
    /// is itself a multiple of `align`.
    fn reserve_backed_at(&self, size: usize, align: usize, offset: usize) -> Option<NonNull<u8>> {
        if align.is_power_of_two() && offset & (align - 1) == 0 {
            self.reserve_backed(size, align)
        } else {
            None
        }
    }

    /// Makes reserved memory usable. Returns `false` when the OS refuses (out of memory).
    ///
    /// # Safety
    /// `ptr..ptr+size` lies inside one region returned by [`Os::reserve`] and not released.
    unsafe fn commit(&self, ptr: NonNull<u8>, size: usize) -> bool;

    /// Gives the physical memory back; the addresses stay reserved and read as zero once
    /// committed again.
    ///
    /// # Safety
    /// As for [`Os::commit`]; nothing may use the memory until it is committed again.
    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize);

    /// Returns the whole region to the OS.
    ///
    /// # Safety
    /// `ptr` and `size` are exactly one region returned by [`Os::reserve`]; nothing uses it after.
    unsafe fn release(&self, ptr: NonNull<u8>, size: usize);

    /// Changes the access of committed pages (guard pages). Returns `false` where unsupported.
    ///
    /// # Safety
    /// As for [`Os::commit`]; with [`Access::None`] nothing may touch the memory afterwards.
    unsafe fn protect(&self, ptr: NonNull<u8>, size: usize, access: Access) -> bool {
        let _ = (ptr, size, access);
        false
    }

    /// Asks for transparent huge pages on a large region (a hint; may do nothing).
    fn hint_huge_pages(&self, ptr: NonNull<u8>, size: usize) {
        let _ = (ptr, size);
    }

    /// Prefers physical memory of NUMA node `node` for the region (a hint; may do nothing).
    fn bind_to_node(&self, ptr: NonNull<u8>, size: usize, node: usize) {
        let _ = (ptr, size, node);
    }
}

/// The machine's NUMA layout, behind a trait so the node choice can be tested with an injected
/// topology on single-node machines.
pub trait NumaTopology {
    /// Number of NUMA nodes (1 on most desktops and on this project's CI machines).
    fn node_count(&self) -> usize;
    /// The node of the CPU the calling thread runs on now.
    fn current_node(&self) -> usize;
}

/// The node a new arena should be bound to, or `None` when binding is pointless (one node).
pub fn arena_node(topology: &dyn NumaTopology) -> Option<usize> {
    let count = topology.node_count();
    if count <= 1 {
        return None;
    }
    Some(topology.current_node() % count)
}

/// Rounds `value` up to a multiple of `align` (a power of two). Saturates instead of wrapping.
#[inline]
pub const fn align_up(value: usize, align: usize) -> usize {
    match value.checked_add(align - 1) {
        Some(v) => v & !(align - 1),
        None => usize::MAX & !(align - 1),
    }
}

/// A monotonic clock in milliseconds (coarse: it only times purge delays). Never allocates.
#[cfg(unix)]
pub fn monotonic_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = libc::CLOCK_MONOTONIC_COARSE;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = libc::CLOCK_MONOTONIC;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// A monotonic clock in milliseconds (coarse: it only times purge delays). Never allocates.
#[cfg(windows)]
pub fn monotonic_ms() -> u64 {
    // SAFETY: GetTickCount64 has no preconditions.
    unsafe { windows_sys::Win32::System::SystemInformation::GetTickCount64() }
}

// ---------------------------------------------------------------------------------------------
// Unix
// ---------------------------------------------------------------------------------------------

/// The real operating system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemOs;

#[cfg(unix)]
mod unix {
    use super::*;

    /// Cached OS page size (0 = not read yet). Relaxed: any thread computes the same value.
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);

    pub(super) fn page_size() -> usize {
        let cached = PAGE_SIZE.load(Ordering::Relaxed);
        if cached != 0 {
            return cached;
        }
        // SAFETY: sysconf has no preconditions.
        let raw = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let size = if raw > 0 { raw as usize } else { 4096 };
        PAGE_SIZE.store(size, Ordering::Relaxed);
        size
    }

    /// `noreserve`: MAP_NORESERVE, for arenas and tables, whose commitment we account for
    /// ourselves (Linux backs pages on first touch); without it (large blocks) the kernel's
    /// overcommit policy judges the mapping, as it does glibc's: a 64 TiB malloc fails.
    fn mmap_with(size: usize, noreserve: bool) -> Option<NonNull<u8>> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let extra = if noreserve { libc::MAP_NORESERVE } else { 0 };
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let extra = {
            let _ = noreserve;
            0
        };
        // SAFETY: an anonymous private mapping at an address the kernel chooses touches no
        // existing memory.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast())
        }
    }

    fn munmap(ptr: usize, size: usize) {
        if size != 0 {
            // SAFETY: callers pass parts of mappings this module created and nobody uses.
            unsafe { libc::munmap(ptr as *mut libc::c_void, size) };
        }
    }

    /// [`Os::reserve`] (`noreserve`) or [`Os::reserve_backed`]: `size` bytes whose byte at
    /// `offset` (at most `size`) is aligned to `align` (a power of two).
    fn reserve_with(
        size: usize,
        align: usize,
        offset: usize,
        noreserve: bool,
    ) -> Option<NonNull<u8>> {
        let page = page_size();
        let size = align_up(size, page);
        if size == 0 || size > isize::MAX as usize || offset > size {
            return None;
        }
        if align <= page && (offset == 0 || align.is_power_of_two() && offset % align == 0) {
            return mmap_with(size, noreserve);
        }
        if !align.is_power_of_two() {
            return None;
        }
        let aligned_at = |p: usize| (p + offset) & (align - 1) == 0;
        // Over-reserve and trim: first try the exact size, which the kernel often places
        // aligned when the previous mapping was; fall back to size + align.
        let p = mmap_with(size, noreserve)?;
        // `p + offset` cannot overflow: it is inside (or just past) the mapping.
        if aligned_at(p.as_ptr() as usize) {
            return Some(p);
        }
        munmap(p.as_ptr() as usize, size);
        let total = size.checked_add(align)?;
        let p = mmap_with(total, noreserve)?.as_ptr() as usize;
        // The first `start >= p` with `start + offset` aligned: below `p + align`, so the
        // region `start..start + size` ends inside the mapping (`p + total` does not overflow:
        // the mapping exists).
        let start = align_up(p + offset, align) - offset;
        munmap(p, start - p);
        munmap(start + size, p + total - (start + size));
        NonNull::new(start as *mut u8)
    }

    impl Os for SystemOs {
        fn page_size(&self) -> usize {
            page_size()
        }

        fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
            reserve_with(size, align, 0, true)
        }

        fn reserve_backed(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
            reserve_with(size, align, 0, false)
        }

        fn reserve_backed_at(
            &self,
            size: usize,
            align: usize,
            offset: usize,
        ) -> Option<NonNull<u8>> {
            reserve_with(size, align, offset, false)
        }

        unsafe fn commit(&self, _ptr: NonNull<u8>, _size: usize) -> bool {
            // Reserved memory is already readable and writable (overcommit); the kernel backs
            // it on first touch. Decommitted memory likewise comes back zeroed on touch.
            true
        }

        unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) {
            // MADV_DONTNEED, not MADV_FREE: RSS must fall now (users watch it after a peak),
            // and the memory must read as zero afterwards (the calloc contract above).
            // SAFETY: the caller guarantees the range is part of a live mapping nobody uses.
            unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_DONTNEED) };
        }

        unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
            munmap(ptr.as_ptr() as usize, align_up(size, page_size()));
        }

        unsafe fn protect(&self, ptr: NonNull<u8>, size: usize, access: Access) -> bool {
            let prot = match access {
                Access::None => libc::PROT_NONE,
                Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            };
            // SAFETY: the caller guarantees the range is part of a live mapping of ours.
            unsafe { libc::mprotect(ptr.as_ptr().cast(), size, prot) == 0 }
        }

        fn hint_huge_pages(&self, ptr: NonNull<u8>, size: usize) {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            // SAFETY: madvise with a hint flag never changes the contents of the mapping; a
            // range outside any mapping only makes the call fail.
            unsafe {
                libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_HUGEPAGE);
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            let _ = (ptr, size);
        }

        fn bind_to_node(&self, ptr: NonNull<u8>, size: usize, node: usize) {
            #[cfg(target_os = "linux")]
            {
                const MPOL_PREFERRED: libc::c_long = 1;
                let bits = usize::BITS as usize;
                if node >= bits * 4 {
                    return;
                }
                let mut mask = [0usize; 4];
                mask[node / bits] = 1 << (node % bits);
                // SAFETY: mbind only reads `mask` (maxnode bits) and changes the placement
                // policy of our own mapping; a failure leaves the default policy.
                unsafe {
                    libc::syscall(
                        libc::SYS_mbind,
                        ptr.as_ptr(),
                        size,
                        MPOL_PREFERRED,
                        mask.as_ptr(),
                        (bits * 4) as libc::c_ulong,
                        0 as libc::c_uint,
                    );
                }
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (ptr, size, node);
        }
    }

    /// The NUMA layout read from Linux: `/sys/devices/system/node/online` and `getcpu`.
    /// Reads with raw `open`/`read` into a stack buffer: no allocation.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct SystemTopology;

    /// Cached node count (0 = not read yet). Relaxed: every thread computes the same value.
    static NODE_COUNT: AtomicUsize = AtomicUsize::new(0);

    impl NumaTopology for SystemTopology {
        fn node_count(&self) -> usize {
            let cached = NODE_COUNT.load(Ordering::Relaxed);
            if cached != 0 {
                return cached;
            }
            let count = read_online_nodes().unwrap_or(1).max(1);
            NODE_COUNT.store(count, Ordering::Relaxed);
            count
        }

        fn current_node(&self) -> usize {
            #[cfg(target_os = "linux")]
            {
                let mut cpu: libc::c_uint = 0;
                let mut node: libc::c_uint = 0;
                // SAFETY: getcpu writes two unsigned ints through valid pointers.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_getcpu,
                        &mut cpu as *mut libc::c_uint,
                        &mut node as *mut libc::c_uint,
                        core::ptr::null_mut::<libc::c_void>(),
                    )
                };
                if r == 0 {
                    return node as usize;
                }
            }
            0
        }
    }

    /// Parses a Linux CPU/node list such as `0`, `0-3` or `0,2-3` into the number of the
    /// highest node plus one.
    pub(crate) fn parse_node_list(text: &[u8]) -> Option<usize> {
        let mut highest: Option<usize> = None;
        let mut current: Option<usize> = None;
        for &b in text {
            match b {
                b'0'..=b'9' => current = Some(current.unwrap_or(0) * 10 + (b - b'0') as usize),
                b',' | b'-' | b'\n' | b' ' => {
                    if let Some(n) = current.take() {
                        highest = Some(highest.map_or(n, |h: usize| h.max(n)));
                    }
                }
                _ => return None,
            }
        }
        if let Some(n) = current {
            highest = Some(highest.map_or(n, |h: usize| h.max(n)));
        }
        highest.map(|h| h + 1)
    }

    fn read_online_nodes() -> Option<usize> {
        let path = b"/sys/devices/system/node/online\0";
        // SAFETY: `path` is NUL-terminated.
        let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let mut buf = [0u8; 128];
        // SAFETY: reads at most buf.len() bytes into our stack buffer; fd is ours.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        // SAFETY: fd is open and ours.
        unsafe { libc::close(fd) };
        if n <= 0 {
            return None;
        }
        parse_node_list(&buf[..n as usize])
    }
}

#[cfg(unix)]
pub use unix::SystemTopology;

#[cfg(all(unix, test))]
pub(crate) use unix::parse_node_list;

// ---------------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------------

#[cfg(windows)]
mod windows {
    use super::*;
    use windows_sys::Win32::System::Memory::{
        VirtualAlloc, VirtualFree, VirtualProtect, MEM_COMMIT, MEM_DECOMMIT, MEM_RELEASE,
        MEM_RESERVE, PAGE_NOACCESS, PAGE_READWRITE,
    };
    use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

    /// Cached allocation granularity and page size. Relaxed: every thread computes the same.
    static PAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
    static GRANULARITY: AtomicUsize = AtomicUsize::new(0);

    fn info() -> (usize, usize) {
        let page = PAGE_SIZE.load(Ordering::Relaxed);
        if page != 0 {
            return (page, GRANULARITY.load(Ordering::Relaxed));
        }
        // SAFETY: SYSTEM_INFO is plain data; GetSystemInfo fills it.
        let mut si: SYSTEM_INFO = unsafe { core::mem::zeroed() };
        // SAFETY: `si` is a valid out-pointer.
        unsafe { GetSystemInfo(&mut si) };
        let page = si.dwPageSize as usize;
        let gran = si.dwAllocationGranularity as usize;
        GRANULARITY.store(gran, Ordering::Relaxed);
        PAGE_SIZE.store(page, Ordering::Relaxed);
        (page, gran)
    }

    impl Os for SystemOs {
        fn page_size(&self) -> usize {
            info().0
        }

        fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
            let (page, gran) = info();
            let size = align_up(size, page);
            // Reserve, check alignment; otherwise reserve size+align to find an aligned
            // address, free it and reserve exactly there (another thread may race us: retry).
            for _ in 0..16 {
                // SAFETY: reserving fresh address space touches no existing memory.
                let p = unsafe {
                    VirtualAlloc(
                        core::ptr::null(),
                        size,
                        MEM_RESERVE | MEM_COMMIT,
                        PAGE_READWRITE,
                    )
                };
                if p.is_null() {
                    return None;
                }
                if align <= gran || (p as usize) & (align - 1) == 0 {
                    return NonNull::new(p.cast());
                }
                // SAFETY: `p` is the region just reserved.
                unsafe { VirtualFree(p, 0, MEM_RELEASE) };
                // SAFETY: as above.
                let probe = unsafe {
                    VirtualAlloc(core::ptr::null(), size + align, MEM_RESERVE, PAGE_NOACCESS)
                };
                if probe.is_null() {
                    return None;
                }
                let aligned = align_up(probe as usize, align);
                // SAFETY: `probe` is the region just reserved.
                unsafe { VirtualFree(probe, 0, MEM_RELEASE) };
                // SAFETY: asks for a specific address; fails harmlessly if taken.
                let p = unsafe {
                    VirtualAlloc(
                        aligned as *const _,
                        size,
                        MEM_RESERVE | MEM_COMMIT,
                        PAGE_READWRITE,
                    )
                };
                if !p.is_null() {
                    return NonNull::new(p.cast());
                }
            }
            None
        }

        unsafe fn commit(&self, ptr: NonNull<u8>, size: usize) -> bool {
            // SAFETY: the caller guarantees the range is inside one of our reservations.
            !unsafe { VirtualAlloc(ptr.as_ptr().cast(), size, MEM_COMMIT, PAGE_READWRITE) }
                .is_null()
        }

        unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) {
            // SAFETY: the caller guarantees the range is inside one of our reservations.
            unsafe { VirtualFree(ptr.as_ptr().cast(), size, MEM_DECOMMIT) };
        }

        unsafe fn release(&self, ptr: NonNull<u8>, _size: usize) {
            // SAFETY: the caller passes the base of one reservation.
            unsafe { VirtualFree(ptr.as_ptr().cast(), 0, MEM_RELEASE) };
        }

        unsafe fn protect(&self, ptr: NonNull<u8>, size: usize, access: Access) -> bool {
            let prot = match access {
                Access::None => PAGE_NOACCESS,
                Access::ReadWrite => PAGE_READWRITE,
            };
            let mut old = 0;
            // SAFETY: the caller guarantees the range is committed memory of ours.
            unsafe { VirtualProtect(ptr.as_ptr().cast(), size, prot, &mut old) != 0 }
        }
    }

    /// NUMA layout on Windows: one node assumed until `GetNumaHighestNodeNumber` is wired.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct SystemTopology;

    impl NumaTopology for SystemTopology {
        fn node_count(&self) -> usize {
            1
        }
        fn current_node(&self) -> usize {
            0
        }
    }
}

#[cfg(windows)]
pub use windows::SystemTopology;

// ---------------------------------------------------------------------------------------------
// Fixed buffer
// ---------------------------------------------------------------------------------------------

/// An [`Os`] over one caller-provided buffer, for tests and for firmware without an OS.
///
/// Reservations are bump-allocated from the buffer (lock-free, any thread). Releasing the most
/// recent reservation gives its space back; releasing an older one keeps the space reserved
/// (a fixed buffer has no holes to manage — use the buddy allocator for that). Decommit zeroes
/// the memory, so the zero-on-fresh-memory contract holds.
#[derive(Debug)]
pub struct FixedBufferOs {
    /// Start of the buffer; every handed-out pointer is derived from it (strict provenance).
    base: *mut u8,
    len: usize,
    /// Offset of the next free byte. CAS-updated by `reserve` and `release`.
    next: AtomicUsize,
}

// SAFETY: the buffer is shared only through the atomic bump offset; disjoint reservations are
// handed to their users, who synchronise their own accesses.
unsafe impl Sync for FixedBufferOs {}
// SAFETY: as above; the pointer is just the buffer's base.
unsafe impl Send for FixedBufferOs {}

/// Granularity of [`FixedBufferOs`] (commit/decommit/protect units).
pub const FIXED_BUFFER_PAGE: usize = 4096;

impl FixedBufferOs {
    /// Uses `buffer` for every reservation. The buffer is zeroed here once.
    pub fn new(buffer: &'static mut [u8]) -> Self {
        buffer.fill(0);
        let len = buffer.len();
        // SAFETY: the buffer is ours for 'static and zeroed above.
        unsafe { Self::from_raw(buffer.as_mut_ptr(), len) }
    }

    /// Uses `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` is valid for reads and writes for as long as this value and every
    /// reservation made from it are used, reads as zero, and nothing else uses it.
    pub const unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        Self {
            base: ptr,
            len,
            next: AtomicUsize::new(0),
        }
    }

    /// Bytes not yet reserved.
    pub fn remaining(&self) -> usize {
        // Relaxed: a statistic; the value may be stale by the time it is read.
        self.len - self.next.load(Ordering::Relaxed)
    }

    /// The offset of `ptr` from the buffer's base.
    fn offset_of(&self, ptr: NonNull<u8>) -> usize {
        (ptr.as_ptr() as usize).wrapping_sub(self.base as usize)
    }
}

impl Os for FixedBufferOs {
    fn page_size(&self) -> usize {
        FIXED_BUFFER_PAGE
    }

    fn reserve(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let align = align.max(FIXED_BUFFER_PAGE);
        let size = align_up(size, FIXED_BUFFER_PAGE);
        let base = self.base as usize;
        // Relaxed load: the CAS below validates the value.
        let mut cur = self.next.load(Ordering::Relaxed);
        loop {
            let start = align_up(base.checked_add(cur)?, align) - base;
            let end = start.checked_add(size)?;
            if end > self.len || size == 0 {
                return None;
            }
            // AcqRel on success: the memory we hand out was possibly released by another
            // thread (its writes - the zeroing in `release` - must be visible to us).
            match self
                .next
                .compare_exchange_weak(cur, end, Ordering::AcqRel, Ordering::Relaxed)
            {
                // SAFETY: start + size <= len: the pointer stays inside the buffer.
                Ok(_) => return NonNull::new(unsafe { self.base.add(start) }),
                Err(seen) => cur = seen,
            }
        }
    }

    unsafe fn commit(&self, _ptr: NonNull<u8>, _size: usize) -> bool {
        true
    }

    unsafe fn decommit(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: the caller guarantees the range is ours and unused.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, size) };
    }

    unsafe fn release(&self, ptr: NonNull<u8>, size: usize) {
        let start = self.offset_of(ptr);
        let size = align_up(size, FIXED_BUFFER_PAGE);
        // SAFETY: the caller guarantees the range is ours and nobody uses it again; zeroing
        // keeps the reserve-reads-as-zero contract when it is handed out again.
        unsafe { core::ptr::write_bytes(ptr.as_ptr(), 0, size) };
        // Give the space back only if it is the most recent reservation. Release: the zeroing
        // above happens-before the next reserve that acquires this value.
        let _ =
            self.next
                .compare_exchange(start + size, start, Ordering::Release, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeTopology {
        nodes: usize,
        current: usize,
    }

    impl NumaTopology for FakeTopology {
        fn node_count(&self) -> usize {
            self.nodes
        }
        fn current_node(&self) -> usize {
            self.current
        }
    }

    #[test]
    fn single_node_machine_binds_nothing() {
        assert_eq!(
            arena_node(&FakeTopology {
                nodes: 1,
                current: 0
            }),
            None
        );
    }

    #[test]
    fn multi_node_machine_binds_to_current_node() {
        assert_eq!(
            arena_node(&FakeTopology {
                nodes: 4,
                current: 2
            }),
            Some(2)
        );
        assert_eq!(
            arena_node(&FakeTopology {
                nodes: 2,
                current: 1
            }),
            Some(1)
        );
        // A node number past the count (hot-plug, bad data) wraps instead of binding nowhere.
        assert_eq!(
            arena_node(&FakeTopology {
                nodes: 2,
                current: 5
            }),
            Some(1)
        );
    }

    #[cfg(unix)]
    #[test]
    fn node_list_parsing() {
        assert_eq!(parse_node_list(b"0\n"), Some(1));
        assert_eq!(parse_node_list(b"0-3\n"), Some(4));
        assert_eq!(parse_node_list(b"0,2-5\n"), Some(6));
        assert_eq!(parse_node_list(b"garbage"), None);
        assert_eq!(parse_node_list(b""), None);
    }

    #[cfg(all(unix, not(miri)))] // getcpu is not a syscall miri knows
    #[test]
    fn this_machine_has_a_sane_topology() {
        let t = SystemTopology;
        assert!(t.node_count() >= 1);
        assert!(t.current_node() < 1024);
    }

    #[test]
    fn align_up_rounds_and_saturates() {
        assert_eq!(align_up(0, 16), 0);
        assert_eq!(align_up(1, 16), 16);
        assert_eq!(align_up(16, 16), 16);
        assert_eq!(align_up(usize::MAX - 3, 16), usize::MAX & !15);
    }

    /// A large block larger than the machine could back fails at once, as glibc's malloc does,
    /// wherever the kernel judges mappings (overcommit modes 0 and 2): the heap's large blocks
    /// are not reserved with MAP_NORESERVE (a 64 TiB malloc succeeded before, and would have
    /// failed only at first touch).
    #[cfg(all(target_os = "linux", target_pointer_width = "64", not(miri), not(loom)))]
    #[test]
    fn a_large_block_beyond_what_the_machine_can_back_is_refused() {
        let mode = std::fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap_or_default();
        if mode.trim() == "1" {
            return; // "always overcommit": the kernel grants every mapping.
        }
        let huge = 1usize << 46;
        assert!(SystemOs.reserve_backed(huge, 4 << 20).is_none());
        assert!(crate::heap::alloc(huge, 8).is_null());
        assert!(crate::heap::alloc(huge, 4096).is_null());
        // A large block the machine can back is still served.
        let p = crate::heap::alloc(8 << 20, 8);
        assert!(!p.is_null());
        // SAFETY: just allocated with this size and alignment.
        unsafe { crate::heap::free(p) };
    }

    #[cfg(not(miri))]
    #[test]
    fn system_os_reserve_is_aligned_zeroed_and_decommit_zeroes() {
        let os = SystemOs;
        let align = 4 << 20;
        let p = os.reserve(1 << 20, align).expect("reserve");
        assert_eq!(p.as_ptr() as usize % align, 0);
        // SAFETY: the region is ours, 1 MiB long, readable and writable after commit.
        unsafe {
            assert!(os.commit(p, 1 << 20));
            assert_eq!(*p.as_ptr().add(12345), 0);
            *p.as_ptr().add(12345) = 7;
            os.decommit(p, 1 << 20);
            assert!(os.commit(p, 1 << 20));
            assert_eq!(*p.as_ptr().add(12345), 0);
            os.release(p, 1 << 20);
        }
    }

    /// The byte at `offset` is aligned, not the start (a large block aligned above half a
    /// segment); the fixed buffer cannot place one so and says so.
    #[cfg(all(unix, not(miri)))]
    #[test]
    fn reserve_backed_at_aligns_the_byte_at_the_offset() {
        let os = SystemOs;
        for align in [8usize << 20, 64 << 20] {
            let size = (4 << 20) + (1 << 20);
            let p = os.reserve_backed_at(size, align, 4 << 20).expect("reserve");
            let start = p.as_ptr() as usize;
            assert_eq!((start + (4 << 20)) % align, 0);
            assert_eq!(start % (4 << 20), 0);
            // SAFETY: the region is ours, `size` bytes, readable and writable.
            unsafe {
                *p.as_ptr() = 1;
                *p.as_ptr().add(size - 1) = 1;
                os.release(p, size);
            }
        }
        assert!(os.reserve_backed_at(1 << 20, 3 << 20, 0).is_none());
        assert!(os.reserve_backed_at(1 << 20, 1 << 22, 2 << 20).is_none());
        static mut BUF: [u8; 16 * 1024] = [0; 16 * 1024];
        // SAFETY: the only reference ever made to BUF.
        let fixed = FixedBufferOs::new(unsafe { &mut *core::ptr::addr_of_mut!(BUF) });
        assert!(fixed.reserve_backed_at(8192, 8192, 4096).is_none());
    }

    #[test]
    fn fixed_buffer_bumps_aligns_and_runs_out() {
        static mut BUF: [u8; 64 * 1024] = [0; 64 * 1024];
        // SAFETY: the only reference ever made to BUF.
        let os = FixedBufferOs::new(unsafe { &mut *core::ptr::addr_of_mut!(BUF) });
        let a = os.reserve(4096, 4096).expect("first");
        let b = os.reserve(100, 8192).expect("second");
        assert_eq!(b.as_ptr() as usize % 8192, 0);
        assert!(b.as_ptr() as usize >= a.as_ptr() as usize + 4096);
        assert!(os.reserve(1 << 20, 4096).is_none());
        let before = os.remaining();
        // SAFETY: `b` is the most recent reservation and unused.
        unsafe { os.release(b, 100) };
        assert!(os.remaining() > before);
    }
}
