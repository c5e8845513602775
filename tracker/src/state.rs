//! One tracker's run-time state (created at its first allocation), the process-wide registry
//! of states that the exit hook and the fault handler walk, and the paths shared by every kind
//! of detection: deciding what to sample, raising a report, scanning, checking leaks.
//!
//! May touch: every detection module ([`crate::block_table`], [`crate::guard`],
//! [`crate::quarantine`], [`crate::canary`], [`crate::leaks`]), [`crate::stream`],
//! [`crate::report`]. Never the inner allocator: freeing memory is the tracker's job
//! ([`crate::tracker`]).

use std::sync::OnceLock;
use std::time::Duration;

use allocscope_core::sync::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::block_table::{flag, state, BlockInfo, BlockTable};
use crate::canary;
use crate::guard::GuardPool;
use crate::leaks;
use crate::options::{GuardRate, LeakCheck, Options, Unwinder};
use crate::quarantine::Quarantine;
use crate::report::{print_line, print_raw, Detection, Facts, Report};
use crate::snapshot::{self, TrackerFigures};
use crate::spin::SpinLock;
use crate::stacks;
use crate::stream::Stream;
use crate::thread_state::{thread_id, with_hot, Local};
use crate::trace_format::ReportKind;

/// Reports kept for [`crate::Tracker::take_reports`]; older ones are dropped from the log (they
/// were printed and streamed already).
const LOG_LIMIT: usize = 1024;

/// Most damaged blocks one scan collects before reporting (no allocation under table locks).
const SCAN_BATCH: usize = 64;

/// A tracker's figures, for programs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Blocks the program holds.
    pub live_blocks: usize,
    /// Bytes the program holds (requested sizes).
    pub live_bytes: usize,
    /// Bytes the tracker uses for itself: its tables and mappings, its internal blocks, red
    /// zones are not included.
    pub overhead_bytes: usize,
    /// Bytes of freed blocks waiting in quarantine.
    pub quarantine_bytes: usize,
    /// Distinct stacks recorded (process-wide).
    pub stacks: usize,
    /// Events dropped because the trace writer fell behind.
    pub dropped_events: u64,
}

/// What the default path may take for granted, decided once from the options: the short
/// allocation and free in [`crate::tracker`] (`allocate_fast`, `deallocate_fast`) run only
/// when nothing they skip is wanted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FastPath {
    /// Allocations may take the short path: no red zones, no event stream, guard pages not for
    /// every one (an allocation whose sample fires takes the sampled short path).
    pub(crate) alloc: bool,
    /// Frees may take the short path: as for `alloc`, and no quarantine.
    pub(crate) free: bool,
    /// Stacks are sampled by the byte countdown (with `sample=1` it stays at 0: every
    /// allocation's fires).
    pub(crate) sample: bool,
    /// Guard pages are chosen by the allocation countdown (1 in N) for allocations of fewer
    /// than `guard_below` bytes (aligned to at most `max_align`); 0 when they are not (no
    /// pool, or a pool for every allocation), so the default path tests one bound.
    pub(crate) guard_below: usize,
    /// The largest alignment the default path serves: a page, the guard pool's limit, so that
    /// every allocation it serves counts for the guard countdown by its size alone.
    pub(crate) max_align: usize,
    /// The shadow map ([`crate::shadow`]), or `None` when every block goes to the table: the
    /// shadow needs the core heap as the inner allocator, no red zones and no quarantine; it is
    /// used on Linux (on Windows its reservations would be committed memory).
    pub(crate) shadow: Option<crate::shadow::Shadow>,
    /// The inner allocator is the core heap itself ([`allocscope_core::heap`]), whose
    /// `next_block` hint says which block the next allocation of a size will be.
    pub(crate) core_heap: bool,
}

