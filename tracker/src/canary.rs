//! Red zones and poison: the byte patterns written around live blocks (canaries), into the
//! unused part of guard-pool slots, and over quarantined blocks, and the checks that find the
//! first byte someone changed.
//!
//! The red-zone pattern is random per process (so a program cannot accidentally write the
//! "right" bytes) and depends on the address (so a block copied or shifted by a few bytes does
//! not keep valid-looking red zones).
//!
//! May touch: nothing but the memory ranges its callers pass.

use allocscope_core::sync::{AtomicU64, Ordering};

use crate::thread_state::process_random;

/// The per-process secret (0 = not drawn yet). Relaxed: every thread that draws it races to
/// store a valid value; `pattern` re-reads after its CAS so all agree on the winner.
static PATTERN: AtomicU64 = AtomicU64::new(0);

/// Byte written over quarantined blocks (ASan's choice for freed memory is similar).
pub(crate) const POISON: u8 = 0xF5;

/// The process's red-zone secret.
#[inline]
pub(crate) fn pattern() -> u64 {
    // Relaxed: see PATTERN.
    let p = PATTERN.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let _ = PATTERN.compare_exchange(0, process_random(), Ordering::Relaxed, Ordering::Relaxed);
    PATTERN.load(Ordering::Relaxed)
}

/// The red-zone byte expected at `addr`.
#[inline]
fn byte_at(addr: usize, pattern: u64) -> u8 {
    let lane = (pattern >> ((addr & 7) * 8)) as u8;
    lane ^ ((addr >> 3) as u8).wrapping_mul(0x9D)
}

/// Bytes of red zone before a block of alignment `align` (the user pointer keeps its
/// alignment, so the left zone is the canary size rounded up to it).
#[inline]
pub(crate) fn left_zone(canary: usize, align: usize) -> usize {
    if canary == 0 {
        0
    } else {
        (canary + align - 1) & !(align - 1)
    }
}

/// The pattern's eight bytes at 8-aligned `addr`, as a little-endian word (byte i is
/// [`byte_at`]`(addr + i)`): red zones are filled and checked a word at a time.
#[inline]
fn word_at(addr: usize, pattern: u64) -> u64 {
    let salt = ((addr >> 3) as u8).wrapping_mul(0x9D);
    pattern ^ u64::from(salt).wrapping_mul(0x0101_0101_0101_0101)
}

/// Whether the byte at `a` holds the pattern.
///
/// # Safety
/// `a` is readable.
#[inline]
unsafe fn intact(a: usize, p: u64) -> bool {
    // SAFETY: the caller's precondition.
    unsafe { *(a as *const u8) == byte_at(a, p) }
}

/// Whether the 8-aligned word at `a` holds the pattern.
///
/// # Safety
/// `a..a+8` is readable and `a` is 8-aligned.
#[inline]
unsafe fn word_intact(a: usize, p: u64) -> bool {
    // SAFETY: the caller's precondition.
    u64::from_le(unsafe { *(a as *const u64) }) == word_at(a, p)
}

/// Writes the red-zone pattern over `start..start+len`.
///
/// # Safety
/// The range is writable memory owned by the caller.
pub(crate) unsafe fn fill(start: usize, len: usize) {
    let p = pattern();
    let end = start + len;
    let mut a = start;
    while a < end && a % 8 != 0 {
        // SAFETY: inside the caller's writable range.
        unsafe { *(a as *mut u8) = byte_at(a, p) };
        a += 1;
    }
    while a + 8 <= end {
        // SAFETY: an 8-aligned word inside the caller's writable range.
        unsafe { *(a as *mut u64) = word_at(a, p).to_le() };
        a += 8;
    }
    while a < end {
        // SAFETY: inside the caller's writable range.
        unsafe { *(a as *mut u8) = byte_at(a, p) };
        a += 1;
    }
}

/// The address of the first byte of `start..start+len` that does not hold the red-zone
/// pattern, if any.
///
/// # Safety
/// The range is readable memory owned by the caller.
pub(crate) unsafe fn first_damaged(start: usize, len: usize) -> Option<usize> {
    let p = pattern();
    let end = start + len;
    let mut a = start;
    // SAFETY: for every call below, the addresses lie inside the caller's readable range, and
    // words are read only at 8-aligned addresses with 8 bytes left.
    unsafe {
        while a < end && a % 8 != 0 {
            if !intact(a, p) {
                return Some(a);
            }
            a += 1;
        }
        while a + 8 <= end {
            if !word_intact(a, p) {
                return (a..a + 8).find(|&b| !intact(b, p));
            }
            a += 8;
        }
        (a..end).find(|&b| !intact(b, p))
    }
}

