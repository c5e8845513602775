//! Call stacks: captured as raw return addresses in the allocation path (never symbolised
//! there), de-duplicated into small ids in one process-wide table, and turned into function
//! names and file:line only when a report is printed ([`crate::symbolize`]) or by the viewer.
//!
//! The table: an index of `AtomicU64` slots (`hash-high-bits | id`), probed without a lock, and
//! an id -> record array; each record (`hash, len, frames...`) is written once into memory from
//! [`crate::os_memory`] and never changes or moves, so a reader holding an id may read its
//! frames with no lock. Inserting a new stack takes one spin lock; stacks seen before cost a
//! hash and, usually, a hit in the thread's own cache ([`crate::thread_state::Local`]).
//!
//! How a stack is walked ([`Unwinder`]): by default (x86-64 Linux) by frame sizes learnt from
//! earlier DWARF walks and checked against them (see [`cfa`]), elsewhere by DWARF unwind tables
//! (the `backtrace` crate). A DWARF walk parses unwind tables for every frame — microseconds,
//! and at the guard pages' rate (one allocation in 1000, two stacks each) its tables and
//! libgcc's code are out of cache; the learnt walk reads one table entry and one stack word
//! per frame. A thread's last walks are remembered and replayed while the stack still holds
//! their return addresses ([`RecentWalks`]): a loop's allocations cost one compare per frame,
//! and no hash.
//!
//! May touch: `backtrace` (capture only), [`crate::os_memory`], [`crate::spin`],
//! [`crate::thread_state`].

use core::ptr::NonNull;

use allocscope_core::sync::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use crate::options::Unwinder;
use crate::os_memory;
use crate::spin::SpinLock;
use crate::thread_state::{Local, STACK_CACHE};

/// Most distinct stacks; later new stacks get id 0 ("unknown").
pub(crate) const MAX_STACKS: usize = 1 << 20;
const ID_BITS: u32 = 20;
const ID_MASK: u64 = (1 << ID_BITS) - 1;
/// Index slots: twice the stacks, so probes stay short.
const INDEX_SLOTS: usize = MAX_STACKS * 2;
/// Bytes per arena chunk for records.
const CHUNK: usize = 1 << 20;
/// Most frames a capture keeps (the option `stack_depth` is at most this).
pub(crate) const MAX_FRAMES: usize = crate::options::MAX_STACK_DEPTH;

static INDEX: AtomicPtr<AtomicU64> = AtomicPtr::new(core::ptr::null_mut());
static RECORDS: AtomicPtr<AtomicPtr<u64>> = AtomicPtr::new(core::ptr::null_mut());
/// Ids handed out so far. Relaxed: read only for statistics; ids are assigned under `ARENA`.
static COUNT: AtomicU32 = AtomicU32::new(0);

/// Bump arena for records: (next free byte, end of the current chunk).
static ARENA: SpinLock<(usize, usize)> = SpinLock::new((0, 0));

/// Takes the stack table's lock and keeps it (fork's prepare handler, [`crate::fork`]).
#[cfg(unix)]
pub(crate) fn hold_for_fork() {
    ARENA.hold();
}

/// Releases the lock [`hold_for_fork`] took.
///
/// # Safety
/// After `hold_for_fork` on this thread (or, in a forked child, the thread that forked), once.
#[cfg(unix)]
pub(crate) unsafe fn release_after_fork() {
    // SAFETY: the caller's contract: held through `hold_for_fork`.
    unsafe { ARENA.release_held() };
}

/// A captured stack: return addresses, innermost first.
pub(crate) struct Captured {
    frames: [usize; MAX_FRAMES],
    len: usize,
}

impl Captured {
    pub(crate) fn frames(&self) -> &[usize] {
        &self.frames[..self.len]
    }
}

/// Captures the current stack (at most `depth` frames).
#[inline]
pub(crate) fn capture(depth: usize, unwinder: Unwinder, local: Option<&Local>) -> Captured {
    let mut out = Captured {
        frames: [0; MAX_FRAMES],
        len: 0,
    };
    out.len = capture_into(&mut out.frames, depth, unwinder, local);
    out
}

/// Captures the current stack into `frames` (at most `depth` frames and its length); returns
/// how many were written. Writing into a buffer the caller keeps spares zeroing and copying a
/// 2 KiB array per capture. (The tracker's sampled stacks take [`capture_id`].)
#[inline(always)]
pub(crate) fn capture_into(
    frames: &mut [usize],
    depth: usize,
    unwinder: Unwinder,
    local: Option<&Local>,
) -> usize {
    let (n, id) = capture_raw(Some(&mut *frames), depth, unwinder, local);
    // A capture that knows its id did not necessarily write its frames (a replay compares
    // them only): the table's are the same.
    match id.and_then(frames_of) {
        Some(known) if known.len() <= frames.len() => {
            frames[..known.len()].copy_from_slice(known);
            known.len()
        }
        _ => n,
    }
}

/// Captures the current stack (at most `depth` frames) and returns its id, as [`intern`] would
/// give it for the frames [`capture_into`] writes: what the tracker records for a sampled
/// allocation or free. The id comes straight from the capture when the default unwinder knows
/// it on the way — a replayed walk ([`RecentWalks`]) remembers its id, and a walk hashes its
/// frames as it reads them — so a replay costs one compare per frame and touches no frame
/// buffer; other captures write the thread's scratch buffer (a buffer on the stack when that
/// one is in use or there is no thread state) and are interned.
#[inline(always)]
pub(crate) fn capture_id(depth: usize, unwinder: Unwinder, local: Option<&Local>) -> u32 {
    // `capture_raw` always knows the id when it is given no buffer.
    capture_raw(None, depth, unwinder, local).1.unwrap_or(0)
}

/// The one capture behind [`capture_into`] and [`capture_id`]: the frames from its caller on,
/// as their number and the stack's id when the capture learnt it on the way (`None`: the
/// caller interns the frames). The frames go to `given`; when it is `None` they go to the
/// thread's scratch buffer, borrowed only by a capture that writes frames, and the id is
/// interned here (always `Some`). When the id is known the frames may not have been written.
/// One function, never inlined, for every caller: the default unwinder starts its walk from
/// this function's own frame, whose size it learns once (see [`cfa`]), and the frame-pointer
/// walk from its frame pointer.
#[inline(never)]
fn capture_raw(
    given: Option<&mut [usize]>,
    depth: usize,
    unwinder: Unwinder,
    local: Option<&Local>,
) -> (usize, Option<u32>) {
    let depth = depth.min(given.as_deref().map_or(MAX_FRAMES, <[usize]>::len));
    // The default unwinder's replay, which needs no buffer.
    let rsp = stack_pointer();
    let mut begun = None;
    if let (Unwinder::Auto, Some(local)) = (unwinder, local) {
        match auto_begin(depth, local, rsp) {
            Ok((n, id)) => return (n, Some(id)),
            Err(b) => begun = b,
        }
    }
    let wants_id = given.is_none();
    let mut scratch;
    let mut own;
    let frames: &mut [usize] = match given {
        Some(frames) => frames,
        None => {
            scratch = local.and_then(|l| l.frames.try_borrow_mut().ok());
            match scratch.as_deref_mut() {
                Some(frames) => frames,
                None => {
                    own = [0usize; MAX_FRAMES];
                    &mut own
                }
            }
        }
    };
    let captured = match (unwinder, local) {
        (Unwinder::FramePointers, Some(local)) => {
            Some(capture_frame_pointers(frames, depth, local))
                .filter(|&n| n > 0)
                .map(|n| (n, None))
        }
        (Unwinder::Auto, Some(local)) => auto_walk(frames, depth, local, rsp, begun),
        _ => None,
    };
    let (n, id) = captured.unwrap_or_else(|| (capture_dwarf(frames, depth), None));
    match id {
        None if wants_id => (n, Some(intern(&frames[..n], local))),
        id => (n, id),
    }
}

