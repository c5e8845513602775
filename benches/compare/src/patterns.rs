//! The suite's further allocation patterns, each modelled on a benchmark people know (written
//! here from their descriptions, not copied): thread churn between phases (mstress), passive
//! false sharing (cache-scratch), tight FIFO loops (glibc's bench-malloc-simple; its LIFO loop is
//! [`crate::workload`]'s `lifo64`), Pareto-distributed sizes (alloc-test) and large reallocs
//! (a buffer grown to tens of MiB). `benches/c/workloads.c` carries the same patterns with the
//! same parameters.
//!
//! May touch: the allocator it is given, [`crate::rng`], threads of std (their bookkeeping comes
//! from the binary's global allocator, `System`, outside the figures that matter).

use std::alloc::GlobalAlloc;
use std::sync::Mutex;
use std::thread;

use crate::rng::Rng;
use crate::workload::{alloc_touched, free, join_sum, realloc_touched};

/// Blocks per burst of [`fifo_bursts`].
pub const FIFO_BURST: u64 = 1000;
/// Phases of [`mstress`]: each starts fresh threads that inherit the last phase's blocks.
pub const MSTRESS_PHASES: u64 = 10;
/// Live blocks per thread in [`mstress`].
const MSTRESS_WINDOW: usize = 1000;
/// Writes to each block in [`scratch`] between its allocation and its free.
const SCRATCH_WRITES: usize = 50;
/// Size of every block in [`scratch`]: small enough that several share a cache line.
const SCRATCH_SIZE: usize = 8;
/// Live blocks per thread in [`pareto`].
const PARETO_WINDOW: usize = 4096;
/// Largest block of [`pareto`].
pub const PARETO_MAX: usize = 1024;
/// Smallest and largest size of the buffer [`grow_buffers`] grows (1 KiB to 32 MiB).
const REALLOC_FROM: usize = 1 << 10;
const REALLOC_TO: usize = 32 << 20;

/// `ops` pairs as bursts of [`FIFO_BURST`] 64-byte blocks, each burst freed oldest first.
pub fn fifo_bursts<A: GlobalAlloc>(a: &A, ops: u64) -> Result<u64, String> {
    let bursts = ops.div_ceil(FIFO_BURST);
    let mut live = Vec::with_capacity(FIFO_BURST as usize);
    for b in 0..bursts {
        for _ in 0..FIFO_BURST {
            live.push(alloc_touched(a, 64, b as u8)?);
        }
        for p in live.drain(..) {
            // SAFETY: `live` holds live 64-byte blocks, each drained once.
            unsafe { free(a, p, 64) };
        }
    }
    Ok(bursts * FIFO_BURST)
}

/// A size of 8..=[`PARETO_MAX`] bytes, Pareto-distributed with x_min = 8 and α = 1
/// (P(size > s) = 8 / s: half the blocks are 8–16 bytes, one in 128 is the largest), drawn in
/// integers so the C harness draws the very same sizes.
#[inline]
pub fn pareto_size(rng: &mut Rng) -> usize {
    let k = (rng.next_u64() >> 11) + 1; // 1..=2^53
    ((8u64 << 53) / k).min(PARETO_MAX as u64) as usize
}

/// Random replacement in a window of [`PARETO_WINDOW`] blocks of Pareto-distributed sizes.
pub fn pareto<A: GlobalAlloc>(a: &A, rng: &mut Rng, ops: u64) -> Result<u64, String> {
    let mut slots = Vec::with_capacity(PARETO_WINDOW);
    for _ in 0..PARETO_WINDOW {
        let size = pareto_size(rng);
        slots.push((alloc_touched(a, size, 1)?, size));
    }
    for i in 0..ops {
        let k = rng.below(PARETO_WINDOW);
        let (p, size) = slots[k];
        // SAFETY: slot k holds a live block of `size` bytes, replaced right below.
        unsafe { free(a, p, size) };
        let size = pareto_size(rng);
        slots[k] = (alloc_touched(a, size, i as u8)?, size);
    }
    for (p, size) in slots {
        // SAFETY: every slot holds a live block of its size.
        unsafe { free(a, p, size) };
    }
    Ok(ops + PARETO_WINDOW as u64)
}

/// Grows buffers from 1 KiB to 32 MiB by a quarter at a time with `realloc` (writing the new
/// last byte, as a program appending would), frees each and starts again, until `ops` reallocs
/// were done. Counts every allocation and realloc as a pair.
pub fn grow_buffers<A: GlobalAlloc>(a: &A, ops: u64) -> Result<u64, String> {
    let mut done = 0;
    let mut pairs = 0;
    while done < ops {
        let mut size = REALLOC_FROM;
        let mut p = alloc_touched(a, size, 1)?;
        pairs += 1;
        while size < REALLOC_TO && done < ops {
            let new = (size + size / 4).min(REALLOC_TO);
            p = realloc_touched(a, p, size, new)?;
            size = new;
            done += 1;
            pairs += 1;
        }
        // SAFETY: `p` is the live buffer of `size` bytes, not used afterwards.
        unsafe { free(a, p, size) };
    }
    Ok(pairs)
}

/// A block on its way between threads of [`mstress`]'s phases.
struct Handed(*mut u8, usize);