/// The address of the last damaged byte (for an underflow, the byte nearest the block).
///
/// # Safety
/// As for [`first_damaged`].
pub(crate) unsafe fn last_damaged(start: usize, len: usize) -> Option<usize> {
    let p = pattern();
    let mut e = start + len;
    // SAFETY: for every call below, as in `first_damaged`.
    unsafe {
        while e > start && e % 8 != 0 {
            e -= 1;
            if !intact(e, p) {
                return Some(e);
            }
        }
        while e >= start + 8 {
            let a = e - 8;
            if !word_intact(a, p) {
                return (a..e).rev().find(|&b| !intact(b, p));
            }
            e = a;
        }
        (start..e).rev().find(|&b| !intact(b, p))
    }
}

/// Fills `start..start+len` with [`POISON`].
///
/// # Safety
/// The range is writable memory owned by the caller.
pub(crate) unsafe fn poison(start: usize, len: usize) {
    // SAFETY: the caller's writable range.
    unsafe { core::ptr::write_bytes(start as *mut u8, POISON, len) };
}

/// The first byte of `start..start+len` that is not [`POISON`] any more.
///
/// # Safety
/// The range is readable memory owned by the caller.
pub(crate) unsafe fn first_unpoisoned(start: usize, len: usize) -> Option<usize> {
    const WORD: u64 = u64::from_ne_bytes([POISON; 8]);
    let mut a = start;
    let end = start + len;
    // Word at a time over the aligned middle; bytes at the edges and inside a bad word.
    while a < end && a % 8 != 0 {
        // SAFETY: inside the caller's readable range.
        if unsafe { *(a as *const u8) } != POISON {
            return Some(a);
        }
        a += 1;
    }
    while a + 8 <= end {
        // SAFETY: 8 aligned bytes inside the caller's readable range.
        if unsafe { *(a as *const u64) } != WORD {
            break;
        }
        a += 8;
    }
    while a < end {
        // SAFETY: inside the caller's readable range.
        if unsafe { *(a as *const u8) } != POISON {
            return Some(a);
        }
        a += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damage_is_found_at_the_right_byte() {
        let mut buf = [0u8; 64];
        let start = buf.as_mut_ptr() as usize;
        // SAFETY: `buf` is ours for the whole test.
        unsafe {
            fill(start, 64);
            assert_eq!(first_damaged(start, 64), None);
            buf[17] ^= 1;
            assert_eq!(first_damaged(start, 64), Some(start + 17));
            buf[40] ^= 1;
            std::hint::black_box(&buf);
            assert_eq!(last_damaged(start, 64), Some(start + 40));
        }
        // A shifted copy of a valid red zone is not valid.
        let mut other = [0u8; 65];
        let o = other.as_mut_ptr() as usize;
        // SAFETY: `other` is ours.
        unsafe {
            fill(o, 64);
            core::ptr::copy(o as *const u8, (o + 1) as *mut u8, 64);
            assert!(first_damaged(o + 1, 64).is_some());
        }
    }

    #[test]
    fn word_wise_fill_and_checks_agree_with_the_byte_pattern_at_every_offset() {
        let mut buf = [0u64; 8];
        let base = buf.as_mut_ptr() as usize;
        let p = pattern();
        for offset in 0..8 {
            for len in 0..40 {
                let start = base + offset;
                // SAFETY: `start..start+len` lies inside `buf` (64 bytes), which is ours.
                unsafe {
                    fill(start, len);
                    for a in start..start + len {
                        assert_eq!(
                            *(a as *const u8),
                            byte_at(a, p),
                            "offset {offset} len {len}"
                        );
                    }
                    assert_eq!(first_damaged(start, len), None);
                    assert_eq!(last_damaged(start, len), None);
                    for bad in start..start + len {
                        *(bad as *mut u8) ^= 0x10;
                        assert_eq!(first_damaged(start, len), Some(bad));
                        assert_eq!(last_damaged(start, len), Some(bad));
                        *(bad as *mut u8) ^= 0x10;
                    }
                }
            }
        }
        std::hint::black_box(&buf);
    }

    #[test]
    fn poison_check_finds_the_first_write() {
        let mut buf = vec![0u8; 1000];
        let start = buf.as_mut_ptr() as usize + 3;
        // SAFETY: `buf` is ours; the range is inside it.
        unsafe {
            poison(start, 990);
            assert_eq!(first_unpoisoned(start, 990), None);
        }
        buf[3 + 500] = 0;
        buf[3 + 700] = 0;
        // SAFETY: as above.
        assert_eq!(unsafe { first_unpoisoned(start, 990) }, Some(start + 500));
    }

    #[test]
    fn left_zone_keeps_alignment() {
        assert_eq!(left_zone(0, 64), 0);
        assert_eq!(left_zone(16, 8), 16);
        assert_eq!(left_zone(16, 64), 64);
        assert_eq!(left_zone(20, 16), 32);
    }
}