/// The stack pointer where it is read (x86-64 Linux; 0 elsewhere). Inlined into
/// `capture_raw`, whose frame has a fixed size: the same offset from `capture_raw`'s frame at
/// every call (what [`cfa`] relies on, and checks).
#[inline(always)]
fn stack_pointer() -> usize {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    {
        let rsp: usize;
        // SAFETY: reads the stack-pointer register; no memory is touched.
        unsafe {
            core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack, preserves_flags));
        }
        rsp
    }
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    0
}

/// Where a capture by the default unwinder stands once no replay served it.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
#[derive(Clone, Copy)]
struct Begun {
    verdict: u8,
    /// `cfa::GENERATION` before the walk.
    generation: u32,
    /// Neither among the first captures nor a periodic check.
    routine: bool,
}

/// The default unwinder's start (see [`cfa`]): a replay's (frames, id), or where the capture
/// stands for [`auto_walk`] (`None` where there is no such unwinder: DWARF).
#[inline(always)]
fn auto_begin(depth: usize, local: &Local, rsp: usize) -> Result<(usize, u32), Option<Begun>> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return cfa::begin(depth, local, rsp).map_err(Some);
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = (depth, local, rsp);
        Err(None)
    }
}

/// The default unwinder past a replay: (frames, id if known), or `None` (the caller takes
/// DWARF).
#[inline(always)]
fn auto_walk(
    frames: &mut [usize],
    depth: usize,
    local: &Local,
    rsp: usize,
    begun: Option<Begun>,
) -> Option<(usize, Option<u32>)> {
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    return cfa::walk_or_check(
        frames,
        depth,
        local,
        (rsp, capture_raw as fn(_, _, _, _) -> _ as usize),
        begun?,
    );
    #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
    {
        let _ = (frames, depth, local, rsp, begun);
        None
    }
}