// SAFETY: a handed block belongs to whichever thread holds it; the allocators compared are
// `Sync`, so any thread may free what another allocated.
unsafe impl Send for Handed {}

/// mstress's pattern: [`MSTRESS_PHASES`] phases, each starting `threads` fresh threads. A thread
/// frees the blocks a thread of the last phase left it (so frees go to heaps of threads that
/// have exited), replaces blocks of 8–1024 bytes at random in its own window, and exits leaving
/// its window to the next phase. `ops` replacements per thread in all.
pub fn mstress<A: GlobalAlloc + Sync>(
    a: &A,
    threads: usize,
    ops: u64,
    seed: u64,
) -> Result<u64, String> {
    let lists =
        || -> Vec<Mutex<Vec<Handed>>> { (0..threads).map(|_| Mutex::new(Vec::new())).collect() };
    // What this phase's threads free, and (apart, so no thread of this phase overwrites a list
    // another has not taken yet) what they leave to the next.
    let mut inherit = lists();
    let per_phase = ops.div_ceil(MSTRESS_PHASES);
    let mut pairs = 0;
    for phase in 0..MSTRESS_PHASES {
        let leave = lists();
        pairs += thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (inherit, leave) = (&inherit, &leave);
                    s.spawn(move || {
                        let mut rng = Rng::new(seed.wrapping_add(phase * 1000 + t as u64));
                        let old = std::mem::take(&mut *lock(&inherit[t]));
                        for Handed(p, size) in old {
                            // SAFETY: the last phase left this live block of `size` bytes.
                            unsafe { free(a, p, size) };
                        }
                        let mut slots = Vec::with_capacity(MSTRESS_WINDOW);
                        for _ in 0..MSTRESS_WINDOW {
                            let size = rng.between(8, 1024);
                            slots.push(Handed(alloc_touched(a, size, 1)?, size));
                        }
                        for i in 0..per_phase {
                            let k = rng.below(MSTRESS_WINDOW);
                            let size = rng.between(8, 1024);
                            let fresh = Handed(alloc_touched(a, size, i as u8)?, size);
                            let Handed(p, old) = std::mem::replace(&mut slots[k], fresh);
                            // SAFETY: slot k held this live block, now replaced.
                            unsafe { free(a, p, old) };
                        }
                        // The next phase's thread t+1 frees them: always another thread.
                        *lock(&leave[(t + 1) % threads]) = slots;
                        Ok::<u64, String>(per_phase + MSTRESS_WINDOW as u64)
                    })
                })
                .collect();
            join_sum(handles)
        })?;
        inherit = leave;
    }
    for slot in &inherit {
        for Handed(p, size) in std::mem::take(&mut *lock(slot)) {
            // SAFETY: the last phase left this live block of `size` bytes.
            unsafe { free(a, p, size) };
        }
    }
    Ok(pairs)
}

/// The lock's contents even if a thread panicked while holding it (the blocks are still there).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// cache-scratch's pattern (passive false sharing): this thread allocates one 8-byte block per
/// worker back to back, so they likely share a cache line, and hands one to each worker, which
/// frees it; then every worker `ops` times allocates an 8-byte block, writes it
/// [`SCRATCH_WRITES`] times and frees it. An allocator that hands the freed neighbour back to
/// the worker keeps the workers writing to one line from several cores.
pub fn scratch<A: GlobalAlloc + Sync>(a: &A, threads: usize, ops: u64) -> Result<u64, String> {
    let mut first = Vec::with_capacity(threads);
    for _ in 0..threads {
        first.push(Handed(alloc_touched(a, SCRATCH_SIZE, 1)?, SCRATCH_SIZE));
    }
    let pairs = thread::scope(|s| {
        let handles: Vec<_> = first
            .into_iter()
            .map(|Handed(p, size)| {
                let h = Handed(p, size);
                s.spawn(move || {
                    let h = h;
                    // SAFETY: this worker owns the handed block, freed once.
                    unsafe { free(a, h.0, h.1) };
                    for i in 0..ops {
                        let p = alloc_touched(a, SCRATCH_SIZE, 0)?;
                        for w in 0..SCRATCH_WRITES {
                            // SAFETY: `p` is a live block of SCRATCH_SIZE bytes.
                            unsafe { p.add(w % SCRATCH_SIZE).write_volatile(i as u8) };
                        }
                        // SAFETY: `p` is live, of SCRATCH_SIZE bytes, and not used after.
                        unsafe { free(a, p, SCRATCH_SIZE) };
                    }
                    Ok::<u64, String>(ops)
                })
            })
            .collect();
        join_sum(handles)
    })?;
    Ok(pairs + threads as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_sizes_stay_in_range_and_are_mostly_small() {
        let mut r = Rng::new(3);
        let sizes: Vec<usize> = (0..100_000).map(|_| pareto_size(&mut r)).collect();
        assert!(sizes.iter().all(|&s| (8..=PARETO_MAX).contains(&s)));
        let small = sizes.iter().filter(|&&s| s <= 16).count();
        // P(size <= 16) = 1 - 8/17 ≈ 0.53 (sizes are floored).
        assert!(
            (50_000..56_000).contains(&small),
            "{small} of 100000 at most 16 B"
        );
        assert!(sizes.contains(&PARETO_MAX));
    }
}
