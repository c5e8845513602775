//! The limits of large blocks, compared with glibc's: alignments above half a segment (glibc
//! serves `memalign(1 GiB)`), sizes near `isize::MAX` (32-bit glibc serves nearly 2 GiB), and
//! the error each refusal records (`ENOMEM` for what memory cannot hold, `EINVAL` for an
//! alignment that is not a power of two). The tests take a lock: one of them watches RSS.
#![cfg(not(loom))]

use std::sync::Mutex;

use allocscope_core::error::{clear_last_error, last_error, AllocErrorKind};
use allocscope_core::heap;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident set size in bytes (Linux), from `/proc/self/statm`.
#[cfg(target_os = "linux")]
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    pages * page
}

/// The errno the last failure left on this thread.
#[cfg(target_os = "linux")]
fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Writes the first and last byte of a live block of `size` bytes and reads them back.
fn touch_ends(p: *mut u8, size: usize) {
    // SAFETY: the caller passes a live block of at least `size` (> 0) bytes.
    unsafe {
        p.add(size - 1).write_volatile(0xA5);
        p.write_volatile(0x5A);
        assert_eq!(p.read_volatile(), 0x5A);
        if size > 1 {
            assert_eq!(p.add(size - 1).read_volatile(), 0xA5);
        }
    }
}

/// Alignments of 4 MiB, 64 MiB and 1 GiB (the last where the address space allows: 32-bit
/// may refuse it, with ENOMEM) are served, for small and large sizes; the slack the alignment
/// needs is unmapped or never touched, so RSS does not grow by the alignment.
// Unix only: the Windows layer has no aligned reservation yet (`Os::reserve_backed_at`'s
// default), so alignments above half a segment are refused there (ENOMEM).
#[cfg(unix)]
#[test]
fn alignments_above_half_a_segment_are_served_without_resident_slack() {
    let _serial = serial();
    #[cfg(target_os = "linux")]
    let before = rss();
    let mut blocks = Vec::new();
    for shift in [22u32, 26, 30] {
        let align = 1usize << shift;
        for size in [1usize, 64, 5 << 20] {
            clear_last_error();
            let p = heap::alloc(size, align);
            if p.is_null() && usize::BITS == 32 && shift == 30 {
                assert_eq!(last_error(), Some(AllocErrorKind::OutOfMemory));
                continue;
            }
            assert!(
                !p.is_null(),
                "size {size} align {align}: {:?}",
                last_error()
            );
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            // SAFETY: live block.
            assert!(unsafe { heap::usable_size(p) } >= size);
            touch_ends(p, size);
            blocks.push(p);
        }
    }
    #[cfg(target_os = "linux")]
    {
        // Each block touched its header page and its first and last pages: a few KiB each.
        let grown = rss().saturating_sub(before);
        assert!(grown < 16 << 20, "RSS grew by {} KiB", grown >> 10);
    }
    for p in blocks {
        // SAFETY: live, freed once.
        unsafe { heap::free(p) };
    }
    allocscope_core::collect();
}

/// A block aligned above a segment is zeroed, resized (keeping its alignment, as Rust's
/// `realloc` promises) and freed like any other, from this thread and from another.
// Unix only: the Windows layer has no aligned reservation yet (`Os::reserve_backed_at`'s
// default), so alignments above half a segment are refused there (ENOMEM).
#[cfg(unix)]
#[test]
fn blocks_aligned_above_a_segment_zero_resize_and_free() {
    let _serial = serial();
    let align = 16usize << 20;
    let p = heap::alloc_zeroed(1 << 20, align);
    assert!(!p.is_null());
    assert_eq!(p as usize % align, 0);
    // SAFETY: live block of 1 MiB.
    assert!(unsafe { core::slice::from_raw_parts(p, 1 << 20) }
        .iter()
        .all(|&b| b == 0));
    touch_ends(p, 1 << 20);
    // Grow well past the block (the mremap path must keep the 16 MiB alignment), then shrink.
    // SAFETY: live block allocated with `align`.
    let q = unsafe { heap::realloc(p, 9 << 20, align) };
    assert!(!q.is_null());
    assert_eq!(q as usize % align, 0);
    // SAFETY: live block of at least 9 MiB.
    unsafe {
        assert_eq!(q.read_volatile(), 0x5A);
        assert_eq!(q.add((1 << 20) - 1).read_volatile(), 0xA5);
    }
    touch_ends(q, 9 << 20);
    // SAFETY: live block allocated with `align`.
    let r = unsafe { heap::realloc(q, 100, align) };
    assert!(!r.is_null());
    assert_eq!(r as usize % align, 0);
    // SAFETY: live block of at least 100 bytes.
    assert_eq!(unsafe { r.read_volatile() }, 0x5A);
    // Freed by another thread: its span goes to that thread's cache (and is released there).
    let addr = r as usize;
    std::thread::spawn(move || {
        // SAFETY: live, freed once, handed over by the join below.
        unsafe { heap::free(addr as *mut u8) };
        allocscope_core::collect();
    })
    .join()
    .unwrap();
    // A span cached from such a block serves an ordinary large block.
    let s = heap::alloc(12 << 20, align);
    assert!(!s.is_null() && s as usize % align == 0);
    // SAFETY: live, freed once.
    unsafe { heap::free(s) };
    let t = heap::alloc(3 << 20, 64);
    assert!(!t.is_null() && t as usize % 64 == 0);
    touch_ends(t, 3 << 20);
    // SAFETY: live, freed once.
    unsafe { heap::free(t) };
    allocscope_core::collect();
}