/// The walk by remembered frame sizes (x86-64): every DWARF walk records, for each return
/// address it passes, how far the caller's canonical frame address (CFA) lies above the
/// callee's — a constant for a given return address in any function whose frame has a fixed
/// size, frame pointer or not — and a later walk follows `return address = *(CFA - 8)`, `next
/// CFA = CFA + size(return address)` from `capture_raw`'s own frame: one lookup in a small
/// table and one stack read per frame, where libgcc's DWARF walk parses unwind tables for
/// each frame (about 1.5k instructions per frame, and cold at the guard pages' rate).
///
/// Trust is measured, not assumed: until [`cfa::AGREEMENTS_NEEDED`] walks gave exactly the
/// frames DWARF gives, then for every walk that gives a stack not in the table yet, and for one
/// capture in [`cfa::RECHECK`] per thread, both run and are compared; one disagreement turns
/// the process to DWARF for good. (A walk gone wrong — a frame size that no longer holds —
/// reads words that are not this stack's return addresses: it stops at one not learnt, or
/// gives frames that, all but certainly, no stack had before, and are checked. So the periodic
/// check, at several microseconds a DWARF walk, is a rare backstop.) A walk repeated from the
/// same stack pointer over the same return addresses is replayed ([`RecentWalks`]). A return address seen
/// with two different frame sizes (a function that realigns or grows its stack) is marked
/// unstable, and a stack through it always takes DWARF; so does a stack with a return address
/// not learnt yet (which the DWARF walk then teaches), or a frame outside the thread's stack.
/// Frames are returned from `capture_raw`'s caller on, whichever walk produced them, so the
/// same call site always gets the same stack id.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod cfa {
    use super::{
        capture_dwarf_with_cfas, hash_finish, hash_step, known_id, stack_bounds, Begun, Local,
        HASH_SEED, RECENT_FRAMES,
    };
    use allocscope_core::sync::{AtomicU32, AtomicU64, AtomicU8, Ordering};

    const UNKNOWN: u8 = 0;
    const TRUSTED: u8 = 1;
    const REFUSED: u8 = 2;
    /// The verdict, process-wide. Relaxed: a hint each capture reads on its own; racing
    /// stores are each safe answers (a refusal is final: nothing stores a verdict after one).
    static VERDICT: AtomicU8 = AtomicU8::new(UNKNOWN);
    /// Agreeing checks so far while the verdict is unknown. Relaxed: a count.
    static AGREED: AtomicU32 = AtomicU32::new(0);
    /// Agreeing checks needed before the walk is trusted.
    pub(super) const AGREEMENTS_NEEDED: u32 = 8;
    /// Once trusted, one capture in this many per thread is still checked against DWARF
    /// (besides every capture of a stack not seen before).
    pub(super) const RECHECK: u32 = 4096;
    /// Bumped whenever a learnt entry changes (a return address turns unstable, or its slot
    /// is taken by another) or the start offset does: walks remembered before it
    /// ([`super::RecentWalks`]) are not replayed. Relaxed: like the entries it guards, a hint each
    /// capture reads on its own; a replay that misses a concurrent bump gives what a walk
    /// reading the entry just before the change would have given.
    static GENERATION: AtomicU32 = AtomicU32::new(0);

    /// Remembered return addresses, direct mapped by a hash; an entry is `ip << 16 | size / 8
    /// << 1 | 1` (0 = empty), with the size field [`END`] for a stack's last frame and
    /// [`UNSTABLE`] for a return address seen with two sizes. Relaxed: every entry is
    /// self-contained and checked against the ip it is looked up for.
    const SLOTS: usize = 4096;
    static SIZES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
    const END: u64 = 0;
    const UNSTABLE: u64 = 0x7FFF;
    /// `capture_raw`'s CFA minus the stack pointer it reads (0 = not learnt; `usize::MAX` =
    /// seen with two values). Relaxed: as for the entries.
    static START: AtomicU64 = AtomicU64::new(0);

    /// What a return address's entry says.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Size {
        Unknown,
        Unstable,
        End,
        Bytes(usize),
    }

    fn slot(ip: usize) -> &'static AtomicU64 {
        let h = (ip as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52;
        &SIZES[h as usize % SLOTS]
    }

    pub(super) fn lookup(ip: usize) -> Size {
        let e = slot(ip).load(Ordering::Relaxed);
        if e == 0 || (e >> 16) as usize != ip {
            return Size::Unknown;
        }
        match (e >> 1) & 0x7FFF {
            END => Size::End,
            UNSTABLE => Size::Unstable,
            words => Size::Bytes(words as usize * 8),
        }
    }

    /// Records that return address `ip` has a frame of `size` bytes (`None`: the last frame).
    pub(super) fn learn(ip: usize, size: Option<usize>) {
        if ip == 0 || ip >> 47 != 0 {
            return;
        }
        let field = match size {
            None => END,
            Some(b) if b > 0 && b % 8 == 0 && ((b / 8) as u64) < UNSTABLE => (b / 8) as u64,
            Some(_) => UNSTABLE,
        };
        let field = match lookup(ip) {
            Size::Unknown => field,
            Size::Unstable => return,
            Size::End if field == END => return,
            Size::Bytes(b) if (b / 8) as u64 == field => return,
            _ => UNSTABLE,
        };
        let slot = slot(ip);
        // Relaxed: see `SIZES`.
        if slot.load(Ordering::Relaxed) != 0 {
            // An entry changes (turns unstable, or gives its slot to another address).
            // Relaxed: see `GENERATION`.
            GENERATION.fetch_add(1, Ordering::Relaxed);
        }
        slot.store((ip as u64) << 16 | field << 1 | 1, Ordering::Relaxed);
    }

    /// The walk itself from `capture_raw`'s frame (whose stack pointer was `rsp`), inside the
    /// thread's stack `low..high`; `None` as soon as a frame is not known for sure. Each
    /// frame's CFA minus `rsp` goes to `cfas` (as far as it reaches; `u32::MAX` if too far).
    /// Gives the frames' number and their hash ([`super::hash_frames`]), folded in as each
    /// frame is read: a chain of multiplications beside the walk's chain of loads, where a
    /// hash after the walk would be a second pass that waits for the first.
    #[inline(never)]
    pub(super) fn walk(
        frames: &mut [usize],
        depth: usize,
        rsp: usize,
        (low, high): (usize, usize),
        cfas: &mut [u32],
    ) -> Option<(usize, u64)> {
        // Relaxed: see `START`.
        let start = START.load(Ordering::Relaxed);
        if start == 0 || start == u64::MAX {
            return None;
        }
        let mut cfa = rsp.checked_add(start as usize)?;
        let mut n = 0;
        let mut hash = HASH_SEED;
        while n < depth.min(frames.len()) {
            if cfa < low + 8 || cfa > high || cfa % 8 != 0 {
                return None;
            }
            // SAFETY: `cfa - 8 .. cfa` lies inside this thread's mapped stack (checked above).
            let ip = unsafe { *((cfa - 8) as *const usize) };
            frames[n] = ip;
            hash = hash_step(hash, ip);
            if let Some(c) = cfas.get_mut(n) {
                *c = u32::try_from(cfa - rsp).unwrap_or(u32::MAX);
            }
            n += 1;
            match lookup(ip) {
                Size::Bytes(b) => cfa += b,
                Size::End => break,
                Size::Unknown | Size::Unstable => return None,
            }
        }
        Some((n, hash_finish(hash)))
    }

    /// Learns from a DWARF walk: `pairs` holds (ip, stack pointer) per frame, innermost first
    /// (the unwinder's "CFA" of a frame is its stack pointer at the call, the CFA of the frame
    /// below it); `at` is the index of `capture_raw`'s frame, whose stack pointer was `rsp`;
    /// `whole` says the walk reached the stack's bottom (was not cut by the depth).
    #[inline(never)]
    pub(super) fn learn_walk(
        pairs: &[(usize, usize)],
        at: usize,
        rsp: usize,
        whole: bool,
        (low, high): (usize, usize),
    ) {
        let (Some(&(_, own)), Some(&(_, cfa))) = (pairs.get(at), pairs.get(at + 1)) else {
            return;
        };
        // `capture_raw`'s CFA from the stack pointer it read (both are its own, fixed frame's).
        let start = if own == rsp && cfa > rsp && cfa - rsp < 1 << 20 {
            (cfa - rsp) as u64
        } else {
            u64::MAX
        };
        // Relaxed: see `START`.
        match START.load(Ordering::Relaxed) {
            0 => START.store(start, Ordering::Relaxed),
            known if known != start => {
                START.store(u64::MAX, Ordering::Relaxed);
                // Relaxed: see `GENERATION`.
                GENERATION.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        for i in at + 1..pairs.len() {
            let (ip, sp) = pairs[i];
            let Some(&(next, cfa)) = pairs.get(i + 1) else {
                if whole {
                    learn(ip, None);
                }
                break;
            };
            // The frame must really keep its return address at CFA - 8 (a signal frame does
            // not), inside the stack.
            let readable = cfa >= low + 8 && cfa <= high && cfa % 8 == 0;
            // SAFETY: `cfa - 8 .. cfa` lies inside this thread's mapped stack (checked).
            let kept = readable && unsafe { *((cfa - 8) as *const usize) } == next;
            learn(
                ip,
                if kept && cfa > sp {
                    Some(cfa - sp)
                } else {
                    Some(1)
                },
            );
        }
    }

    /// See the module docs. The start of a capture from `capture_raw`'s frame (whose stack
    /// pointer was `rsp`): a replay's frames' number and id (it writes no frames), or where
    /// the capture stands for [`walk_or_check`].
    #[inline(always)]
    pub(super) fn begin(depth: usize, local: &Local, rsp: usize) -> Result<(usize, u32), Begun> {
        let count = local.captures.get().wrapping_add(1);
        local.captures.set(count);
        // Relaxed: see `VERDICT`.
        let verdict = VERDICT.load(Ordering::Relaxed);
        // Relaxed: see `GENERATION`. Read before the walk, so that a table changed during it
        // leaves the walk remembered as stale.
        let generation = GENERATION.load(Ordering::Relaxed);
        // A capture that is neither among the first nor one of the periodic checks.
        let routine = verdict == TRUSTED && count % RECHECK != 0;
        if routine {
            if let Ok(mut recent) = local.recent_walks.try_borrow_mut() {
                if let Some(replayed) = recent.replay(depth, rsp, generation) {
                    return Ok(replayed);
                }
            }
        }
        Err(Begun {
            verdict,
            generation,
            routine,
        })
    }

    /// A capture past [`begin`]: the walk, and the DWARF walk that checks or replaces it;
    /// gives the frames from `capture_raw`'s caller on, as their number and, for a routine
    /// walk of a stack seen before, the id its hash finds. Never inlined: the walk's buffers
    /// and state live in this frame, and `capture_raw`'s replay path spills less (cachegrind,
    /// `sample=1`: ~23 fewer instructions per pair).
    #[inline(never)]
    pub(super) fn walk_or_check(
        frames: &mut [usize],
        depth: usize,
        local: &Local,
        (rsp, capture_raw): (usize, usize),
        Begun {
            verdict,
            generation,
            routine,
        }: Begun,
    ) -> Option<(usize, Option<u32>)> {
        let mut recent = local.recent_walks.try_borrow_mut().ok();
        let bounds = stack_bounds(local);
        if bounds.1 == 0 {
            return None;
        }
        let mut cfas = [0u32; RECENT_FRAMES];
        let walked = if verdict == REFUSED {
            None
        } else {
            walk(frames, depth, rsp, bounds, &mut cfas)
        };
        if let (Some((n, hash)), true) = (walked, routine) {
            // A stack seen before is taken as the walk gives it; a new one is checked against
            // DWARF first (a walk gone wrong reads words that are no return addresses of this
            // stack, and the frames it gives are, all but certainly, a stack never seen).
            let id = known_id(hash, &frames[..n], local);
            if id != 0 {
                if let Some(recent) = recent.as_deref_mut() {
                    recent.remember(rsp, depth, generation, &frames[..n], &cfas[..n], id);
                }
                return Some((n, Some(id)));
            }
            // A full table gives a new stack no id (it is recorded as "unknown", id 0, which
            // interning it would give too): nothing for a check to keep right, and no DWARF
            // walk per capture once it is full.
            if super::count() as usize >= super::MAX_STACKS {
                return Some((n, Some(0)));
            }
        }
        drop(recent);
        let mut check = local.check_frames.try_borrow_mut().ok()?;
        // Pairs (ip, CFA) in the scratch buffer: the DWARF walk, with room for the backtrace
        // crate's own frames above `capture_raw`'s.
        let limit = (depth + 16).min(check.len() / 2);
        let (pairs, at) = capture_dwarf_with_cfas(&mut check[..], limit, capture_raw);
        let at = at?;
        let whole = pairs.len() < limit;
        let theirs = pairs.get(at + 1..).unwrap_or_default();
        let n_dwarf = theirs.len().min(depth);
        if verdict != REFUSED {
            learn_walk(pairs, at, rsp, whole, bounds);
        }
        if let Some((n, _)) = walked {
            let common = n.min(n_dwarf);
            let equal = frames
                .iter()
                .zip(theirs)
                .take(common)
                .all(|(a, b)| *a == b.0);
            // Equal frames, and as many, unless the DWARF walk was cut by its buffer first.
            if equal && (n == n_dwarf || (!whole && n > n_dwarf)) {
                // Relaxed: see `AGREED`.
                if verdict == UNKNOWN
                    && AGREED.fetch_add(1, Ordering::Relaxed).wrapping_add(1) >= AGREEMENTS_NEEDED
                {
                    VERDICT.store(TRUSTED, Ordering::Relaxed);
                }
                return Some((n, None));
            }
            VERDICT.store(REFUSED, Ordering::Relaxed);
        }
        for (f, p) in frames.iter_mut().zip(theirs.iter().take(n_dwarf)) {
            *f = p.0;
        }
        Some((n_dwarf, None))
    }

    /// The verdict so far (for tests).
    #[cfg(test)]
    pub(super) fn trusted() -> bool {
        // Relaxed: see `VERDICT`.
        VERDICT.load(Ordering::Relaxed) == TRUSTED
    }
}

/// Walks a thread remembers, and the most frames of a remembered walk.
const RECENT: usize = 8;
const _: () = assert!(RECENT <= 8, "RecentWalks::order holds eight entry numbers");
const RECENT_FRAMES: usize = 48;
const _: () = assert!(
    RECENT_FRAMES % 2 == 0,
    "a remembered walk pads to whole pairs"
);

/// A thread's last walks by frame sizes ([`cfa`]), for replay. A walk is a function of the
/// stack pointer it starts from, the words it reads and the frame-size table: while the table
/// has not changed (`cfa::GENERATION`) and the stack holds, at every place the walk read a
/// return address, the same one, walking again would give the same frames, which have the
/// same stack id. Replaying checks one stack word per frame against the remembered one, each
/// independent of the others, where the walk is a chain of dependent loads (stack word, table
/// entry, next frame) and the id a hash over every frame; code that allocates again and again
/// from the same call paths (any loop) replays most of its stacks. Walks reach the thread's
/// own stack only, so a remembered place is inside it for the thread's whole life.
pub(crate) struct RecentWalks {
    walks: [Walk; RECENT],
    /// Entry numbers, one a byte from the low end, the most recently replayed or remembered
    /// first: replays try them in this order, and the last one is replaced. (Walks from one
    /// stack pointer often share their first frames — the allocator's own — and part from
    /// each other only at the caller's, so a wrong entry can cost most of a comparison.)
    order: u64,
    /// Replays so far (for tests: that a test's captures were replayed).
    #[cfg(test)]
    replays: u32,
}

struct Walk {
    /// `capture_raw`'s stack pointer at the walk (0 = empty entry).
    rsp: usize,
    /// `cfa::GENERATION` before the walk.
    generation: u32,
    /// The depth asked for.
    depth: u32,
    len: u32,
    /// The stack's id (never 0).
    id: u32,
    /// The return addresses, `len` of them, then the last once more if `len` is odd.
    ips: [usize; RECENT_FRAMES],
    /// Each frame's CFA minus `rsp` (its return address lies just below), padded as `ips`.
    cfas: [u32; RECENT_FRAMES],
}

#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
impl Walk {
    /// This walk's frames' number and id if it was made from `rsp` for `depth` frames at
    /// `generation` and the stack still holds its return addresses. The words are compared a
    /// pair at a time, the entry being padded to whole pairs ([`RecentWalks::remember`]): one
    /// loop step per pair (cachegrind, the overhead bench's `sample=1,free_stacks=0` row,
    /// eight frames: 66 -> 44 instructions for the comparison loop).
    #[inline(always)]
    fn replay(&self, depth: usize, rsp: usize, generation: u32) -> Option<(usize, u32)> {
        if self.rsp != rsp || self.depth as usize != depth || self.generation != generation {
            return None;
        }
        let len = self.len as usize;
        let word = |i: usize| {
            // SAFETY: the walk remembered here read this word, from this `rsp`, and checked it
            // lay inside this thread's stack (`remember` keeps only such walks, pads them with
            // their last word, and an entry is its thread's own), which stays mapped while the
            // thread runs.
            unsafe { *((rsp + self.cfas[i] as usize - 8) as *const usize) }
        };
        // Pairs (i, i + 1) from 0 while i < len: the last one ends at `len`, or just past an odd
        // `len`, on the padding. (The bound is below RECENT_FRAMES, so i + 1 is in the arrays.)
        let bound = len.min(RECENT_FRAMES - 1);
        let mut i = 0;
        while i < bound {
            if word(i) != self.ips[i] || word(i + 1) != self.ips[i + 1] {
                return None;
            }
            i += 2;
        }
        Some((len, self.id))
    }
}

#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
impl RecentWalks {
    pub(crate) const fn new() -> Self {
        const EMPTY: Walk = Walk {
            rsp: 0,
            generation: 0,
            depth: 0,
            len: 0,
            id: 0,
            ips: [0; RECENT_FRAMES],
            cfas: [0; RECENT_FRAMES],
        };
        let mut order = 0u64;
        let mut i = 0;
        while i < RECENT {
            order |= (i as u64) << (8 * i);
            i += 1;
        }
        RecentWalks {
            walks: [EMPTY; RECENT],
            order,
            #[cfg(test)]
            replays: 0,
        }
    }

    /// A remembered walk from `rsp` whose return addresses the stack still holds, as its
    /// frames' number and its stack's id. The frames themselves are not copied out: the id is
    /// what the tracker records, and [`frames_of`] gives them. The front entry is tried on its
    /// own first: a loop's captures replay it again and again, and it needs no promotion.
    #[inline]
    fn replay(&mut self, depth: usize, rsp: usize, generation: u32) -> Option<(usize, u32)> {
        let found = self.walks[self.at(0)].replay(depth, rsp, generation);
        let found = found.or_else(|| self.replay_behind(depth, rsp, generation));
        #[cfg(test)]
        if found.is_some() {
            self.replays += 1;
        }
        found
    }

    /// [`RecentWalks::replay`] past the front entry; the entry that replays moves to the front.
    /// (Inlined: alternating allocations and frees replay the second entry as often as the
    /// front one, and a call for it cost them more than the front's peeling saved.)
    #[inline(always)]
    fn replay_behind(&mut self, depth: usize, rsp: usize, generation: u32) -> Option<(usize, u32)> {
        for rank in 1..RECENT {
            if let Some(found) = self.walks[self.at(rank)].replay(depth, rsp, generation) {
                self.promote(rank);
                return Some(found);
            }
        }
        None
    }

    /// Remembers the walk from `rsp` (made at `generation`, for `depth` frames) that gave
    /// `frames`, of stack `id` (not 0), the CFAs of its frames minus `rsp` in `cfas`. An odd
    /// number of frames is padded with the last one, which a replay then compares twice.
    fn remember(
        &mut self,
        rsp: usize,
        depth: usize,
        generation: u32,
        frames: &[usize],
        cfas: &[u32],
        id: u32,
    ) {
        let len = frames.len();
        if len > RECENT_FRAMES || cfas.len() != len || cfas.contains(&u32::MAX) || id == 0 {
            return;
        }
        let i = self.at(RECENT - 1);
        let w = &mut self.walks[i];
        w.rsp = rsp;
        w.generation = generation;
        w.depth = depth as u32;
        w.len = len as u32;
        w.id = id;
        w.ips[..len].copy_from_slice(frames);
        w.cfas[..len].copy_from_slice(cfas);
        let padded = len.div_ceil(2) * 2;
        if let (Some(&ip), Some(&cfa)) = (frames.last(), cfas.last()) {
            w.ips[len..padded].fill(ip);
            w.cfas[len..padded].fill(cfa);
        }
        self.promote(RECENT - 1);
    }

    /// The entry at `rank` in [`RecentWalks::order`].
    #[inline]
    fn at(&self, rank: usize) -> usize {
        (self.order >> (8 * rank)) as usize % 256 % RECENT
    }

    /// Moves the entry at `rank` in [`RecentWalks::order`] to the front.
    #[inline]
    fn promote(&mut self, rank: usize) {
        let i = self.at(rank);
        let shift = 8 * rank as u32;
        let below = self.order & ((1u64 << shift) - 1);
        let above = self.order & (u64::MAX.checked_shl(shift + 8).unwrap_or(0));
        self.order = above | below << 8 | i as u64;
    }
}

/// The DWARF walk with each frame's CFA, as (ip, CFA) pairs in `buf` (at most `depth` pairs
/// and half of `buf`), and the index of the frame of the function that starts at `function`
/// (found among the first frames by the unwinder's own lookup of each frame's function).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
#[inline(never)]
fn capture_dwarf_with_cfas(
    buf: &mut [usize],
    depth: usize,
    function: usize,
) -> (&[(usize, usize)], Option<usize>) {
    let pairs_len = (buf.len() / 2).min(depth);
    // SAFETY: (usize, usize) is two usizes with usize alignment; the first `pairs_len` pairs
    // lie inside `buf`, which stays borrowed for the returned slice's life.
    let pairs: &mut [(usize, usize)] =
        unsafe { core::slice::from_raw_parts_mut(buf.as_mut_ptr().cast(), pairs_len) };
    let mut n = 0;
    let mut at = None;
    // SAFETY: as in `capture_dwarf`.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            let Some(pair) = pairs.get_mut(n).filter(|_| ip != 0) else {
                return false;
            };
            if at.is_none() && n < 16 && frame.symbol_address() as usize == function {
                at = Some(n);
            }
            *pair = (ip, frame.sp() as usize);
            n += 1;
            n < pairs_len
        })
    };
    (pairs.get(..n).unwrap_or_default(), at)
}

