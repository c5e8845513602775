//! Heaps and threads: which heap a thread uses, where heaps come from, and what happens to a
//! heap when its thread exits.
//!
//! * The thread-local slot holds a pointer to the thread's heap, or to the empty heap before the
//!   first allocation or remote free. It is a `const`-initialised `Cell` with no destructor, so
//!   reading it is a plain TLS load.
//! * Heaps are carved from OS memory and never freed: the registry of all heaps is append-only
//!   (statistics walk it) and pointers to heaps stay valid forever (remote freers rely on it).
//! * At thread exit (a `pthread_key` destructor on Unix, a thread-local guard elsewhere) the
//!   heap pushes the remote frees it holds back, gives back what it can and joins the idle
//!   pool; the slot then holds the exited heap, so a free later in the thread's teardown is
//!   pushed at once instead of attaching a heap that might never be detached. A new thread
//!   takes an idle heap — pages, live blocks and all — before making a new one; a running
//!   thread that needs a new segment first adopts the segments of an idle heap. Nothing is lost
//!   when threads come and go.
//! * The idle pool is guarded by a spin lock: taken only at thread start and exit and when
//!   adopting, never while allocating from the OS or calling out, and released around `fork`.
//!
//! May touch: [`crate::heap`], [`crate::os`], `libc` (pthread keys, atfork).

#[cfg(not(initial_exec_tls))]
use core::cell::Cell;
use core::ptr::null_mut;

#[cfg(not(initial_exec_tls))]
use crate::heap::empty_heap;
use crate::heap::{exited_heap, owns_nothing, Heap};
use crate::os::{Os, SystemOs};
use crate::sync::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

#[cfg(not(initial_exec_tls))]
thread_local! {
    static HEAP: Cell<*mut Heap> = const { Cell::new(empty_heap()) };
}

/// The calling thread's heap, or the empty heap.
#[cfg(not(initial_exec_tls))]
#[inline(always)]
pub(crate) fn current() -> *mut Heap {
    HEAP.try_with(Cell::get).unwrap_or(empty_heap())
}

/// Sets the calling thread's heap. `false` when thread-locals are gone (thread teardown).
#[cfg(not(initial_exec_tls))]
fn set_current(heap: *mut Heap) -> bool {
    HEAP.try_with(|h| h.set(heap)).is_ok()
}

/// The heap slot for the preload library on x86-64 Linux, in the initial-exec TLS model.
///
/// A shared library's `thread_local!` uses the general-dynamic model: every access calls
/// `__tls_get_addr`, which made `malloc`+`free` under `LD_PRELOAD` about 1.4× slower than in
/// a Rust executable (measured: benches/run_compare.sh, docs/design_document.md). A library
/// loaded at start-up (`LD_PRELOAD`, or linked) may use initial-exec: one `fs:`-relative load
/// through a GOT entry. Stable Rust cannot ask for that model, so the slot is declared in
/// assembly. Built only with `cfg(initial_exec_tls)` (core's build script sets
/// it from the `initial-exec-tls` feature); a library `dlopen`ed late could fail to load with
/// it, which `LD_PRELOAD` never does.
#[cfg(initial_exec_tls)]
mod initial_exec {
    use super::Heap;
    use crate::heap::EMPTY_HEAP;

    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 3",
        // Global (other codegen units and crates of the same link refer to it), hidden (not
        // exported from the shared library, so nothing can interpose it).
        ".globl allocscope_heap_slot",
        ".hidden allocscope_heap_slot",
        ".type allocscope_heap_slot,@object",
        ".size allocscope_heap_slot,8",
        "allocscope_heap_slot:",
        ".quad {empty}",
        ".popsection",
        empty = sym EMPTY_HEAP,
    );

    #[inline(always)]
    pub(crate) fn get() -> *mut Heap {
        let heap: *mut Heap;
        // SAFETY: reads the calling thread's copy of the 8-byte TLS slot declared above; its
        // initial value is the empty heap, every later value a heap (see `set`).
        unsafe {
            core::arch::asm!(
                "mov {p}, qword ptr [rip + allocscope_heap_slot@GOTTPOFF]",
                "mov {p}, qword ptr fs:[{p}]",
                p = out(reg) heap,
                options(nostack, readonly, preserves_flags, pure),
            );
        }
        heap
    }

    #[inline(always)]
    pub(crate) fn set(heap: *mut Heap) {
        // SAFETY: writes the calling thread's copy of the TLS slot declared above.
        unsafe {
            core::arch::asm!(
                "mov {t}, qword ptr [rip + allocscope_heap_slot@GOTTPOFF]",
                "mov qword ptr fs:[{t}], {h}",
                t = out(reg) _,
                h = in(reg) heap,
                options(nostack, preserves_flags),
            );
        }
    }
}

