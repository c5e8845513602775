//! Size classes: which block size serves a request.
//!
//! ```text
//! class   0      1   2   3   4   5    6    7    8  | then 4 classes per doubling:
//! size    8     16  32  48  64  80   96  112  128  | 160 192 224 256 | 320 384 448 512 | ...
//!                                                 | ... 40960 49152 57344 65536
//!                                                 | ... 327680 393216 458752 524288
//! ```
//!
//! 57 classes from 8 B to 512 KiB; larger requests are "large" blocks mapped from the OS.
//! Classes up to 8 KiB live on small pages (64 KiB), up to 64 KiB on medium pages (512 KiB),
//! and the twelve above on big pages (a whole 4 MiB segment each), so a program that keeps
//! allocating and freeing blocks of a few hundred KiB reuses committed, already faulted
//! memory instead of mapping and unmapping it (the latency probe's tail: see
//! docs/design_document.md).
//! Worst-case internal waste (the share of a block a request can leave unused):
//! * up to 128 B: steps of 16, so at most 15 B — 48.4 % for a 33 B request in the 48 B class,
//!   falling below 12 % from 128 B (requests under 16 B are below one cache-friendly step);
//! * above 128 B: 4 classes per power of two, so a request just above a class boundary wastes
//!   at most 1/5 of its block, i.e. 20 % of the block (25 % of the request), e.g. 129 B in 160 B.
//!
//! The table is computed at compile time; lookups for requests up to 1 KiB are one indexed load
//! (the fast path), larger ones a few arithmetic instructions.
//!
//! May touch: nothing (pure functions and constants).

/// Number of size classes.
pub const CLASS_COUNT: usize = 57;

/// Largest request served from small pages (64 KiB pages, at least 8 blocks each).
pub const SMALL_MAX: usize = 8 * 1024;

/// Largest request served from medium pages (512 KiB pages, at least 8 blocks each).
pub const MEDIUM_MAX: usize = 64 * 1024;

/// Largest request served by a size class at all (from big pages, at least 7 blocks each);
/// larger ones are large blocks.
pub const CLASS_MAX: usize = 512 * 1024;

/// Block size of each class.
pub const CLASS_SIZE: [usize; CLASS_COUNT] = class_sizes();

const fn class_sizes() -> [usize; CLASS_COUNT] {
    let mut sizes = [0usize; CLASS_COUNT];
    sizes[0] = 8;
    let mut i = 1;
    while i <= 8 {
        sizes[i] = 16 * i;
        i += 1;
    }
    // From 128 B, four classes per doubling: 128 * (1 + k/4) * 2^d.
    let mut base = 128;
    while i < CLASS_COUNT {
        let mut k = 1;
        while k <= 4 && i < CLASS_COUNT {
            sizes[i] = base + base / 4 * k;
            i += 1;
            k += 1;
        }
        base *= 2;
    }
    sizes
}

/// Requests up to this size are classified by one table load.
const TABLE_MAX: usize = 1024;

/// `TABLE[(size + 7) / 8]` is the class of `size` for `size <= TABLE_MAX`.
static TABLE: [u8; TABLE_MAX / 8 + 1] = build_table();

const fn build_table() -> [u8; TABLE_MAX / 8 + 1] {
    let mut table = [0u8; TABLE_MAX / 8 + 1];
    let mut slot = 0;
    while slot <= TABLE_MAX / 8 {
        table[slot] = class_of_computed(slot * 8) as u8;
        slot += 1;
    }
    table
}

/// The smallest class whose block holds `size` bytes, computed without the table (for
/// compile-time tables elsewhere).
pub const fn class_of_const(size: usize) -> usize {
    class_of_computed(size)
}

const fn class_of_computed(size: usize) -> usize {
    if size <= 8 {
        return 0;
    }
    if size <= 128 {
        return size.div_ceil(16);
    }
    // size in (2^b, 2^(b+1)]: w = size - 1 has its top bit at b; the next two bits pick the
    // quarter. Class 8 is 128 B (b = 7 boundary), each doubling adds 4 classes.
    let w = size - 1;
    let b = (usize::BITS - 1 - w.leading_zeros()) as usize; // b >= 7
    let quarter = (w >> (b - 2)) & 3;
    8 + (b - 7) * 4 + quarter + 1
}

/// The class for a request of `size` bytes (`size <= CLASS_MAX`).
#[inline(always)]
pub fn class_of(size: usize) -> usize {
    if size <= TABLE_MAX {
        TABLE[(size + 7) >> 3] as usize
    } else {
        class_of_computed(size)
    }
}

/// The kind of page that holds class `class`'s blocks: 0 small, 1 medium, 2 big.
#[inline]
pub const fn page_kind(class: usize) -> usize {
    if CLASS_SIZE[class] <= SMALL_MAX {
        0
    } else if CLASS_SIZE[class] <= MEDIUM_MAX {
        1
    } else {
        2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_increasing_and_ends_at_class_max() {
        for w in CLASS_SIZE.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        assert_eq!(CLASS_SIZE[CLASS_COUNT - 1], CLASS_MAX);
        assert!(CLASS_SIZE.contains(&SMALL_MAX) && CLASS_SIZE.contains(&MEDIUM_MAX));
        assert_eq!(CLASS_SIZE[8], 128);
        assert_eq!(CLASS_SIZE[9], 160);
    }

    #[test]
    fn every_size_maps_to_the_smallest_fitting_class() {
        // Every size up to 64 KiB; above, every size within 64 B of a class boundary (the sweep
        // of all 512 Ki sizes is too slow under miri).
        let near_boundaries = CLASS_SIZE
            .iter()
            .filter(|&&s| s > MEDIUM_MAX)
            .flat_map(|&s| s - 64..=(s + 64).min(CLASS_MAX));
        for size in (0..=MEDIUM_MAX).chain(near_boundaries) {
            let c = class_of(size);
            assert!(CLASS_SIZE[c] >= size, "size {size} class {c}");
            if c > 0 {
                assert!(
                    CLASS_SIZE[c - 1] < size,
                    "size {size} class {c} not smallest"
                );
            }
        }
    }

    #[test]
    fn classes_at_16_or_more_keep_16_byte_alignment() {
        // C's malloc promises max_align_t (16 B) alignment for requests above 8 B: every class
        // but the first is a multiple of 16, so blocks carved from a 16-aligned start stay so.
        for &s in &CLASS_SIZE[1..] {
            assert_eq!(s % 16, 0, "{s}");
        }
    }

    #[test]
    fn worst_case_waste_is_as_documented() {
        let mut worst_above_128: f64 = 0.0;
        let above = CLASS_SIZE[..CLASS_COUNT - 1]
            .iter()
            .filter(|&&s| s >= MEDIUM_MAX)
            .map(|s| s + 1);
        for size in (129..=MEDIUM_MAX).chain(above) {
            let block = CLASS_SIZE[class_of(size)];
            worst_above_128 = worst_above_128.max((block - size) as f64 / block as f64);
        }
        assert!(worst_above_128 <= 0.2 + 1e-9, "{worst_above_128}");
    }
}