/// The DWARF walk (the `backtrace` crate) into `frames`, at most `depth` frames.
#[inline(never)]
fn capture_dwarf(frames: &mut [usize], depth: usize) -> usize {
    let depth = depth.min(frames.len());
    let mut n = 0;
    // SAFETY: `trace_unsynchronized` is unsafe only where unwinding needs a process-wide
    // lock (Windows' dbghelp); on Unix it calls `_Unwind_Backtrace`, which is thread-safe.
    // The callback only stores into our array.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            let ip = frame.ip() as usize;
            let Some(slot) = frames.get_mut(n).filter(|_| ip != 0 && n < depth) else {
                return false;
            };
            *slot = ip;
            n += 1;
            n < depth
        })
    };
    n
}

/// Walks the frame-pointer chain; 0 frames when not supported here.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn capture_frame_pointers(frames: &mut [usize], depth: usize, local: &Local) -> usize {
    let (low, high) = stack_bounds(local);
    if high == 0 {
        return 0;
    }
    let mut fp: usize;
    // SAFETY: reads the frame-pointer register; no memory is touched.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        core::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags));
        #[cfg(target_arch = "aarch64")]
        core::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags));
    }
    let mut n = 0;
    // Each frame record is [saved fp, return address]. Every step is checked to stay inside
    // this thread's stack and to move towards its base, so a frame without a frame pointer ends
    // the walk instead of sending it into arbitrary memory.
    while n < depth && fp >= low && fp + 16 <= high && fp % 8 == 0 {
        // SAFETY: `fp..fp+16` lies inside this thread's mapped stack (checked above).
        let (next, ret) = unsafe { (*(fp as *const usize), *((fp + 8) as *const usize)) };
        if ret == 0 {
            break;
        }
        frames[n] = ret;
        n += 1;
        if next <= fp {
            break;
        }
        fp = next;
    }
    n
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn capture_frame_pointers(_frames: &mut [usize], _depth: usize, _local: &Local) -> usize {
    0
}