#[cfg(initial_exec_tls)]
#[inline(always)]
pub(crate) fn current() -> *mut Heap {
    initial_exec::get()
}

#[cfg(initial_exec_tls)]
fn set_current(heap: *mut Heap) -> bool {
    initial_exec::set(heap);
    true
}

/// Spin lock over the idle pool and heap creation.
static LOCK: AtomicBool = AtomicBool::new(false);
/// Idle heaps (of exited threads), linked through `Heap::idle_next`. Guarded by `LOCK`.
static IDLE: AtomicPtr<Heap> = AtomicPtr::new(null_mut());
/// Every heap ever made, linked through `Heap::registry_next`; push-only.
static REGISTRY: AtomicPtr<Heap> = AtomicPtr::new(null_mut());
/// Unused heap slots of the last metadata chunk: next address and end. Guarded by `LOCK`.
static CHUNK_NEXT: AtomicUsize = AtomicUsize::new(0);
static CHUNK_END: AtomicUsize = AtomicUsize::new(0);
static CHUNK_BASE: AtomicPtr<u8> = AtomicPtr::new(null_mut());

/// Spins on a held [`LOCK`] before yielding the CPU instead.
const SPINS_BEFORE_YIELD: u32 = 100;

/// Takes [`LOCK`]. Its sections are short, so a waiter spins at first; but a holder that loses
/// its CPU keeps it for a whole time slice, and with more threads than cores every waiter then
/// spun through its own slice too (`perf`: 50 allocating threads, 300 short-lived ones and a
/// quarantine on 2 cores spent 78 % of their time in this loop). Past a short spin, waiters
/// yield, so the holder runs.
fn lock() {
    let mut spins = 0;
    loop {
        // Acquire: the critical section sees the previous holder's writes.
        if LOCK
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        // Relaxed: only a hint that the lock may be free; the compare-and-swap acquires.
        while LOCK.load(Ordering::Relaxed) {
            if spins < SPINS_BEFORE_YIELD || cfg!(loom) {
                spins += 1;
                crate::sync::spin_hint();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

fn unlock() {
    // Release: publishes the critical section's writes to the next holder.
    LOCK.store(false, Ordering::Release);
}

/// Pops an idle heap. Caller holds the lock.
fn pop_idle() -> *mut Heap {
    // Relaxed: guarded by LOCK.
    let h = IDLE.load(Ordering::Relaxed);
    if !h.is_null() {
        // SAFETY: heaps in the pool are valid and guarded by LOCK.
        unsafe { IDLE.store((*h).idle_next, Ordering::Relaxed) };
    }
    h
}

/// Makes a heap from metadata memory. Caller holds the lock.
fn new_heap() -> Option<*mut Heap> {
    let size = core::mem::size_of::<Heap>().next_multiple_of(64);
    // Relaxed: guarded by LOCK.
    let mut next = CHUNK_NEXT.load(Ordering::Relaxed);
    if next == 0 || next + size > CHUNK_END.load(Ordering::Relaxed) {
        let chunk = 64 * 1024usize.max(size);
        let base = SystemOs.reserve(chunk, 4096)?;
        CHUNK_BASE.store(base.as_ptr(), Ordering::Relaxed);
        next = base.as_ptr() as usize;
        CHUNK_END.store(next + chunk, Ordering::Relaxed);
    }
    CHUNK_NEXT.store(next + size, Ordering::Relaxed);
    let base = CHUNK_BASE.load(Ordering::Relaxed);
    let heap = base.wrapping_add(next - base as usize).cast::<Heap>();
    // SAFETY: the slot is fresh metadata memory of the right size and alignment (64).
    unsafe { heap.write(Heap::new_const()) };
    // Push onto the registry. Relaxed load: the CAS validates. Release: statistics readers
    // that Acquire the head see an initialised heap.
    let mut head = REGISTRY.load(Ordering::Relaxed);
    loop {
        // SAFETY: the heap is ours until published.
        unsafe { (*heap).registry_next = head };
        match REGISTRY.compare_exchange_weak(head, heap, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Some(heap),
            Err(seen) => head = seen,
        }
    }
}

/// Gives the calling thread a heap (an idle one, or a new one). `None` when out of memory.
#[cold]
pub(crate) fn attach() -> Option<*mut Heap> {
    lock();
    attach_locked()
}

/// [`attach`] if the pool's lock is free now, else `None`: for a free, which must not wait on
/// the lock (a `fork` prepare handler holds it while other handlers run, and those may free)
/// and can always push its block without a heap.
#[cold]
pub(crate) fn try_attach() -> Option<*mut Heap> {
    // Acquire: as in `lock`.
    if LOCK
        .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        return None;
    }
    attach_locked()
}

/// The rest of [`attach`], entered with the lock held (released here).
fn attach_locked() -> Option<*mut Heap> {
    let mut heap = pop_idle();
    if heap.is_null() {
        heap = match new_heap() {
            Some(h) => h,
            None => {
                unlock();
                return None;
            }
        };
    }
    unlock();
    // Set before registering the exit hook: registering may allocate (glibc's
    // pthread_setspecific for high keys), which must then find this heap.
    if !set_current(heap) {
        // Thread-locals are gone (thread teardown): give the heap back.
        release_to_idle(heap);
        return None;
    }
    register_exit_hook(heap);
    // After the heap is set: registering allocates in glibc.
    register_fork_handlers_once();
    Some(heap)
}

/// Called when a thread ends: give back what we can, then join the idle pool.
fn detach(heap: *mut Heap) {
    if heap.is_null() || owns_nothing(heap) {
        return;
    }
    // Not the empty heap: a free after this point must not attach a heap (see `heap`).
    set_current(exited_heap());
    // SAFETY: the exiting thread's own heap; after this call nobody uses it until another
    // thread takes it from the pool.
    unsafe {
        (*heap).collect_all();
        (*heap).reset_current_pages();
    }
    release_to_idle(heap);
}

fn release_to_idle(heap: *mut Heap) {
    lock();
    // SAFETY: guarded by LOCK; the heap is held by nobody.
    unsafe { (*heap).idle_next = IDLE.load(Ordering::Relaxed) };
    // Relaxed: guarded by LOCK.
    IDLE.store(heap, Ordering::Relaxed);
    unlock();
}

/// Moves the segments of one idle heap into `heap` (called before claiming a new segment).
/// Returns whether anything was adopted.
///
/// # Safety
/// `heap` is the calling thread's heap.
pub(crate) unsafe fn adopt_idle(heap: &mut Heap) -> bool {
    // Relaxed peek: an empty pool is the common case; a heap arriving now waits for next time.
    if IDLE.load(Ordering::Relaxed).is_null() {
        return false;
    }
    lock();
    let idle = pop_idle();
    unlock();
    if idle.is_null() {
        return false;
    }
    // SAFETY: popped from the pool: we hold it exclusively.
    let adopted = unsafe {
        let had = !(*idle).segments.is_null();
        heap.adopt(&mut *idle);
        had
    };
    release_to_idle(idle);
    adopted
}

/// Gives idle heaps' free memory back to the OS (pages emptied by remote frees after their
/// thread exited).
pub(crate) fn collect_idle() {
    // Take the whole pool while we work on it (other threads see it empty: they make new
    // heaps meanwhile, which is sound).
    lock();
    // Relaxed: guarded by LOCK.
    let first = IDLE.swap(null_mut(), Ordering::Relaxed);
    unlock();
    if first.is_null() {
        return;
    }
    let mut last = first;
    let mut h = first;
    while !h.is_null() {
        // SAFETY: we hold these heaps exclusively.
        unsafe {
            (*h).collect_all();
            last = h;
            h = (*h).idle_next;
        }
    }
    lock();
    // SAFETY: `last` is the tail of the list we hold; guarded by LOCK.
    unsafe { (*last).idle_next = IDLE.load(Ordering::Relaxed) };
    IDLE.store(first, Ordering::Relaxed);
    unlock();
}

/// Calls `f` on every heap ever made (statistics).
pub(crate) fn for_each_heap(mut f: impl FnMut(&Heap)) {
    // Acquire: pairs with the Release push, so heaps are initialised.
    let mut h = REGISTRY.load(Ordering::Acquire);
    while !h.is_null() {
        // SAFETY: registered heaps are never freed.
        unsafe {
            f(&*h);
            h = (*h).registry_next;
        }
    }
}

// ----- thread exit hooks -----------------------------------------------------------------------

#[cfg(unix)]
mod exit_hook {
    use super::*;

    /// The pthread key whose destructor detaches the heap (key + 1; 0 = not created).
    static KEY: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn on_thread_exit(value: *mut libc::c_void) {
        detach(value.cast());
    }

    pub(super) fn register(heap: *mut Heap) {
        // Acquire: pairs with the Release publication of the key below.
        let mut key = KEY.load(Ordering::Acquire);
        if key == 0 {
            let mut k: libc::pthread_key_t = 0;
            // SAFETY: creates a key with a destructor that has the right signature.
            if unsafe { libc::pthread_key_create(&mut k, Some(on_thread_exit)) } != 0 {
                return;
            }
            // Release: publishes the created key. A racing thread's key is deleted.
            match KEY.compare_exchange(0, k as usize + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => key = k as usize + 1,
                Err(existing) => {
                    // SAFETY: `k` is our key, never used.
                    unsafe { libc::pthread_key_delete(k) };
                    key = existing;
                }
            }
        }
        // SAFETY: the key exists; the value is our heap.
        unsafe { libc::pthread_setspecific((key - 1) as libc::pthread_key_t, heap.cast()) };
    }
}

#[cfg(not(unix))]
mod exit_hook {
    use super::*;

    struct Guard(Cell<*mut Heap>);

    impl Drop for Guard {
        fn drop(&mut self) {
            detach(self.0.get());
        }
    }

    thread_local! {
        static GUARD: Guard = const { Guard(Cell::new(null_mut())) };
    }

    pub(super) fn register(heap: *mut Heap) {
        let _ = GUARD.try_with(|g| g.0.set(heap));
    }
}

fn register_exit_hook(heap: *mut Heap) {
    exit_hook::register(heap);
}

// ----- fork ------------------------------------------------------------------------------------

static FORK_HANDLERS: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
fn register_fork_handlers_once() {
    // Relaxed: registering twice is harmless (and prevented by the swap).
    if FORK_HANDLERS.load(Ordering::Relaxed) || FORK_HANDLERS.swap(true, Ordering::Relaxed) {
        return;
    }
    extern "C" fn prepare() {
        lock();
    }
    extern "C" fn parent() {
        unlock();
    }
    extern "C" fn child() {
        unlock();
    }
    // SAFETY: the handlers are plain functions valid for the process's life.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

#[cfg(not(unix))]
fn register_fork_handlers_once() {
    let _ = &FORK_HANDLERS;
}