/// What no mapping can hold fails with ENOMEM, never a wrapped size: alignments up to the
/// largest power of two, sizes up to `usize::MAX`, and both together; an alignment that is
/// not a power of two is EINVAL.
#[test]
fn impossible_sizes_and_alignments_fail_with_the_right_error() {
    let _serial = serial();
    let top = 1usize << (usize::BITS - 1);
    let mut cases = vec![
        (64, top),
        (isize::MAX as usize, 16),
        (isize::MAX as usize - (8 << 20), 8 << 20),
        (usize::MAX, 16),
        (usize::MAX - (64 << 20), 64 << 20),
        (top >> 1, top >> 1),
    ];
    if usize::BITS == 64 {
        // Beyond any address space on 64-bit (32-bit may serve these).
        cases.extend([(64, top >> 1), (isize::MAX as usize - (8 << 20), 16)]);
    }
    for (size, align) in cases {
        clear_last_error();
        let p = heap::alloc(size, align);
        assert!(p.is_null(), "size {size:#x} align {align:#x}");
        assert_eq!(
            last_error(),
            Some(AllocErrorKind::OutOfMemory),
            "{size:#x} {align:#x}"
        );
        #[cfg(target_os = "linux")]
        assert_eq!(errno(), libc::ENOMEM, "size {size:#x} align {align:#x}");
    }
    clear_last_error();
    assert!(heap::alloc(64, (4 << 20) + 4096).is_null());
    assert_eq!(last_error(), Some(AllocErrorKind::InvalidRequest));
    #[cfg(target_os = "linux")]
    assert_eq!(errno(), libc::EINVAL);
    // Growing a block beyond what can be mapped fails and keeps it.
    let p = heap::alloc(1 << 20, 16);
    touch_ends(p, 1 << 20);
    for new_size in [isize::MAX as usize, isize::MAX as usize - 4096, usize::MAX] {
        // SAFETY: live block allocated with alignment 16.
        assert!(unsafe { heap::realloc(p, new_size, 16) }.is_null());
        // SAFETY: still live.
        assert_eq!(unsafe { p.read_volatile() }, 0x5A);
    }
    // SAFETY: live, freed once.
    unsafe { heap::free(p) };
}

/// 32-bit: a block over 1 GiB (the old limit was `isize::MAX / 2`) is served when the address
/// space has room, as glibc serves up to `PTRDIFF_MAX`; only pages touched become resident.
#[cfg(target_pointer_width = "32")]
#[test]
fn blocks_over_one_gib_are_served_on_32_bit() {
    let _serial = serial();
    for size in [(1usize << 30) + 1, 1536 << 20] {
        clear_last_error();
        let p = heap::alloc(size, 16);
        assert!(!p.is_null(), "size {size:#x}: {:?}", last_error());
        touch_ends(p, size);
        // SAFETY: live block.
        assert!(unsafe { heap::usable_size(p) } >= size);
        // SAFETY: live, freed once.
        unsafe { heap::free(p) };
    }
    // Grown past 1 GiB by realloc (mremap, or a copy when the move fails).
    let p = heap::alloc(600 << 20, 16);
    assert!(!p.is_null());
    touch_ends(p, 600 << 20);
    // SAFETY: live block allocated with alignment 16.
    let q = unsafe { heap::realloc(p, 1200 << 20, 16) };
    assert!(!q.is_null(), "{:?}", last_error());
    // SAFETY: live block of at least 1200 MiB.
    assert_eq!(unsafe { q.read_volatile() }, 0x5A);
    touch_ends(q, 1200 << 20);
    // SAFETY: live, freed once.
    unsafe { heap::free(q) };
}