/// The current thread's stack range, read once per thread; a `high` of 0 when unknown.
#[cfg(target_os = "linux")]
pub(crate) fn stack_bounds(local: &Local) -> (usize, usize) {
    // (0, 0) is "not read yet"; an unknown range is kept as (1, 0), so it is not read again.
    let cached = local.stack_bounds.get();
    if cached != (0, 0) {
        return cached;
    }
    // Read the mapping of the stack ourselves, without allocating, for every thread: glibc's
    // pthread_getattr_np holds the thread's lock while it allocates (stdio over
    // /proc/self/maps for the main thread, a realloc of the cpuset buffer for the others), so
    // a malloc from inside it that asked it again would wait on that lock for good. Rust's
    // runtime calls it for the main thread before `main`; the JVM for each thread it starts
    // (`java -version` under the debug library hung so).
    let marker = 0u8;
    let sp = core::hint::black_box(&marker) as *const u8 as usize;
    let bounds = match stack_from_maps(sp) {
        // A stack the program placed in this heap's own memory (pthread_attr_setstack over a
        // malloc'd block): the mapping is a whole arena, not the stack; unknown is safer.
        Some(_) if allocscope_core::heap::in_arena(sp) => (1, 0),
        Some(range) => range,
        None => (1, 0),
    };
    local.stack_bounds.set(bounds);
    bounds
}

/// The mapping of /proc/self/maps that contains `addr` (the calling thread's stack), read with
/// raw `open`/`read` into a stack buffer: no allocation.
#[cfg(target_os = "linux")]
fn stack_from_maps(addr: usize) -> Option<(usize, usize)> {
    // SAFETY: the path is NUL-terminated.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    let mut buf = [0u8; 4096];
    let mut len = 0usize;
    let mut found = None;
    loop {
        // SAFETY: reads into the unused tail of our stack buffer; fd is ours.
        let n = unsafe { libc::read(fd, buf[len..].as_mut_ptr().cast(), buf.len() - len) };
        if n <= 0 {
            break;
        }
        len += n as usize;
        // Parse every complete line; keep the partial last one for the next read.
        let mut start = 0;
        while let Some(nl) = buf[start..len].iter().position(|&b| b == b'\n') {
            if let Some((lo, hi)) = parse_range(&buf[start..start + nl]) {
                if lo <= addr && addr < hi {
                    found = Some((lo, hi));
                }
            }
            start += nl + 1;
        }
        buf.copy_within(start..len, 0);
        len -= start;
        if found.is_some() || len == buf.len() {
            break;
        }
    }
    // SAFETY: fd is open and ours.
    unsafe { libc::close(fd) };
    found
}