impl FastPath {
    fn new(options: &Options, guard: Option<&GuardPool>, arena_heap: bool) -> Self {
        let alloc = options.canary_bytes == 0
            && !options.streams()
            && !matches!(options.guard, GuardRate::All);
        let free = alloc && options.quarantine_bytes == 0;
        // Not `free`: sampled blocks and those of a traced program are shadow blocks too, made
        // and freed by the general path; red zones and the quarantine keep theirs in the table.
        let shadow = options.canary_bytes == 0
            && options.quarantine_bytes == 0
            && arena_heap
            && cfg!(target_os = "linux")
            && options.shadow;
        FastPath {
            alloc,
            free,
            shadow: if shadow {
                crate::shadow::Shadow::new()
            } else {
                None
            },
            sample: options.sample_bytes >= 1,
            guard_below: match (guard, options.guard) {
                (Some(pool), GuardRate::OneIn(_)) => pool.max_size().saturating_add(1),
                _ => 0,
            },
            max_align: crate::os_memory::page_size(),
            core_heap: arena_heap,
        }
    }
}

pub(crate) struct State {
    pub(crate) options: Options,
    pub(crate) fast: FastPath,
    pub(crate) table: BlockTable,
    pub(crate) guard: Option<GuardPool>,
    pub(crate) quarantine: Option<Quarantine>,
    stream: OnceLock<&'static Stream>,
    log: SpinLock<Vec<Report>>,
    /// Reports raised, per kind (ReportKind::ALL order). Relaxed: statistics.
    counts: [AtomicU64; 7],
    /// Set once the exit hook ran for this state.
    exited: AtomicBool,
}

