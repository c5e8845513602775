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
    match PATTERN.load(Ordering::Relaxed) {
        0 => draw_pattern(),
        p => p,
    }
}

/// Draws the secret at the first use (kept out of line: the fill and check paths stay short).
#[cold]
#[inline(never)]
fn draw_pattern() -> u64 {
    let _ = PATTERN.compare_exchange(0, process_random(), Ordering::Relaxed, Ordering::Relaxed);
    // Relaxed: see PATTERN.
    PATTERN.load(Ordering::Relaxed)
}

/// Odd multiplier that spreads an 8-byte word's index over all eight of its bytes (the golden
/// ratio's, as in Fibonacci hashing).
const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

/// The red-zone byte expected at `addr`.
#[inline]
fn byte_at(addr: usize, pattern: u64) -> u8 {
    (word_at(addr & !7, pattern) >> ((addr & 7) * 8)) as u8
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

/// Alignments up to which the whole left zone is filled and checked.
const FILLED_ALIGN_MAX: usize = 4096;

/// Bytes of the left zone that are filled and checked, right before the block: all of it up to
/// page alignment; for larger alignments (whose zone is the alignment itself: 1 GiB for
/// `memalign(1 GiB)`) the canary size rounded up to 8, the rest never touched.
#[inline]
pub(crate) fn left_filled(canary: usize, align: usize) -> usize {
    if align <= FILLED_ALIGN_MAX {
        left_zone(canary, align)
    } else {
        (canary + 7) & !7
    }
}

/// The pattern's eight bytes at 8-aligned `addr`, as a little-endian word (byte i is
/// [`byte_at`]`(addr + i)`): the secret mixed with the word's index, one multiply, so that red
/// zones are filled and checked a word at a time.
#[inline]
fn word_at(addr: usize, pattern: u64) -> u64 {
    pattern ^ ((addr >> 3) as u64).wrapping_mul(SPREAD)
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

/// The pattern's eight bytes at any `addr`, aligned or not, as a little-endian word: the two
/// aligned words around it, funnel-shifted, so that red zones of any alignment are written and
/// checked with one unaligned access per eight bytes.
#[inline]
fn window(addr: usize, pattern: u64) -> u64 {
    let base = addr & !7;
    let pair = (u128::from(word_at(base + 8, pattern)) << 64) | u128::from(word_at(base, pattern));
    (pair >> ((addr & 7) * 8)) as u64
}

/// Calls `f(a, window(a))` for the 8-byte windows that cover `start..start+len` (`len >= 8`):
/// one every eight bytes from `start`, and when `len` is not a multiple of eight a last one
/// ending at the range's end, overlapping the one before it (the pattern depends only on the
/// address, so a byte covered twice has one expected value).
///
/// Consecutive windows share an aligned word, and consecutive aligned words differ by
/// [`SPREAD`] in their index term, so each window costs an add, an xor and a double shift
/// (one multiply per range), not two multiplies and a 128-bit shift.
///
/// Sixteen bytes (the default canary's zones, on both sides of a block of alignment up to 16)
/// take a straight line of two windows from three aligned words; in the loop, with the tail
/// test and the call around it, they cost ~45 instructions a zone (cachegrind, the overhead
/// bench's canary row: fill and the two zone checks were ~220 of its ~1450 a pair).
#[inline(always)]
fn for_each_window(start: usize, len: usize, p: u64, mut f: impl FnMut(usize, u64)) {
    debug_assert!(len >= 8);
    let end = start + len;
    // Below 64: the window's offset into its first aligned word, in bits.
    let shift = ((start & 7) * 8) as u32;
    let mut index_term = ((start >> 3) as u64).wrapping_mul(SPREAD);
    let mut low = p ^ index_term;
    if len == 16 {
        let mid = p ^ index_term.wrapping_add(SPREAD);
        let high = p ^ index_term.wrapping_add(SPREAD.wrapping_mul(2));
        let first = (u128::from(mid) << 64) | u128::from(low);
        let second = (u128::from(high) << 64) | u128::from(mid);
        f(start, (first >> (shift & 63)) as u64);
        f(start + 8, (second >> (shift & 63)) as u64);
        return;
    }
    let mut a = start;
    while a + 8 <= end {
        index_term = index_term.wrapping_add(SPREAD);
        let high = p ^ index_term;
        // `shift & 63` tells the compiler what is true: one double-shift instruction.
        let pair = (u128::from(high) << 64) | u128::from(low);
        f(a, (pair >> (shift & 63)) as u64);
        low = high;
        a += 8;
    }
    if a < end {
        f(end - 8, window(end - 8, p));
    }
}

/// Writes the red-zone pattern over `start..start+len`.
///
/// One unaligned word store per eight bytes ([`for_each_window`]). Ranges under eight bytes
/// are written byte by byte.
///
/// # Safety
/// The range is writable memory owned by the caller.
#[inline(always)]
pub(crate) unsafe fn fill(start: usize, len: usize) {
    if len != 16 {
        // SAFETY: the caller's precondition, passed on.
        return unsafe { fill_any(start, len) };
    }
    let p = pattern();
    for_each_window(start, len, p, |a, w| {
        // SAFETY: the two windows of a 16-byte zone lie inside the caller's writable range.
        unsafe { (a as *mut u64).write_unaligned(w.to_le()) }
    });
}

/// [`fill`] for zones of any length, out of line.
///
/// # Safety
/// As for [`fill`].
#[inline(never)]
unsafe fn fill_any(start: usize, len: usize) {
    let p = pattern();
    let end = start + len;
    if len < 8 {
        for a in start..end {
            // SAFETY: inside the caller's writable range.
            unsafe { *(a as *mut u8) = byte_at(a, p) };
        }
        return;
    }
    for_each_window(start, len, p, |a, w| {
        // SAFETY: `for_each_window` passes windows inside `start..end`, the caller's writable
        // range (an unaligned store).
        unsafe { (a as *mut u64).write_unaligned(w.to_le()) }
    });
}

/// Whether all of `start..start+len` holds the red-zone pattern: one unaligned word compare
/// per eight bytes as [`fill`] writes them, the differences ORed together and tested once (the
/// common case, an intact zone, takes no branch per word).
///
/// # Safety
/// The range is readable memory owned by the caller.
#[inline(always)]
unsafe fn zone_intact(start: usize, len: usize) -> bool {
    let p = pattern();
    let end = start + len;
    if len < 8 {
        // SAFETY: inside the caller's readable range.
        return (start..end).all(|b| unsafe { intact(b, p) });
    }
    let mut diff = 0;
    for_each_window(start, len, p, |a, w| {
        // SAFETY: `for_each_window` passes windows inside the caller's readable range.
        diff |= u64::from_le(unsafe { load(a) }) ^ w;
    });
    diff == 0
}

/// Whether a 16-byte zone (the default canary's) is intact: inline, two loads and compares.
/// Other lengths take the out-of-line check ([`zone_intact`]).
///
/// # Safety
/// The range is readable memory owned by the caller.
#[inline(always)]
unsafe fn short_zone_intact(start: usize, len: usize) -> bool {
    // SAFETY: the caller's precondition, passed on.
    len == 16 && unsafe { zone_intact(start, 16) }
}

/// The address of the first byte of `start..start+len` that does not hold the red-zone
/// pattern, if any.
///
/// # Safety
/// The range is readable memory owned by the caller.
#[inline(always)]
pub(crate) unsafe fn first_damaged(start: usize, len: usize) -> Option<usize> {
    // SAFETY: the caller's precondition, passed on.
    if unsafe { short_zone_intact(start, len) } {
        return None;
    }
    // SAFETY: as above.
    unsafe { find_damage(start, len, false) }
}

/// The address of the last damaged byte of `start..start+len` (for an underflow, the byte
/// nearest the block), if any.
///
/// # Safety
/// As for [`first_damaged`].
#[inline(always)]
pub(crate) unsafe fn last_damaged(start: usize, len: usize) -> Option<usize> {
    // SAFETY: the caller's precondition, passed on.
    if unsafe { short_zone_intact(start, len) } {
        return None;
    }
    // SAFETY: as above.
    unsafe { find_damage(start, len, true) }
}

/// The first (or, `last`, the last) damaged byte of a zone of any length, out of line: the
/// word-wise check, then a byte at a time once damage is known (a report follows, which costs
/// far more).
///
/// # Safety
/// As for [`first_damaged`].
#[inline(never)]
unsafe fn find_damage(start: usize, len: usize, last: bool) -> Option<usize> {
    // SAFETY: the caller's precondition, passed on.
    unsafe {
        if zone_intact(start, len) {
            return None;
        }
        let p = pattern();
        // Both searches read bytes inside the caller's readable range.
        if last {
            (start..start + len).rev().find(|&b| !intact(b, p))
        } else {
            (start..start + len).find(|&b| !intact(b, p))
        }
    }
}

/// Eight bytes of [`POISON`].
const POISON_WORD: u64 = u64::from_ne_bytes([POISON; 8]);

/// Fills `start..start+len` with [`POISON`]: for blocks of 8 to 256 bytes (the common case,
/// where the call to `memset` cost more than the stores) inline unaligned word stores, four per
/// step, the last step overlapping the one before it; `memset` beyond.
///
/// # Safety
/// The range is writable memory owned by the caller.
pub(crate) unsafe fn poison(start: usize, len: usize) {
    /// Four words of poison at `a`.
    ///
    /// # Safety
    /// `a..a+32` is writable.
    #[inline(always)]
    unsafe fn four(a: usize) {
        // SAFETY: the caller's precondition (unaligned stores).
        unsafe {
            (a as *mut u64).write_unaligned(POISON_WORD);
            ((a + 8) as *mut u64).write_unaligned(POISON_WORD);
            ((a + 16) as *mut u64).write_unaligned(POISON_WORD);
            ((a + 24) as *mut u64).write_unaligned(POISON_WORD);
        }
    }
    let end = start + len;
    // SAFETY: every store below lies inside the caller's writable range: steps of 32 bytes
    // from `start` while a whole one fits, then 32 bytes ending at `end` (len >= 32), or the
    // words starting at `start` and ending at `end` (len 8 to 31).
    unsafe {
        match len {
            32..=256 => {
                let mut a = start;
                while a + 32 < end {
                    four(a);
                    a += 32;
                }
                four(end - 32);
            }
            16..=31 => {
                (start as *mut u64).write_unaligned(POISON_WORD);
                ((start + 8) as *mut u64).write_unaligned(POISON_WORD);
                ((end - 16) as *mut u64).write_unaligned(POISON_WORD);
                ((end - 8) as *mut u64).write_unaligned(POISON_WORD);
            }
            8..=15 => {
                (start as *mut u64).write_unaligned(POISON_WORD);
                ((end - 8) as *mut u64).write_unaligned(POISON_WORD);
            }
            _ => core::ptr::write_bytes(start as *mut u8, POISON, len),
        }
    }
}

/// The eight bytes at `a` (any alignment).
///
/// # Safety
/// `a..a+8` is readable.
#[inline(always)]
unsafe fn load(a: usize) -> u64 {
    // SAFETY: the caller's precondition (an unaligned load).
    unsafe { (a as *const u64).read_unaligned() }
}

/// The first byte of `start..start+len` that is not [`POISON`] any more.
///
/// Four unaligned words compared per step with one branch (the last, overlapping word as in
/// [`fill`]); bytes only inside a step found damaged.
///
/// # Safety
/// The range is readable memory owned by the caller.
pub(crate) unsafe fn first_unpoisoned(start: usize, len: usize) -> Option<usize> {
    let end = start + len;
    let find = |from: usize, to: usize| {
        // SAFETY: callers below pass subranges of the caller's readable range.
        (from..to).find(|&b| unsafe { *(b as *const u8) } != POISON)
    };
    if len < 8 {
        return find(start, end);
    }
    let mut a = start;
    // SAFETY: every load below reads eight bytes inside the caller's readable range
    // (`end - 8 >= start` as len >= 8). A buggy program may write them meanwhile: that write
    // is what this looks for.
    unsafe {
        while a + 32 <= end {
            let diff = (load(a) ^ POISON_WORD)
                | (load(a + 8) ^ POISON_WORD)
                | (load(a + 16) ^ POISON_WORD)
                | (load(a + 24) ^ POISON_WORD);
            if diff != 0 {
                return find(a, a + 32);
            }
            a += 32;
        }
        while a + 8 <= end {
            if load(a) != POISON_WORD {
                return find(a, a + 8);
            }
            a += 8;
        }
        // The last, overlapping word: its bytes below `a` were found intact above.
        if a < end && load(end - 8) != POISON_WORD {
            return find(a, end);
        }
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
    fn word_wise_writes_stay_inside_the_range_at_every_offset_and_length() {
        let mut buf = [0u8; 400];
        let base = buf.as_mut_ptr() as usize;
        for offset in 0..8 {
            for len in 0..300 {
                let start = base + 16 + offset;
                buf.fill(0xA5);
                // SAFETY: `start..start+len` lies inside `buf`, which is ours.
                unsafe { fill(start, len) };
                let inside = 16 + offset..16 + offset + len;
                assert!(
                    buf[..inside.start].iter().all(|&b| b == 0xA5),
                    "{offset} {len}"
                );
                assert!(
                    buf[inside.end..].iter().all(|&b| b == 0xA5),
                    "{offset} {len}"
                );
                buf.fill(0xA5);
                // SAFETY: as above.
                unsafe { poison(start, len) };
                assert!(
                    buf[..inside.start].iter().all(|&b| b == 0xA5),
                    "{offset} {len}"
                );
                assert!(
                    buf[inside.clone()].iter().all(|&b| b == POISON),
                    "{offset} {len}"
                );
                assert!(
                    buf[inside.end..].iter().all(|&b| b == 0xA5),
                    "{offset} {len}"
                );
                // SAFETY: as above.
                assert_eq!(unsafe { first_unpoisoned(start, len) }, None);
                for bad in [0, len / 2, len.saturating_sub(1)] {
                    if bad < len {
                        buf[inside.start + bad] = 0;
                        std::hint::black_box(&buf);
                        // SAFETY: as above.
                        let found = unsafe { first_unpoisoned(start, len) };
                        assert_eq!(found, Some(start + bad), "{offset} {len} {bad}");
                        buf[inside.start + bad] = POISON;
                    }
                }
            }
        }
    }

    #[test]
    fn left_zone_keeps_alignment() {
        assert_eq!(left_filled(16, 64), 64);
        assert_eq!(left_filled(20, 1 << 30), 24);
        assert_eq!(left_filled(0, 1 << 30), 0);
        assert_eq!(left_zone(0, 64), 0);
        assert_eq!(left_zone(16, 8), 16);
        assert_eq!(left_zone(16, 64), 64);
        assert_eq!(left_zone(20, 16), 32);
    }
}