/// `lo-hi ...` at the start of a maps line, in hex.
#[cfg(target_os = "linux")]
fn parse_range(line: &[u8]) -> Option<(usize, usize)> {
    let end = line.iter().position(|&b| b == b' ')?;
    let dash = line[..end].iter().position(|&b| b == b'-')?;
    let hex = |s: &[u8]| {
        s.iter().try_fold(0usize, |acc, &b| {
            let d = (b as char).to_digit(16)? as usize;
            acc.checked_mul(16)?.checked_add(d)
        })
    };
    Some((hex(&line[..dash])?, hex(&line[dash + 1..end])?))
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn stack_bounds(_local: &Local) -> (usize, usize) {
    (0, 0)
}

/// A stack's hash: [`hash_step`] for each frame from [`HASH_SEED`], then [`hash_finish`]
/// (in steps, so that a walk can fold each frame in as it reads it).
fn hash_frames(frames: &[usize]) -> u64 {
    hash_finish(frames.iter().fold(HASH_SEED, |h, &f| hash_step(h, f)))
}

const HASH_SEED: u64 = 0xCBF2_9CE4_8422_2325;

#[inline(always)]
fn hash_step(h: u64, frame: usize) -> u64 {
    (h ^ frame as u64)
        .wrapping_mul(0x0000_0100_0000_01B3)
        .rotate_left(29)
}

#[inline(always)]
fn hash_finish(h: u64) -> u64 {
    h.wrapping_mul(0x9E37_79B9_7F4A_7C15) | (1 << 63)
}

/// The id of `frames`, adding it to the table the first time; 0 when the table is full or the
/// OS refuses memory: by hash, in the thread's cache, then the table. `local` (the thread's
/// cache) may be absent during thread teardown.
#[inline(never)]
pub(crate) fn intern(frames: &[usize], local: Option<&Local>) -> u32 {
    if frames.is_empty() {
        return 0;
    }
    let h = hash_frames(frames);
    if let Some(id) = known(h, frames, local) {
        return id;
    }
    let id = insert(h, frames);
    if let (Some(local), true) = (local, id != 0) {
        if let Ok(mut cache) = local.stack_cache.try_borrow_mut() {
            cache[cache_slot(h)] = (h, id);
        }
    }
    id
}

fn cache_slot(h: u64) -> usize {
    (h as usize >> 7) % STACK_CACHE
}

/// The id of `frames` (of hash `h`) if the table has it, from the thread's cache or the table
/// (which then fills the cache).
fn known(h: u64, frames: &[usize], local: Option<&Local>) -> Option<u32> {
    if let Some(local) = local {
        if let Ok(cache) = local.stack_cache.try_borrow() {
            let (ch, id) = cache[cache_slot(h)];
            // Equal 64-bit hashes are taken as equal stacks (a collision would mislabel one
            // sample; its odds are 2^-63 per pair).
            if ch == h {
                return Some(id);
            }
        }
    }
    let id = lookup(h, frames)?;
    if let Some(local) = local {
        if let Ok(mut cache) = local.stack_cache.try_borrow_mut() {
            cache[cache_slot(h)] = (h, id);
        }
    }
    Some(id)
}

/// The id of `frames` (of hash `h`) if the table has it, else 0.
#[cfg_attr(
    not(all(target_os = "linux", target_arch = "x86_64")),
    allow(dead_code)
)]
fn known_id(h: u64, frames: &[usize], local: &Local) -> u32 {
    if frames.is_empty() {
        return 0;
    }
    known(h, frames, Some(local)).unwrap_or(0)
}

fn index_slot(h: u64, probe: usize) -> usize {
    ((h as usize) >> ID_BITS).wrapping_add(probe) % INDEX_SLOTS
}

fn tag(h: u64) -> u64 {
    h & !ID_MASK
}

/// Lock-free lookup.
fn lookup(h: u64, frames: &[usize]) -> Option<u32> {
    // Acquire pairs with the Release in `insert`: a non-null index comes with its contents.
    let index = INDEX.load(Ordering::Acquire);
    if index.is_null() {
        return None;
    }
    for probe in 0..INDEX_SLOTS {
        // SAFETY: `index` points to INDEX_SLOTS slots that are never unmapped.
        let slot = unsafe { &*index.add(index_slot(h, probe)) };
        // Acquire pairs with the Release store in `insert`: the record is complete.
        let v = slot.load(Ordering::Acquire);
        if v == 0 {
            return None;
        }
        if tag(v) == tag(h) {
            let id = (v & ID_MASK) as u32;
            if frames_of(id) == Some(frames) {
                return Some(id);
            }
        }
    }
    None
}

#[cold]
fn insert(h: u64, frames: &[usize]) -> u32 {
    let mut arena = ARENA.lock();
    if INDEX.load(Ordering::Relaxed).is_null() {
        // First stack ever: map the index and the id array. Relaxed loads under the lock: the
        // lock orders us after any earlier initialiser.
        let index = os_memory::map(INDEX_SLOTS * 8);
        let records = os_memory::map((MAX_STACKS + 1) * 8);
        let (Some(index), Some(records)) = (index, records) else {
            return 0;
        };
        // Release: readers that see the pointer see the zeroed mapping behind it.
        RECORDS.store(records.as_ptr().cast(), Ordering::Release);
        INDEX.store(index.as_ptr().cast(), Ordering::Release);
    }
    // Another thread may have inserted it while we waited for the lock.
    if let Some(id) = lookup(h, frames) {
        return id;
    }
    // Relaxed: ids are assigned only under this lock.
    let id = COUNT.load(Ordering::Relaxed) + 1;
    if id as usize > MAX_STACKS {
        return 0;
    }
    let bytes = (2 + frames.len()) * 8;
    if arena.0 + bytes > arena.1 {
        let Some(chunk) = os_memory::map(CHUNK) else {
            return 0;
        };
        *arena = (chunk.as_ptr() as usize, chunk.as_ptr() as usize + CHUNK);
    }
    let record = arena.0 as *mut u64;
    arena.0 += bytes;
    // SAFETY: `record..record+bytes` lies in the current chunk (checked above), is 8-aligned
    // (chunks are page-aligned and every record is a whole number of u64), and belongs to no
    // one else.
    unsafe {
        record.write(h);
        record.add(1).write(frames.len() as u64);
        for (i, &f) in frames.iter().enumerate() {
            record.add(2 + i).write(f as u64);
        }
    }
    let records = RECORDS.load(Ordering::Relaxed);
    // SAFETY: `records` has MAX_STACKS + 1 slots and id <= MAX_STACKS.
    unsafe { &*records.add(id as usize) }.store(record, Ordering::Release);
    COUNT.store(id, Ordering::Relaxed);
    let index = INDEX.load(Ordering::Relaxed);
    for probe in 0..INDEX_SLOTS {
        // SAFETY: as in `lookup`.
        let slot = unsafe { &*index.add(index_slot(h, probe)) };
        // Relaxed: slots change only under this lock.
        if slot.load(Ordering::Relaxed) == 0 {
            // Release: the record written above is visible to whoever sees this slot.
            slot.store(tag(h) | u64::from(id), Ordering::Release);
            break;
        }
    }
    id
}