impl State {
    /// Builds the state. Runs with the re-entrancy flag set. The table is created first so that
    /// what the rest of initialisation allocates is already recorded (as internal blocks).
    /// `arena_heap`: the inner allocator hands out the core heap's arena blocks (the shadow may
    /// be used, see [`FastPath::shadow`]).
    pub(crate) fn create(options: Options, arena_heap: bool) -> Result<&'static State, String> {
        let guard = match options.guard {
            GuardRate::Off => None,
            _ => Some(
                GuardPool::new(
                    options.guard_slots,
                    options.guard_max_size,
                    options.guard_underflow_share,
                )
                .ok_or("cannot reserve the guard-page pool (guard_slots too large?)")?,
            ),
        };
        let quarantine =
            (options.quarantine_bytes > 0).then(|| Quarantine::new(options.quarantine_bytes));
        let fast = FastPath::new(&options, guard.as_ref(), arena_heap);
        let state: &'static State = Box::leak(Box::new(State {
            fast,
            options,
            table: BlockTable::new(),
            guard,
            quarantine,
            stream: OnceLock::new(),
            log: SpinLock::new(Vec::new()),
            counts: Default::default(),
            exited: AtomicBool::new(false),
        }));
        if state.guard.is_some() {
            crate::fault::install();
        }
        Ok(state)
    }

    /// Starts the event stream (when tracing). Called once the state is published, so that
    /// what starting it allocates — the writer thread's start-up box, which that thread frees
    /// itself — is recorded as the tracker's own (a free of it is then no invalid free).
    pub(crate) fn start_stream(&'static self) -> Result<(), String> {
        if self.options.streams() {
            let snapshot = Box::new(move |time_ns| snapshot::take(time_ns, self.figures()));
            let stream = Stream::start(&self.options, snapshot)?;
            let _ = self.stream.set(stream);
        }
        Ok(())
    }

    /// The event stream, when tracing to a file or socket.
    #[inline]
    pub(crate) fn stream(&self) -> Option<&'static Stream> {
        self.stream.get().copied()
    }

    /// Whether to record the stack of an allocation of `size` bytes (jemalloc-style byte
    /// countdown with exponentially distributed intervals).
    #[inline]
    pub(crate) fn should_sample(&self, local: Option<&Local>, size: usize) -> bool {
        match self.options.sample_bytes {
            0 => false,
            1 => true,
            mean => {
                let Some(l) = local else { return false };
                with_hot(|h| {
                    let left = h.sample_countdown.get() - size as i64;
                    if left > 0 {
                        h.sample_countdown.set(left);
                        return false;
                    }
                    let next = -(l.next_unit().ln()) * mean as f64;
                    h.sample_countdown.set(next as i64 + 1);
                    true
                })
                .unwrap_or(false)
            }
        }
    }

    /// Makes the thread's next [`State::should_sample`] fire: a sample that fired for a resize
    /// that cannot carry it (a block moved by the general allocation instead) passes to that
    /// allocation.
    pub(crate) fn rearm_sample(&self) {
        with_hot(|h| h.sample_countdown.set(0));
    }

    /// Whether to place this allocation in the guard pool.
    #[inline]
    pub(crate) fn should_guard(&self, local: Option<&Local>, size: usize, align: usize) -> bool {
        let Some(pool) = &self.guard else {
            return false;
        };
        if size > pool.max_size() || align > crate::os_memory::page_size() {
            return false;
        }
        match self.options.guard {
            GuardRate::Off => false,
            GuardRate::All => true,
            GuardRate::OneIn(n) => {
                let Some(l) = local else { return false };
                with_hot(|h| {
                    let left = h.guard_countdown.get();
                    if left > 1 {
                        h.guard_countdown.set(left - 1);
                        return false;
                    }
                    // Uniform in [1, 2n-1]: mean n, and no fixed period a program could fall
                    // into.
                    let next = 1 + (l.next_random() % (2 * u64::from(n) - 1)) as u32;
                    h.guard_countdown.set(next);
                    left == 1
                })
                .unwrap_or(false)
            }
        }
    }

    /// The id of the current stack (captured with the options' unwinder and depth). Inline:
    /// the capture itself is one never-inlined function ([`stacks::capture_id`]'s).
    #[inline]
    pub(crate) fn stack_here(&self, local: Option<&Local>) -> u32 {
        stacks::capture_id(self.options.stack_depth, self.options.unwinder, local)
    }

    /// Captures the stack for a report (always with the DWARF unwinder: reports must be right
    /// even in code without frame pointers).
    pub(crate) fn report_stack(&self, local: Option<&Local>) -> u32 {
        let captured = stacks::capture(self.options.stack_depth, Unwinder::Backtrace, None);
        stacks::intern(captured.frames(), local)
    }

    /// Renders, prints, streams and logs a report; aborts after it when asked to.
    #[cold]
    #[inline(never)]
    pub(crate) fn raise(&self, mut facts: Facts, local: Option<&Local>) {
        if facts.access_stack == 0 && facts.kind != ReportKind::MemoryLeak {
            facts.access_stack = self.report_stack(local);
        }
        let kind = facts.kind;
        let report = facts.into_report();
        let index = ReportKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        // Relaxed: statistics.
        self.counts[index].fetch_add(1, Ordering::Relaxed);
        if self.options.print_reports {
            print_raw(&report.text);
        }
        if let Some(stream) = self.stream() {
            stream.send_report(report.to_record(stream.now()));
        }
        {
            let mut log = self.log.lock();
            if log.len() >= LOG_LIMIT {
                log.remove(0);
            }
            log.push(report);
        }
        if self.options.halt_on_error && kind != ReportKind::MemoryLeak {
            if let Some(stream) = self.stream() {
                stream.finish(local, Duration::from_secs(2));
            }
            print_raw("allocscope: halting on the first error (halt_on_error=1)\n");
            std::process::abort();
        }
    }

    /// Facts about block `ptr` from its table entry.
    pub(crate) fn facts_for(
        &self,
        kind: ReportKind,
        detection: Detection,
        address: usize,
        ptr: usize,
        info: &BlockInfo,
    ) -> Facts {
        let mut f = Facts::new(kind, detection, address, thread_id());
        f.block = Some((ptr, info.size));
        f.alloc_stack = info.alloc_stack;
        f.alloc_thread = info.alloc_thread;
        f.free_stack = info.free_stack;
        f.free_thread = info.free_thread;
        f
    }

    /// The first damaged red-zone byte of a live block, as (kind, address).
    ///
    /// # Safety
    /// `ptr` is a live block with red zones of this state, with entry `info`, and nobody frees
    /// it meanwhile.
    pub(crate) unsafe fn canary_damage(
        &self,
        ptr: usize,
        info: &BlockInfo,
    ) -> Option<(ReportKind, usize)> {
        if info.flags & flag::CANARY == 0 {
            return None;
        }
        let canary = self.options.canary_bytes;
        let left = canary::left_filled(canary, info.align());
        // SAFETY: the caller guarantees the block and its red zones are ours to read.
        unsafe {
            if let Some(a) = canary::first_damaged(ptr + info.size, canary) {
                return Some((ReportKind::HeapBufferOverflow, a));
            }
            canary::last_damaged(ptr - left, left).map(|a| (ReportKind::HeapBufferUnderflow, a))
        }
    }

    /// Checks every live block's red zones and every quarantined block's poison; raises a
    /// report for each damaged block and returns them.
    pub(crate) fn scan(&self, local: Option<&Local>) -> Vec<Report> {
        let before = self.log_len();
        let mut found: [(usize, BlockInfo, ReportKind, usize); SCAN_BATCH] =
            [(0, BlockInfo::default(), ReportKind::HeapBufferOverflow, 0); SCAN_BATCH];
        let mut n = 0;
        // Only blocks with red zones have anything to check, and none has without the option.
        if self.options.canary_bytes > 0 {
            self.table.for_each(&mut |ptr, info| {
                if n < SCAN_BATCH && info.state == state::LIVE && !info.is_internal() {
                    // SAFETY: the block is live and its shard lock is held, so it cannot be
                    // freed while we read it.
                    if let Some((kind, addr)) = unsafe { self.canary_damage(ptr, info) } {
                        found[n] = (ptr, *info, kind, addr);
                        n += 1;
                    }
                }
            });
        }
        if let Some(q) = &self.quarantine {
            q.for_each(&mut |held| {
                // SAFETY: a held block's memory stays ours until it leaves the quarantine, which
                // cannot happen while its lock is held.
                if let Some(addr) = unsafe { canary::first_unpoisoned(held.ptr, held.size) } {
                    if n < SCAN_BATCH {
                        found[n] = (
                            held.ptr,
                            BlockInfo::default(),
                            ReportKind::UseAfterFree,
                            addr,
                        );
                        n += 1;
                    }
                }
            });
        }
        for &(ptr, info, kind, addr) in &found[..n] {
            let info = if kind == ReportKind::UseAfterFree {
                self.table.get(ptr).unwrap_or(info)
            } else {
                info
            };
            let facts = self.facts_for(kind, Detection::Scan, addr, ptr, &info);
            self.raise(facts, local);
        }
        self.reports_since(before)
    }

    /// Runs the leak check and raises one report per leak group.
    pub(crate) fn check_leaks(
        &self,
        mode: LeakCheck,
        local: Option<&Local>,
        caller_sp: usize,
    ) -> Vec<Report> {
        let before = self.log_len();
        let (groups, (blocks, bytes)) = leaks::find(self, mode, caller_sp);
        let any = !groups.is_empty();
        for group in groups {
            let mut f = Facts::new(
                ReportKind::MemoryLeak,
                Detection::LeakCheck {
                    direct: group.direct,
                },
                group.first,
                thread_id(),
            );
            f.block = Some((group.first, group.first_size));
            f.alloc_stack = group.stack;
            f.leaked = Some((group.blocks, group.bytes));
            self.raise(f, local);
        }
        // Said only beside leaks of this process's own, not at every child's exit: they are
        // the parent's blocks, which its own check judges.
        if blocks > 0 && any && self.options.print_reports {
            print_line(&format!(
                "allocscope: the leak check leaves out {bytes} byte(s) in {blocks} allocation(s) \
                 of the threads the parent process had when it forked this one (they do not \
                 run here)"
            ));
        }
        self.reports_since(before)
    }

    /// Takes the report log's lock for `fork` ([`crate::fork`]): a report being logged by
    /// another thread at the fork would leave it held in the child for good.
    #[cfg(unix)]
    pub(crate) fn hold_log_for_fork(&self) {
        self.log.hold();
    }

    /// Releases the lock [`State::hold_log_for_fork`] took.
    ///
    /// # Safety
    /// This thread (or, in the child, the thread that forked) took it there, and releases it
    /// once.
    #[cfg(unix)]
    pub(crate) unsafe fn release_log_after_fork(&self) {
        // SAFETY: the caller's contract.
        unsafe { self.log.release_held() };
    }

    fn log_len(&self) -> usize {
        self.log.lock().len()
    }

    fn reports_since(&self, before: usize) -> Vec<Report> {
        let log = self.log.lock();
        log.get(before.min(log.len())..)
            .map(<[Report]>::to_vec)
            .unwrap_or_default()
    }

    /// Takes the reports logged so far.
    pub(crate) fn take_reports(&self) -> Vec<Report> {
        std::mem::take(&mut *self.log.lock())
    }

    /// Reports raised so far of `kind` (including ones no longer in the log).
    pub(crate) fn count(&self, kind: ReportKind) -> u64 {
        let index = ReportKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        // Relaxed: statistics.
        self.counts[index].load(Ordering::Relaxed)
    }

    pub(crate) fn figures(&self) -> TrackerFigures {
        let s = self.stats();
        TrackerFigures {
            live_blocks: s.live_blocks as u64,
            live_bytes: s.live_bytes as u64,
            overhead_bytes: s.overhead_bytes as u64,
        }
    }

    pub(crate) fn stats(&self) -> TrackerStats {
        let t = self.table.totals();
        // Shadow blocks are counted where the default paths are off (an event stream, whose
        // snapshots read the figures every second: no walk of every block there), walked where
        // they are on (no counter on the default path).
        let (shadow_blocks, shadow_bytes) = match self.fast.shadow {
            Some(shadow) if self.fast.alloc => shadow.live_figures(),
            _ => (0, 0),
        };
        TrackerStats {
            live_blocks: t.live_blocks + shadow_blocks,
            live_bytes: t.live_bytes + shadow_bytes,
            overhead_bytes: crate::os_memory::mapped_bytes() + t.internal_bytes,
            quarantine_bytes: self.quarantine.as_ref().map_or(0, Quarantine::bytes),
            stacks: stacks::count() as usize,
            dropped_events: self.stream().map_or(0, |s| s.dropped().events),
        }
    }

    /// The exit hook's work for this state: final scan, leak check, end of the trace. Runs once.
    pub(crate) fn at_exit(&self, local: Option<&Local>, caller_sp: usize) {
        // Relaxed: the registry walk that calls this runs on one thread (the exiting one).
        if self.exited.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.options.check_at_exit {
            self.scan(local);
        }
        if self.options.leak_check != LeakCheck::Off {
            self.check_leaks(self.options.leak_check, local, caller_sp);
        }
        if let Some(stream) = self.stream() {
            stream.finish(local, Duration::from_secs(5));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------

/// Most trackers alive at once in one process.
const MAX_STATES: usize = 64;

/// Live states (null = free entry). Release on publication / Acquire on reading, so a reader
/// sees the whole state.
static REGISTRY: [AtomicPtr<State>; MAX_STATES] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_STATES];

/// Set once the exit hook is registered.
static EXIT_HOOK: AtomicBool = AtomicBool::new(false);

/// Adds a state to the registry; `false` when it is full (the state then has no exit hook and
/// no fault handling, but works otherwise).
pub(crate) fn register(state: &'static State) -> bool {
    // Relaxed: a once-flag; registering the hook twice would only run it twice, and `at_exit`
    // is idempotent.
    if !EXIT_HOOK.swap(true, Ordering::Relaxed) {
        // SAFETY: `exit_hook` is an `extern "C" fn()` that never unwinds.
        unsafe { libc::atexit(exit_hook) };
        #[cfg(unix)]
        {
            crate::fork::install();
            crate::report::keep_stderr();
        }
    }
    let ptr = state as *const State as *mut State;
    REGISTRY.iter().any(|slot| {
        // Release: publishes the fully built state to readers of the registry.
        slot.compare_exchange(
            core::ptr::null_mut(),
            ptr,
            Ordering::Release,
            Ordering::Relaxed,
        )
        .is_ok()
    })
}

/// Removes a state (its tracker was dropped).
pub(crate) fn unregister(state: &'static State) {
    let ptr = state as *const State as *mut State;
    for slot in &REGISTRY {
        // Relaxed: the state itself stays valid forever (it is leaked), so no ordering is
        // needed for readers racing with the removal.
        let _ = slot.compare_exchange(
            ptr,
            core::ptr::null_mut(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// Calls `f` on every registered state.
pub(crate) fn for_each_state(mut f: impl FnMut(&'static State)) {
    for slot in &REGISTRY {
        // Acquire: pairs with the Release in `register`.
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: registered states are leaked (`'static`) and fully built.
            f(unsafe { &*p });
        }
    }
}

extern "C" fn exit_hook() {
    let marker = 0u8;
    let sp = &marker as *const u8 as usize;
    let _busy = crate::thread_state::enter_always();
    if crate::thread_state::with_local(|local| for_each_state(|s| s.at_exit(Some(local), sp)))
        .is_none()
    {
        for_each_state(|s| s.at_exit(None, sp));
    }
}