/// The frames of stack `id`, if it exists.
pub(crate) fn frames_of(id: u32) -> Option<&'static [usize]> {
    if id == 0 || id as usize > MAX_STACKS {
        return None;
    }
    // Acquire: pairs with the Release stores in `insert`.
    let records = RECORDS.load(Ordering::Acquire);
    if records.is_null() {
        return None;
    }
    // SAFETY: `records` has MAX_STACKS + 1 slots.
    let record = unsafe { &*records.add(id as usize) }.load(Ordering::Acquire);
    let record = NonNull::new(record)?;
    // SAFETY: a published record is [hash, len, len frames] and is never changed or unmapped;
    // usize and u64 have the same size on the 64-bit targets this crate supports (checked at
    // compile time below).
    unsafe {
        let len = *record.as_ptr().add(1) as usize;
        Some(core::slice::from_raw_parts(
            record.as_ptr().add(2).cast::<usize>(),
            len,
        ))
    }
}

const _: () = assert!(
    core::mem::size_of::<usize>() == 8,
    "the tracker needs a 64-bit target"
);

/// Distinct stacks recorded so far.
pub(crate) fn count() -> u32 {
    // Relaxed: a statistic.
    COUNT.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_frames_same_id_and_frames_come_back() {
        let a = [0x1000usize, 0x2000, 0x3000];
        let b = [0x1000usize, 0x2000, 0x3004];
        let ia = intern(&a, None);
        let ib = intern(&b, None);
        assert_ne!(ia, 0);
        assert_ne!(ia, ib);
        assert_eq!(intern(&a, None), ia);
        assert_eq!(frames_of(ia), Some(&a[..]));
        assert_eq!(frames_of(ib), Some(&b[..]));
        assert_eq!(frames_of(0), None);
    }

    #[inline(never)]
    fn capture_here() -> Captured {
        capture(32, Unwinder::Backtrace, None)
    }

    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    #[test]
    fn frame_sizes_are_learnt_once_and_a_second_size_makes_them_unstable() {
        use cfa::{learn, lookup, Size};
        let ip = 0x5555_0000_1234;
        assert_eq!(lookup(ip), Size::Unknown);
        learn(ip, Some(48));
        assert_eq!(lookup(ip), Size::Bytes(48));
        learn(ip, Some(48));
        assert_eq!(lookup(ip), Size::Bytes(48));
        learn(ip, Some(64));
        assert_eq!(lookup(ip), Size::Unstable);
        learn(ip, Some(48));
        assert_eq!(lookup(ip), Size::Unstable, "unstable for good");
        let bottom = 0x5555_0000_9876;
        learn(bottom, None);
        assert_eq!(lookup(bottom), Size::End);
        // A size that is no frame size (a signal frame's) is unstable at once.
        let odd = 0x5555_0000_4444;
        learn(odd, Some(1));
        assert_eq!(lookup(odd), Size::Unstable);
        // Another address in the same slot is not mistaken for this one.
        assert_eq!(lookup(ip + 0x1_0000_0000), Size::Unknown);
    }

    /// Captures by one thread that reach the default unwinder's periodic DWARF check and go
    /// `more` beyond it (`more` where there is no such check).
    fn past_a_recheck(more: usize) -> usize {
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        return cfa::RECHECK as usize + more;
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        return more;
    }

    /// The frames of the stack here, by its id from [`capture_id`], as the tracker records it
    /// (a walk is remembered for replay once its stack is in the table).
    #[inline(never)]
    fn capture_here_auto(local: &Local) -> Vec<usize> {
        let id = capture_id(64, Unwinder::Auto, Some(local));
        assert_ne!(id, 0);
        frames_of(id).expect("an id in the table").to_vec()
    }

    #[test]
    fn the_default_unwinder_sees_the_caller_with_or_without_frame_pointers() {
        let local = Local::new();
        // Enough captures to reach a verdict and to pass the periodic check after it (replays
        // in between), their frames named around both.
        let captures = past_a_recheck(16);
        let mut first = None;
        for i in 0..captures {
            let frames = capture_here_auto(&local);
            // The same call site, the same frames, whichever walk or replay gave them.
            assert_eq!(first.get_or_insert_with(|| frames.clone()), &frames);
            if i >= 16 && i + 16 < captures {
                continue;
            }
            let names = names_of(&frames);
            assert!(names.contains("capture_here_auto"), "{names}");
        }
        // The same frames every time, after enough agreeing checks the walk is trusted.
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        assert!(cfa::trusted());
    }

    #[test]
    fn capture_sees_the_caller() {
        let c = capture_here();
        assert!(c.frames().len() > 3);
        let mut names = String::new();
        for &ip in c.frames() {
            backtrace::resolve((ip - 1) as *mut _, |s| {
                if let Some(n) = s.name() {
                    names.push_str(&format!("{n:#}\n"));
                }
            });
        }
        assert!(names.contains("capture_here"), "{names}");
    }

    #[test]
    fn a_remembered_walk_is_replayed_only_while_the_stack_holds_its_return_addresses() {
        // A stand-in for a stack: the walk from `rsp` read return addresses at the CFAs
        // `rsp + 16`, `rsp + 48` and `rsp + 64` (each just below its CFA).
        // Every access goes through `base`, as the replay's reads go through `rsp`.
        let mut stack = [0usize; 8];
        let base = stack.as_mut_ptr();
        let rsp = base as usize;
        let set = |word: usize, value: usize| {
            assert!(word < 8);
            // SAFETY: `word` is inside `stack`, which outlives the closure.
            unsafe { base.add(word).write(value) }
        };
        let (cfas, ips) = (
            [16u32, 48, 64],
            [0x5555_0000_1000usize, 0x5555_0000_2000, 0x5555_0000_3000],
        );
        for (&c, &ip) in cfas.iter().zip(&ips) {
            set(c as usize / 8 - 1, ip);
        }
        let mut recent = RecentWalks::new();
        recent.remember(rsp, 32, 7, &ips, &cfas, 42);
        assert_eq!(recent.replay(32, rsp, 7), Some((3, 42)));
        // Another depth, another generation of the frame-size table, another stack pointer:
        // not this walk.
        assert_eq!(recent.replay(16, rsp, 7), None);
        assert_eq!(recent.replay(32, rsp, 8), None);
        assert_eq!(recent.replay(32, rsp + 8, 7), None);
        // The outermost frame returned and another call put a different return address there.
        set(7, 0x5555_0000_3004);
        assert_eq!(recent.replay(32, rsp, 7), None);
        set(7, ips[2]);
        // Words between the return addresses (locals) are not part of the walk.
        set(0, 0xDEAD);
        assert_eq!(recent.replay(32, rsp, 7), Some((3, 42)));
        // A second walk from the same place, parting at the outermost frame: each replays
        // with its own id while the stack holds its return address.
        let other = [ips[0], ips[1], 0x5555_0000_3004];
        recent.remember(rsp, 32, 7, &other, &cfas, 43);
        assert_eq!(recent.replay(32, rsp, 7), Some((3, 42)));
        set(7, other[2]);
        assert_eq!(recent.replay(32, rsp, 7), Some((3, 43)));
        // A walk without an id (a full table) is not remembered.
        let third = [ips[0], ips[1], 0x5555_0000_3008];
        recent.remember(rsp, 32, 7, &third, &cfas, 0);
        set(7, third[2]);
        assert_eq!(recent.replay(32, rsp, 7), None);
    }

    #[test]
    fn recent_walks_keep_the_most_recently_used_and_replace_the_oldest() {
        let stacks: Vec<[usize; 2]> = (0..=RECENT)
            .map(|i| [0, 0x5555_0000_1000 + i * 16])
            .collect();
        let mut recent = RecentWalks::new();
        for s in &stacks[..RECENT] {
            recent.remember(s.as_ptr() as usize, 8, 0, &s[1..], &[16], 1);
        }
        let replays = |recent: &mut RecentWalks, s: &[usize; 2]| {
            recent.replay(8, s.as_ptr() as usize, 0).is_some()
        };
        // Use the first one again: it becomes the newest, and the second the oldest.
        assert!(replays(&mut recent, &stacks[0]));
        let last = &stacks[RECENT];
        recent.remember(last.as_ptr() as usize, 8, 0, &last[1..], &[16], 1);
        assert!(replays(&mut recent, &stacks[0]));
        assert!(!replays(&mut recent, &stacks[1]), "replaced");
        for s in stacks[2..].iter() {
            assert!(replays(&mut recent, s));
        }
    }

    #[inline(never)]
    fn through_left(local: &Local) -> Vec<usize> {
        // (Bodies that differ, so that the two are not merged into one function.)
        core::hint::black_box(1u32);
        core::hint::black_box(capture_here_auto(local))
    }

    #[inline(never)]
    fn through_right(local: &Local) -> Vec<usize> {
        core::hint::black_box(2u32);
        core::hint::black_box(capture_here_auto(local))
    }

    fn names_of(frames: &[usize]) -> String {
        let mut names = String::new();
        for &ip in frames {
            backtrace::resolve((ip - 1) as *mut _, |s| {
                if let Some(n) = s.name() {
                    names.push_str(&format!("{n:#}\n"));
                }
            });
        }
        names
    }

    #[test]
    #[cfg_attr(
        windows,
        ignore = "under Wine the stack differs from this test's (open)"
    )]
    fn two_callers_at_the_same_depth_keep_their_own_stacks() {
        // Both paths reach `capture_into` with the same stack pointer (same frames, sizes
        // and depth) and part only at the caller's return address: a replay must tell them
        // apart, and agree with DWARF.
        let local = Local::new();
        for i in 0..4 * 64 {
            let (frames, mine, other) = if i % 2 == 0 {
                (through_left(&local), "through_left", "through_right")
            } else {
                (through_right(&local), "through_right", "through_left")
            };
            let names = names_of(&frames);
            assert!(names.contains(mine) && !names.contains(other), "{names}");
            let mut dwarf = [0usize; 64];
            let n = capture_into(&mut dwarf, 64, Unwinder::Backtrace, None);
            // The DWARF walk from here sees this function's frames on: the captured stack's
            // frames from the same function on are the same.
            let ours = frames
                .iter()
                .position(|f| dwarf[..n].contains(f))
                .expect("a frame in common");
            let theirs = dwarf[..n].iter().position(|f| *f == frames[ours]).unwrap();
            assert_eq!(&frames[ours..], &dwarf[theirs..n]);
        }
    }

    /// Captures from one of two call sites in one function: the same stack pointer at both,
    /// the stacks parting only at the return address into this function.
    #[inline(never)]
    fn capture_at(local: &Local, left: bool) -> Vec<usize> {
        // (The constants keep the two calls apart: no call is hoisted out of the branches.)
        if core::hint::black_box(left) {
            core::hint::black_box(1u32);
            let frames = capture_here_auto(local);
            core::hint::black_box(3u32);
            frames
        } else {
            core::hint::black_box(2u32);
            let frames = capture_here_auto(local);
            core::hint::black_box(4u32);
            frames
        }
    }

    #[test]
    #[cfg_attr(
        windows,
        ignore = "under Wine the stack differs from this test's (open)"
    )]
    fn two_call_sites_with_one_stack_pointer_are_told_apart() {
        let local = Local::new();
        let mut sites = [None, None];
        for i in 0..256 {
            let left = i % 2 == 0;
            let frames = capture_at(&local, left);
            // frames[0] returns into `capture_here_auto`, frames[1] into `capture_at`.
            let site = frames[1];
            assert_eq!(
                *sites[usize::from(left)].get_or_insert(site),
                site,
                "capture {i}"
            );
        }
        assert_ne!(sites[0], sites[1]);
    }

    /// The id [`capture_id`] gives at one of two call sites in one function (the same stack
    /// pointer at both, the stacks parting only at the return address into this function),
    /// and the DWARF walk's frames from a third call site here.
    #[inline(never)]
    fn id_at(local: &Local, left: bool) -> (u32, Vec<usize>) {
        // (The constants keep the two calls apart, as in `capture_at`.)
        let id = if core::hint::black_box(left) {
            core::hint::black_box(1u32);
            let id = capture_id(64, Unwinder::Auto, Some(local));
            core::hint::black_box(3u32);
            id
        } else {
            core::hint::black_box(2u32);
            let id = capture_id(64, Unwinder::Auto, Some(local));
            core::hint::black_box(4u32);
            id
        };
        let mut dwarf = [0usize; 64];
        let n = capture_into(&mut dwarf, 64, Unwinder::Backtrace, None);
        (id, dwarf[..n].to_vec())
    }

    #[test]
    #[cfg_attr(
        windows,
        ignore = "under Wine the stack differs from this test's (open)"
    )]
    fn capture_id_gives_each_call_site_its_own_id_and_the_ids_frames_are_the_stacks() {
        let local = Local::new();
        // Past the verdict and a periodic DWARF check, replays in between.
        let captures = past_a_recheck(64);
        let mut ids = [0u32; 2];
        for i in 0..captures {
            let left = i % 2 == 0;
            let (id, dwarf) = id_at(&local, left);
            assert_ne!(id, 0);
            // The same call site, the same id, whichever walk, check or replay gave it.
            let site = &mut ids[usize::from(left)];
            if *site == 0 {
                *site = id;
            }
            assert_eq!(*site, id, "capture {i}");
            // The id's frames are the stack's: from the return address into `id_at` on, the
            // frames a fresh DWARF walk from `id_at` gives (whose own first frame in `id_at`
            // is its own call site's).
            let frames = frames_of(id).expect("an id in the table");
            let at = dwarf
                .iter()
                .position(|f| *f == frames[1])
                .expect("the caller's frame in the DWARF walk");
            assert_eq!(&frames[1..], &dwarf[at..], "capture {i}");
            if i < 2 || i + 2 >= captures {
                let first = names_of(&frames[..1]);
                assert!(first.contains("id_at"), "{first}");
                let previous = names_of(&dwarf[at - 1..at]);
                assert!(previous.contains("id_at"), "{previous}");
            }
        }
        assert_ne!(ids[0], ids[1], "two call sites, two stacks");
        // Most of those ids came from replays (the ids above are checked, not the mechanism).
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            let replays = local.recent_walks.borrow().replays as usize;
            assert!(replays > captures / 2, "{replays} replays in {captures}");
        }
    }
}
