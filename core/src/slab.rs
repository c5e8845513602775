//! The slab cache: kernel-style object caches for one type (J. Bonwick, "The Slab Allocator:
//! An Object-Caching Kernel Memory Allocator", USENIX 1994; magazines from Bonwick & Adams,
//! "Magazines and Vmem", USENIX 2001).
//!
//! * **Slabs**: aligned, `slab_size`-byte pieces of memory holding a header, a free-index
//!   table and `objects_per_slab` objects; an object's slab starts at
//!   `address & !(slab_size - 1)`.
//! * **Lists**: every slab is on exactly one of *partial* (some objects free), *full* or
//!   *empty*. Allocation takes from a partial slab first, then an empty one, then a new slab,
//!   which keeps memory compact and leaves whole slabs empty to give back.
//! * **Constructed state**: with a constructor, objects are built once when their slab is
//!   created and dropped only when the slab is given back; [`SlabCache::get`] hands out a
//!   constructed object and takes it back as is, so the constructor's work is kept across
//!   reuse. (The byte-level and `Allocator` interfaces hand out raw memory: they drop the
//!   constructed object first and rebuild it on free.)
//! * **Magazines**: a [`Magazine`] (one per thread) caches up to [`MAGAZINE_SLOTS`] objects and
//!   moves half a magazine at a time under one lock acquisition.
//! * **Depot** (Bonwick & Adams' magazine layer): a full linked magazine leaves its oldest
//!   half, a chain of [`MAGAZINE_BATCH`] objects already linked through their first words, in
//!   the cache's depot, one pointer pushed under the lock; an empty magazine takes a chain
//!   back the same way. Only when the depot is full (up to [`DEPOT_CHAINS`] chains and
//!   [`DEPOT_BYTES`] of objects) or empty do objects go to or come from their slabs one by
//!   one. Chains idle in the depot for a whole reap period go back to their slabs, and so do
//!   all of them before [`SlabCache::shrink`].
//! * **Pressure**: every [`REAP_PERIOD`] objects moved, the empty slabs that stayed empty for
//!   the whole period, beyond `max_empty`, are given back (like the kernel's periodic reaping:
//!   a burst that empties slabs and the next one that refills them cause no OS traffic);
//!   [`SlabCache::shrink`] gives back every empty slab at once.
//!
//! * **Arenas**: slabs are carved from the caller's buffer or from arenas reserved from the OS
//!   (each twice the previous one), so a slab is found from an object's address by a short
//!   scan of the arenas, with a pointer derived from the arena (never from the caller's). An
//!   empty slab given back is decommitted past its first page, which links it for reuse.
//!
//! Misuse: a pointer that is not an object slot of the cache's arenas is refused
//! ([`AllocErrorKind::InvalidFree`]), and every object's entry in its slab's index table says
//! whether it is allocated, so a double free through the cache is refused
//! ([`AllocErrorKind::DoubleFree`]) — both in every build; in debug builds magazines check
//! double frees too, and frees check the slab is live.
//!
//! The lists are guarded by a [`SpinLock`]: the fast path is the magazine, without a lock.
//!
//! May touch: [`crate::spin`], [`crate::region`], [`crate::os`], [`crate::strategy_stats`],
//! [`crate::error`].

use core::cell::Cell;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, MaybeUninit};
use core::num::NonZeroUsize;
use core::ops::{Deref, DerefMut};
use core::ptr::{self, NonNull};

use crate::error::{record, AllocErrorKind};
use crate::os::{align_up, Os};
use crate::region::Region;
use crate::spin::SpinLock;
use crate::strategy_stats::{ratio, StrategyStats};
use crate::typed::{impl_allocator_api2, TypedAlloc};

/// Objects a magazine holds.
pub const MAGAZINE_SLOTS: usize = 32;
/// Objects moved between a magazine and the slabs at once.
pub const MAGAZINE_BATCH: usize = MAGAZINE_SLOTS / 2;
/// Objects a linked magazine's list holds: one fewer than the magazine, for the hot object.
const LIST_SLOTS: usize = MAGAZINE_SLOTS - 1;
/// The `hot` of a magazine that does not link: neither null (so a free never puts an object
/// there) nor an object (so an allocation never takes it). Address 1 is no object's: objects
/// lie in slabs, past a slab header.
const CLOSED_HOT: *mut u8 = NonNull::<u8>::dangling().as_ptr();
/// Chains of [`MAGAZINE_BATCH`] objects the depot holds at most (see the module docs).
pub const DEPOT_CHAINS: usize = 64;
/// Bytes of objects the depot holds at most (at least one chain).
pub const DEPOT_BYTES: usize = 256 * 1024;
/// The smallest slab: small over a caller buffer; over an OS several pages, so that giving an
/// empty slab back (all but its first page) frees memory.
const MIN_SLAB: usize = 4096;
const MIN_OS_SLAB: usize = 16 * 1024;
/// A slab holds at least this many objects (when the type is large the slab grows).
const MIN_OBJECTS: usize = 8;
/// Objects moved in and out of slabs between two reaps of idle empty slabs (at least; the
/// period grows to twice the cache's capacity).
pub const REAP_PERIOD: usize = 1024;

/// Index-table value of an allocated object.
const ALLOCATED: u32 = u32::MAX;
/// Index-table value of an object sitting in a magazine.
const IN_MAGAZINE: u32 = u32::MAX - 1;

/// Which list a slab is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum ListId {
    Partial = 0,
    Full = 1,
    Empty = 2,
}

/// The header at the start of every slab, followed by its index table (`u32` per object: the
/// next free object + 1, 0 for none, or `ALLOCATED` / `IN_MAGAZINE`).
#[repr(C)]
struct SlabHeader {
    next: *mut SlabHeader,
    prev: *mut SlabHeader,
    list: ListId,
    /// Objects not free in this slab (allocated or in magazines).
    in_use: u32,
    /// First free object + 1 (0: none).
    free_head: u32,
}

/// A region slabs are carved from: the caller's buffer, or one reserved from the OS. Every
/// slab pointer is derived from its arena's base (strict provenance: never from a pointer a
/// caller hands back).
#[derive(Clone, Copy)]
struct Arena {
    region: Region,
    /// Offsets of the first slab (aligned) and of the next never-used one.
    first: usize,
    fresh: usize,
}

/// Where slabs come from and go back to.
struct Source {
    /// `arenas[..count]` are in use.
    arenas: [Option<Arena>; MAX_ARENAS],
    count: usize,
    /// Slabs given back (decommitted past their first page when OS-backed), linked through
    /// their first word; reused before a fresh slab is carved.
    returned: *mut u8,
}

impl Source {
    /// The arenas in use. `count` never exceeds [`MAX_ARENAS`] (an arena is added only into a
    /// free entry); the `min` is never taken, it lets the compiler see the slice is in bounds
    /// (no check that could panic).
    fn in_use(&self) -> &[Option<Arena>] {
        &self.arenas[..self.count.min(MAX_ARENAS)]
    }
}

/// Arenas a cache reserves at most (each twice the size of the previous one).
const MAX_ARENAS: usize = 24;
/// Slabs in the first arena reserved from an OS.
const FIRST_ARENA_SLABS: usize = 16;

/// Everything behind the lock.
struct Lists {
    heads: [*mut SlabHeader; 3],
    counts: [usize; 3],
    source: Source,
    /// Objects out of slabs (allocated or in magazines), objects in magazines.
    out: usize,
    in_magazines: usize,
    peak_used: usize,
    allocations: u64,
    deallocations: u64,
    failures: u64,
    misuse: u64,
    /// Objects moved since the last reap, and the fewest empty slabs seen meanwhile.
    moved: usize,
    empty_low: usize,
    /// The depot: chains of [`MAGAZINE_BATCH`] linked objects (each entry the newest object
    /// of its chain), oldest first; `depot_len` of them, and the fewest seen since the last
    /// reap. Their objects count as in magazines.
    depot: [*mut u8; DEPOT_CHAINS],
    depot_len: usize,
    depot_low: usize,
}

// SAFETY: the raw pointers are slabs owned by the cache; the lock serialises access to them.
unsafe impl Send for Lists {}

/// An object cache for `T`. See the [module documentation](self).
pub struct SlabCache<'a, T> {
    lists: SpinLock<Lists>,
    ctor: Option<fn() -> T>,
    slab_size: usize,
    per_slab: usize,
    /// Offset of the first object in a slab; objects are [`Self::STRIDE`] apart.
    objects_at: usize,
    max_empty: usize,
    /// Chains the depot may hold: [`DEPOT_CHAINS`], fewer for large objects ([`DEPOT_BYTES`]).
    depot_cap: usize,
    /// Every object address lies below [`LINKABLE_END`] (a caller buffer may not; arenas from
    /// the OS do, or are refused), so magazines may link objects.
    linkable: bool,
    os: Option<&'a dyn Os>,
    _objects: PhantomData<T>,
    _buffer: PhantomData<&'a mut [MaybeUninit<u8>]>,
}

// SAFETY: objects move between threads through the locked lists and magazines (T: Send); all
// shared state is behind the spin lock.
unsafe impl<T: Send> Sync for SlabCache<'_, T> {}
// SAFETY: as above; the cache owns its slabs.
unsafe impl<T: Send> Send for SlabCache<'_, T> {}

impl<'a, T> SlabCache<'a, T> {
    /// Distance between objects: the size of `T` (at least 1) rounded up to its alignment. A
    /// constant of `T`, so finding an object's index from its address divides by a constant
    /// (a shift for the usual power-of-two sizes, never a division instruction), and non-zero
    /// by type: never 0 for any T (a size of at least 1 rounded up to the alignment, which a
    /// type's size is a multiple of, so no wrap); the `MIN` arm is never taken.
    const STRIDE: NonZeroUsize = match NonZeroUsize::new(align_up(
        if size_of::<T>() == 0 {
            1
        } else {
            size_of::<T>()
        },
        align_of::<T>(),
    )) {
        Some(stride) => stride,
        None => NonZeroUsize::MIN,
    };

    fn build(os: Option<&'a dyn Os>, buffer: Option<Region>, ctor: Option<fn() -> T>) -> Self {
        let stride = Self::STRIDE.get();
        let mut slab_size = if os.is_some() { MIN_OS_SLAB } else { MIN_SLAB };
        let layout = |slab: usize| {
            let header = size_of::<SlabHeader>();
            // n objects need header + 4n bytes of table, padding to T, then n * stride.
            let mut n = (slab - header) / (stride + 4);
            loop {
                let at = align_up(header + 4 * n, align_of::<T>());
                if n == 0 || at + n * stride <= slab {
                    return (n, at);
                }
                n -= 1;
            }
        };
        while layout(slab_size).0 < MIN_OBJECTS && slab_size < (1 << (usize::BITS - 2)) {
            slab_size *= 2;
        }
        let (per_slab, objects_at) = layout(slab_size);
        let mut source = Source {
            arenas: [None; MAX_ARENAS],
            count: 0,
            returned: ptr::null_mut(),
        };
        if let Some(region) = buffer {
            let start = region.base.as_ptr() as usize;
            let first = align_up(start, slab_size) - start;
            source.arenas[0] = Some(Arena {
                region,
                first,
                fresh: first,
            });
            source.count = 1;
        }
        SlabCache {
            lists: SpinLock::new(Lists {
                heads: [ptr::null_mut(); 3],
                counts: [0; 3],
                source,
                out: 0,
                in_magazines: 0,
                peak_used: 0,
                allocations: 0,
                deallocations: 0,
                failures: 0,
                misuse: 0,
                moved: 0,
                empty_low: 0,
                depot: [ptr::null_mut(); DEPOT_CHAINS],
                depot_len: 0,
                depot_low: 0,
            }),
            ctor,
            slab_size,
            per_slab: per_slab.min(IN_MAGAZINE as usize - 1),
            objects_at,
            // Never 0, for any T: a size of at least 1 rounded up to the alignment, which a
            // type's size is a multiple of (no wrap); the `unwrap_or` is never taken.
            max_empty: 1,
            depot_cap: (DEPOT_BYTES / (MAGAZINE_BATCH * stride)).clamp(1, DEPOT_CHAINS),
            linkable: buffer.is_none_or(|region| region.end_addr() <= LINKABLE_END),
            os,
            _objects: PhantomData,
            _buffer: PhantomData,
        }
    }

    /// A cache whose slabs come from `os`; objects are raw memory (no constructor).
    pub fn with_os(os: &'a dyn Os) -> Self {
        Self::build(Some(os), None, None)
    }

    /// A cache whose slabs are carved from a caller buffer.
    pub fn from_buffer(buffer: &'a mut [MaybeUninit<u8>]) -> Self {
        Self::build(None, Some(Region::of_buffer(buffer)), None)
    }

    /// A cache over the operating system's memory.
    #[cfg(all(feature = "std", any(unix, windows)))]
    pub fn new() -> SlabCache<'static, T> {
        SlabCache::build(Some(&crate::region::SYSTEM_OS), None, None)
    }

    /// Builds every object with `ctor` when its slab is created, and hands out constructed
    /// objects through [`SlabCache::get`]. Call before the first allocation.
    pub fn with_constructor(mut self, ctor: fn() -> T) -> Self {
        self.ctor = Some(ctor);
        self
    }

    /// How many empty slabs to keep when reaping idle ones (default 1; see [`REAP_PERIOD`]).
    pub fn with_max_empty(mut self, slabs: usize) -> Self {
        self.max_empty = slabs;
        self
    }

    /// Bytes per slab.
    pub fn slab_size(&self) -> usize {
        self.slab_size
    }

    /// Objects per slab.
    pub fn objects_per_slab(&self) -> usize {
        self.per_slab
    }

    /// Slabs on the partial, full and empty lists.
    pub fn slab_counts(&self) -> (usize, usize, usize) {
        let lists = self.lists.lock();
        (lists.counts[0], lists.counts[1], lists.counts[2])
    }

    /// A per-thread magazine in front of the cache. Its objects are linked (see [`Magazine`])
    /// when the cache has no constructor, an object holds a pointer and (64-bit targets) every
    /// object address lies below 2^58.
    pub fn magazine(&self) -> Magazine<'_, 'a, T> {
        let linked =
            self.ctor.is_none() && Self::STRIDE.get() >= size_of::<*mut u8>() && self.linkable;
        Magazine {
            cache: self,
            linked,
            hot: Cell::new(if linked { ptr::null_mut() } else { CLOSED_HOT }),
            top: ListTop::new(!linked),
            slots: [const { Cell::new(NonNull::dangling()) }; MAGAZINE_SLOTS],
            len: Cell::new(0),
            #[cfg(feature = "stats")]
            allocations: Cell::new(0),
            #[cfg(feature = "stats")]
            deallocations: Cell::new(0),
            published_len: Cell::new(0),
        }
    }

    /// A constructed object; returned as it is (not dropped) when the handle is dropped.
    /// `None` when memory runs out, or when the cache has no constructor
    /// ([`AllocErrorKind::InvalidRequest`]).
    pub fn get(&self) -> Option<Pooled<'_, T, Self>> {
        if self.ctor.is_none() {
            record(AllocErrorKind::InvalidRequest);
            return None;
        }
        let mut one = [ptr::null_mut(); 1];
        if self.take(&mut one, None) == 0 {
            return None;
        }
        let ptr = NonNull::new(one[0].cast())?;
        Some(Pooled { ptr, home: self })
    }

    /// Gives every empty slab back to its source. Returns how many.
    pub fn shrink(&self) -> usize {
        let mut lists = self.lists.lock();
        let chains = lists.depot_len;
        self.drain_depot(&mut lists, chains);
        let mut released = 0;
        while !lists.heads[ListId::Empty as usize].is_null() {
            let slab = lists.heads[ListId::Empty as usize];
            self.unlink(&mut lists, slab);
            self.release_slab(&mut lists, slab);
            released += 1;
        }
        released
    }

    /// The cache's figures. `fragmentation` is the share of free object slots that sit in
    /// partial slabs (memory that cannot be given back until those slabs empty). Objects in
    /// magazines count as free, as of each magazine's last batch move. Operations through the
    /// cache itself are counted (under its lock); those through magazines only with the
    /// `stats` feature (a count on the magazine's fast path costs as much as the rest of it),
    /// once published at a batch move.
    pub fn stats(&self) -> StrategyStats {
        let lists = self.lists.lock();
        let slabs: usize = lists.counts.iter().sum();
        let slots = slabs * self.per_slab;
        let used = lists.out.saturating_sub(lists.in_magazines);
        let free = slots - used;
        let mut stranded = 0;
        let mut slab = lists.heads[ListId::Partial as usize];
        while !slab.is_null() {
            // SAFETY: slabs on the lists are valid while the lock is held.
            unsafe {
                stranded += self.per_slab - (*slab).in_use as usize;
                slab = (*slab).next;
            }
        }
        StrategyStats {
            used_bytes: used * Self::STRIDE.get(),
            free_bytes: free * Self::STRIDE.get(),
            peak_used_bytes: lists.peak_used * Self::STRIDE.get(),
            allocations: lists.allocations,
            deallocations: lists.deallocations,
            failures: lists.failures,
            misuse: lists.misuse,
            fragmentation: ratio(stranded, free),
        }
    }

    // --- slabs ------------------------------------------------------------------------------

    /// The index table of a slab.
    fn table(&self, slab: *mut SlabHeader) -> *mut u32 {
        // The table follows the header (repr(C); the header's alignment covers u32).
        slab.wrapping_add(1).cast()
    }

    fn object(&self, slab: *mut SlabHeader, index: usize) -> *mut u8 {
        slab.cast::<u8>()
            .wrapping_add(self.objects_at + index * Self::STRIDE.get())
    }

    /// The slab and index of the object at `obj`, with the slab pointer derived from its
    /// arena; `None` when the address is not an object slot of this cache's arenas.
    fn locate(&self, lists: &Lists, obj: *mut u8) -> Option<(*mut SlabHeader, usize)> {
        let addr = obj as usize;
        let offset = addr & (self.slab_size - 1);
        if offset < self.objects_at || (offset - self.objects_at) % Self::STRIDE != 0 {
            return None;
        }
        let index = (offset - self.objects_at) / Self::STRIDE;
        if index >= self.per_slab {
            return None;
        }
        let source = &lists.source;
        for arena in source.in_use().iter().flatten() {
            let base = arena.region.base.as_ptr() as usize;
            let at = addr.wrapping_sub(base);
            if at >= arena.first && at < arena.fresh {
                // SAFETY: the slab starts below `fresh` <= the arena's length.
                let slab = unsafe { arena.region.at(at - offset) };
                return Some((slab.as_ptr().cast(), index));
            }
        }
        None
    }

    /// Debug check: `obj` is an object slot of one of our live slabs (not a returned one).
    fn owns(&self, lists: &Lists, obj: *mut u8) -> bool {
        let Some((slab, _)) = self.locate(lists, obj) else {
            return false;
        };
        for head in lists.heads {
            let mut s = head;
            while !s.is_null() {
                if s == slab {
                    return true;
                }
                // SAFETY: slabs on the lists are valid while the lock is held.
                s = unsafe { (*s).next };
            }
        }
        false
    }

    fn unlink(&self, lists: &mut Lists, slab: *mut SlabHeader) {
        // SAFETY: `slab` and its neighbours are valid slabs on the list it names; the caller
        // holds the lock.
        unsafe {
            let SlabHeader {
                next, prev, list, ..
            } = slab.read();
            if prev.is_null() {
                lists.heads[list as usize] = next;
            } else {
                (*prev).next = next;
            }
            if !next.is_null() {
                (*next).prev = prev;
            }
            lists.counts[list as usize] -= 1;
        }
    }

    fn link(&self, lists: &mut Lists, slab: *mut SlabHeader, list: ListId) {
        let head = lists.heads[list as usize];
        // SAFETY: `slab` is a valid slab not on any list; `head` is null or a valid slab.
        unsafe {
            (*slab).next = head;
            (*slab).prev = ptr::null_mut();
            (*slab).list = list;
            if !head.is_null() {
                (*head).prev = slab;
            }
        }
        lists.heads[list as usize] = slab;
        lists.counts[list as usize] += 1;
    }

    /// Moves a slab to the list its fill level calls for.
    fn relist(&self, lists: &mut Lists, slab: *mut SlabHeader) {
        // SAFETY: a valid slab of ours; the caller holds the lock.
        let (in_use, list) = unsafe { ((*slab).in_use as usize, (*slab).list) };
        let want = match in_use {
            0 => ListId::Empty,
            n if n == self.per_slab => ListId::Full,
            _ => ListId::Partial,
        };
        if want != list {
            self.unlink(lists, slab);
            self.link(lists, slab, want);
        }
    }

    /// A fresh slab from the source, objects constructed, on the empty list.
    #[cold]
    fn new_slab(&self, lists: &mut Lists) -> Option<*mut SlabHeader> {
        let raw = self.take_slab(&mut lists.source)?;
        let slab = raw.cast::<SlabHeader>();
        let table = self.table(slab);
        // SAFETY: `raw` is a slab-sized, slab-aligned piece of memory that is ours alone; the
        // header, table and objects fit in it by construction of the layout.
        unsafe {
            slab.write(SlabHeader {
                next: ptr::null_mut(),
                prev: ptr::null_mut(),
                list: ListId::Empty,
                in_use: 0,
                free_head: 1,
            });
            for i in 0..self.per_slab {
                let next = if i + 1 < self.per_slab {
                    i as u32 + 2
                } else {
                    0
                };
                table.add(i).write(next);
                if let Some(ctor) = self.ctor {
                    self.object(slab, i).cast::<T>().write(ctor());
                }
            }
        }
        self.link(lists, slab, ListId::Empty);
        Some(slab)
    }

    /// Slab memory: a returned slab (recommitted), a fresh one from the newest arena, or a
    /// fresh one from a new arena.
    fn take_slab(&self, source: &mut Source) -> Option<*mut u8> {
        if !source.returned.is_null() {
            let slab = source.returned;
            if let Some(os) = self.os {
                let page = os.page_size();
                if self.slab_size > page {
                    let rest = NonNull::new(slab.wrapping_add(page))?;
                    // SAFETY: the slab's pages past the first lie in one of our arenas.
                    if !unsafe { os.commit(rest, self.slab_size - page) } {
                        record(AllocErrorKind::OutOfMemory);
                        return None;
                    }
                }
            }
            // SAFETY: a returned slab's first word (its first page stays committed) links the
            // next returned slab.
            source.returned = unsafe { slab.cast::<*mut u8>().read() };
            return Some(slab);
        }
        let count = source.count.min(MAX_ARENAS);
        if let Some(Some(arena)) = source.arenas[..count].last_mut() {
            if arena.fresh + self.slab_size <= arena.region.len {
                // SAFETY: fresh + slab_size <= len: inside the arena.
                let slab = unsafe { arena.region.at(arena.fresh) }.as_ptr();
                arena.fresh += self.slab_size;
                return Some(slab);
            }
        }
        let os = self.os?;
        // No free entry: every arena is reserved.
        let Some(entry) = source.arenas.get_mut(count) else {
            record(AllocErrorKind::OutOfMemory);
            return None;
        };
        let slabs = FIRST_ARENA_SLABS << count;
        let region = Region::reserve(os, slabs.checked_mul(self.slab_size)?, self.slab_size)?;
        if region.end_addr() > LINKABLE_END {
            // SAFETY: the region just reserved from this OS; nothing uses it.
            unsafe { region.release(os) };
            record(AllocErrorKind::OutOfMemory);
            return None;
        }
        *entry = Some(Arena {
            region,
            first: 0,
            fresh: self.slab_size,
        });
        source.count = count + 1;
        Some(region.base.as_ptr())
    }

    /// Drops a slab's constructed objects. The slab is on no list.
    fn drop_objects(&self, slab: *mut SlabHeader) {
        if self.ctor.is_some() {
            let table = self.table(slab);
            for i in 0..self.per_slab {
                // SAFETY: `slab` is ours; entries below ALLOCATED-markers are free objects in
                // constructed state (allocated ones were leaked by the caller: not dropped).
                unsafe {
                    if *table.add(i) < IN_MAGAZINE {
                        ptr::drop_in_place(self.object(slab, i).cast::<T>());
                    }
                }
            }
        }
    }

    /// Drops a slab's constructed objects and gives its memory back: to the OS (all but the
    /// first page, which links the returned slabs) or, over a buffer, to the returned slabs.
    #[cold]
    fn release_slab(&self, lists: &mut Lists, slab: *mut SlabHeader) {
        self.drop_objects(slab);
        let raw = slab.cast::<u8>();
        if let Some(os) = self.os {
            let page = os.page_size();
            if let (true, Some(rest)) =
                (self.slab_size > page, NonNull::new(raw.wrapping_add(page)))
            {
                // SAFETY: the slab's pages past the first lie in one of our arenas and hold
                // nothing any more (its objects were dropped above).
                unsafe { os.decommit(rest, self.slab_size - page) };
            }
        }
        // SAFETY: the slab's first word is free now (the header is dead).
        unsafe { raw.cast::<*mut u8>().write(lists.source.returned) };
        lists.source.returned = raw;
    }

    /// Takes up to `out.len()` objects into `out` under one lock; returns how many. A
    /// magazine passes its operation counts and its new fill level to publish.
    fn take(&self, out: &mut [*mut u8], magazine: Option<MagazineReport>) -> usize {
        let mut lists = self.lists.lock();
        self.take_locked(&mut lists, out, magazine)
    }

    /// [`SlabCache::take`] with the lock held.
    fn take_locked(
        &self,
        lists: &mut Lists,
        out: &mut [*mut u8],
        magazine: Option<MagazineReport>,
    ) -> usize {
        // Debug builds tell objects in magazines from objects in use (to catch double frees
        // into magazines); release builds mark both ALLOCATED.
        let mark = if magazine.is_some() && cfg!(debug_assertions) {
            IN_MAGAZINE
        } else {
            ALLOCATED
        };
        let mut taken = 0;
        while taken < out.len() {
            let mut slab = lists.heads[ListId::Partial as usize];
            if slab.is_null() {
                slab = lists.heads[ListId::Empty as usize];
            }
            if slab.is_null() {
                match self.new_slab(lists) {
                    Some(s) => slab = s,
                    None => break,
                }
            }
            let table = self.table(slab);
            // SAFETY: a valid slab of ours, under the lock; free_head names a free object.
            unsafe {
                while taken < out.len() && (*slab).free_head != 0 {
                    let index = (*slab).free_head as usize - 1;
                    (*slab).free_head = *table.add(index);
                    *table.add(index) = mark;
                    (*slab).in_use += 1;
                    out[taken] = self.object(slab, index);
                    taken += 1;
                }
            }
            self.relist(lists, slab);
        }
        if taken == 0 {
            lists.failures += 1;
            if self.os.is_none() {
                record(AllocErrorKind::Exhausted);
            }
        }
        lists.out += taken;
        match magazine {
            Some(report) => {
                report.publish(lists);
                lists.in_magazines += taken;
            }
            None => lists.allocations += taken as u64,
        }
        let used = lists.out.saturating_sub(lists.in_magazines);
        lists.peak_used = lists.peak_used.max(used);
        self.age(lists, taken);
        taken
    }

    /// Returns objects to their slabs under one lock, refusing (and reporting) objects that
    /// are not taken — double frees — and, in debug builds, pointers that are not ours.
    /// `rebuild`: run the constructor over raw memory coming back from the byte interface.
    fn put(&self, objects: &[*mut u8], magazine: Option<MagazineReport>, rebuild: bool) {
        let mut lists = self.lists.lock();
        self.put_locked(&mut lists, objects, magazine, rebuild);
    }

    /// [`SlabCache::put`] with the lock held.
    fn put_locked(
        &self,
        lists: &mut Lists,
        objects: &[*mut u8],
        magazine: Option<MagazineReport>,
        rebuild: bool,
    ) {
        let accepted = self.return_objects(lists, objects, magazine.is_some(), rebuild);
        match magazine {
            Some(report) => report.publish(lists),
            None => lists.deallocations += accepted,
        }
        self.age(lists, objects.len());
    }

    /// Puts objects back in their slabs (lock held); `from_magazine`: they were in a magazine
    /// or the depot (marked so in debug builds). Returns how many were accepted.
    fn return_objects(
        &self,
        lists: &mut Lists,
        objects: &[*mut u8],
        from_magazine: bool,
        rebuild: bool,
    ) -> u64 {
        let mut accepted = 0;
        for &obj in objects {
            let located = if cfg!(debug_assertions) && !self.owns(lists, obj) {
                None
            } else {
                self.locate(lists, obj)
            };
            let Some((slab, index)) = located else {
                lists.misuse += 1;
                record(AllocErrorKind::InvalidFree);
                continue;
            };
            let table = self.table(slab);
            // SAFETY: `obj` is an object of one of our slabs (checked in debug builds; the
            // caller's contract otherwise), which is valid under the lock.
            unsafe {
                let entry = *table.add(index);
                let expected = match (cfg!(debug_assertions), from_magazine) {
                    (true, true) => entry == IN_MAGAZINE,
                    (true, false) => entry == ALLOCATED,
                    (false, _) => entry >= IN_MAGAZINE,
                };
                if !expected {
                    lists.misuse += 1;
                    record(AllocErrorKind::DoubleFree);
                    continue;
                }
                if rebuild {
                    self.reconstruct(obj);
                }
                *table.add(index) = (*slab).free_head;
                (*slab).free_head = index as u32 + 1;
                (*slab).in_use -= 1;
            }
            accepted += 1;
            lists.out -= 1;
            self.relist(lists, slab);
        }
        accepted
    }

    /// Leaves a magazine's chain of [`MAGAZINE_BATCH`] linked objects (`chain` its newest) in
    /// the depot, or, when the depot is full, returns its objects to their slabs; publishes the
    /// magazine's report either way.
    fn deposit(&self, chain: *mut u8, report: MagazineReport) {
        let mut lists = self.lists.lock();
        let len = lists.depot_len;
        if len < self.depot_cap {
            if let Some(entry) = lists.depot.get_mut(len) {
                *entry = chain;
                lists.depot_len = len + 1;
                report.publish(&mut lists);
                // The chain's objects stay in a magazine's keeping.
                lists.in_magazines += MAGAZINE_BATCH;
                self.age(&mut lists, MAGAZINE_BATCH);
                return;
            }
        }
        let mut batch = [ptr::null_mut(); MAGAZINE_BATCH];
        // SAFETY: a depot chain holds MAGAZINE_BATCH linked objects.
        unsafe { ListTop::read_chain(chain, &mut batch) };
        self.put_locked(&mut lists, &batch, Some(report), false);
    }

    /// Refills an empty linked magazine under one lock, publishing its report: the newest
    /// chain of the depot (`Ok`, the chain's newest object), or, the depot empty, objects from
    /// the slabs into `out` (`Err`, how many, as [`SlabCache::take`]).
    fn withdraw(
        &self,
        report: MagazineReport,
        out: &mut [*mut u8; MAGAZINE_BATCH],
    ) -> Result<*mut u8, usize> {
        let mut lists = self.lists.lock();
        let newest = lists.depot_len.checked_sub(1);
        match newest.and_then(|len| Some((len, *lists.depot.get(len)?))) {
            Some((len, chain)) => {
                lists.depot_len = len;
                lists.depot_low = lists.depot_low.min(len);
                report.publish(&mut lists);
                self.age(&mut lists, MAGAZINE_BATCH);
                Ok(chain)
            }
            None => Err(self.take_locked(&mut lists, out, Some(report))),
        }
    }

    /// Returns the oldest `chains` chains of the depot to their slabs (lock held).
    fn drain_depot(&self, lists: &mut Lists, chains: usize) {
        let len = lists.depot_len.min(DEPOT_CHAINS);
        let chains = chains.min(len);
        let mut batch = [ptr::null_mut(); MAGAZINE_BATCH];
        for i in 0..chains {
            // SAFETY: as in `deposit`.
            unsafe { ListTop::read_chain(lists.depot[i], &mut batch) };
            self.return_objects(lists, &batch, true, false);
            lists.in_magazines -= MAGAZINE_BATCH;
        }
        lists.depot.copy_within(chains..len, 0);
        lists.depot_len = len - chains;
        lists.depot_low = lists.depot_low.min(lists.depot_len);
    }

    /// Counts `moved` objects towards the reap period and, at its end, gives back the empty
    /// slabs that stayed empty all along (beyond `max_empty`). Slabs emptied by a burst and
    /// reused by the next one are kept: only memory idle for a whole period goes.
    fn age(&self, lists: &mut Lists, moved: usize) {
        let empty = lists.counts[ListId::Empty as usize];
        lists.empty_low = lists.empty_low.min(empty);
        lists.moved += moved;
        // A period at least twice the cache's capacity contains the end of any burst's
        // allocation phase, so slabs a burst reuses are never counted as idle.
        let slots = lists.counts.iter().sum::<usize>() * self.per_slab;
        if lists.moved >= REAP_PERIOD.max(2 * slots) {
            // Chains that stayed in the depot all period go back to their slabs first (the
            // slabs they empty are given back at a later reap, if they stay empty).
            let idle = lists.depot_low;
            self.drain_depot(lists, idle);
            lists.depot_low = lists.depot_len;
            let excess = lists.empty_low.saturating_sub(self.max_empty);
            for _ in 0..excess {
                let slab = lists.heads[ListId::Empty as usize];
                self.unlink(lists, slab);
                self.release_slab(lists, slab);
            }
            lists.moved = 0;
            lists.empty_low = lists.counts[ListId::Empty as usize];
        }
    }

    /// Byte-level requests must fit one object (the stride, a constant of `T`, so this is one
    /// compare with a constant size).
    #[inline(always)]
    fn fits(size: usize, align: usize) -> bool {
        size <= Self::STRIDE.get() && align <= align_of::<T>()
    }

    /// Turns a constructed object into raw memory for the byte-level interface.
    fn unconstruct(&self, obj: *mut u8) {
        if self.ctor.is_some() {
            // SAFETY: objects of a constructor cache hold a constructed T when taken.
            unsafe { ptr::drop_in_place(obj.cast::<T>()) };
        }
    }

    /// Rebuilds the constructed state of raw memory coming back from the byte-level interface.
    fn reconstruct(&self, obj: *mut u8) {
        if let Some(ctor) = self.ctor {
            // SAFETY: the caller freed this object: its memory is ours and holds no live T.
            unsafe { obj.cast::<T>().write(ctor()) };
        }
    }
}

#[cfg(all(feature = "std", any(unix, windows)))]
impl<T> Default for SlabCache<'static, T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for SlabCache<'_, T> {
    fn drop(&mut self) {
        let lists = self.lists.get_mut() as *mut Lists;
        // SAFETY: `&mut self`: no magazine or handle borrows the cache; we walk and release
        // every slab once.
        unsafe {
            for list in 0..3 {
                while !(*lists).heads[list].is_null() {
                    let slab = (*lists).heads[list];
                    self.unlink(&mut *lists, slab);
                    self.drop_objects(slab);
                }
            }
            if let Some(os) = self.os {
                let source = &(*lists).source;
                for arena in source.in_use().iter().flatten() {
                    // SAFETY: each arena came from Region::reserve on this OS, once.
                    arena.region.release(os);
                }
            }
        }
    }
}

impl<T> core::fmt::Debug for SlabCache<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlabCache")
            .field("slab_size", &self.slab_size)
            .field("objects_per_slab", &self.per_slab)
            .field("stats", &self.stats())
            .finish()
    }
}

// SAFETY: objects are disjoint stride-sized slots of slabs the cache owns, aligned to T (slabs
// are slab-aligned and objects_at and stride are multiples of align_of::<T>()); a slot is
// handed out only while its table entry says it is free, and marked ALLOCATED until freed.
unsafe impl<T> TypedAlloc for SlabCache<'_, T> {
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !Self::fits(size, align) {
            self.lists.lock().failures += 1;
            record(AllocErrorKind::InvalidRequest);
            return None;
        }
        let mut one = [ptr::null_mut(); 1];
        if self.take(&mut one, None) == 0 {
            return None;
        }
        self.unconstruct(one[0]);
        NonNull::new(one[0])
    }

    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, _size: usize, _align: usize) {
        self.put(&[ptr.as_ptr()], None, true);
    }
}

impl_allocator_api2!([T] SlabCache<'_, T>);

/// What a magazine publishes when it moves a batch: its operations since the last batch and
/// how many objects it held then and holds after this move.
#[derive(Clone, Copy)]
struct MagazineReport {
    #[cfg(feature = "stats")]
    allocations: u64,
    #[cfg(feature = "stats")]
    deallocations: u64,
    held_before: usize,
    held_after: usize,
}

impl MagazineReport {
    fn publish(self, lists: &mut Lists) {
        #[cfg(feature = "stats")]
        {
            lists.allocations += self.allocations;
            lists.deallocations += self.deallocations;
        }
        lists.in_magazines =
            (lists.in_magazines + self.held_after).saturating_sub(self.held_before);
    }
}

/// Where a [`Pooled`] object goes back to.
pub trait ObjectHome<T> {
    /// Takes back a constructed object.
    ///
    /// # Safety
    /// `obj` came from this home's `get` and is in constructed state.
    unsafe fn put_back(&self, obj: NonNull<T>);
}

impl<T> ObjectHome<T> for SlabCache<'_, T> {
    unsafe fn put_back(&self, obj: NonNull<T>) {
        self.put(&[obj.as_ptr().cast()], None, false);
    }
}

/// A constructed object of a [`SlabCache`]; goes back, still constructed, when dropped.
pub struct Pooled<'h, T, H: ObjectHome<T>> {
    ptr: NonNull<T>,
    home: &'h H,
}

impl<T, H: ObjectHome<T>> Deref for Pooled<'_, T, H> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the object is constructed and owned by this handle.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, H: ObjectHome<T>> DerefMut for Pooled<'_, T, H> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above; `&mut self` makes the reference unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T, H: ObjectHome<T>> Drop for Pooled<'_, T, H> {
    fn drop(&mut self) {
        // SAFETY: the object came from this home's `get` and is still constructed.
        unsafe { self.home.put_back(self.ptr) }
    }
}

impl<T: core::fmt::Debug, H: ObjectHome<T>> core::fmt::Debug for Pooled<'_, T, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(&**self, f)
    }
}

/// The top of a linked magazine's list: its newest object (null: none) and how many objects
/// the list holds. 64-bit targets keep both in one word, the count in the top
/// [`COUNT_BITS`] bits (no object address uses them: see [`LINKABLE_END`]), so taking an
/// object stores one word and giving one back two, the link and the top — as in an
/// intrusive free list, and no more. Each object's link is the top word as it was when the
/// object was pushed, so taking the object restores the count below it with no arithmetic.
/// Other targets keep the count beside the pointer. A magazine that does not link objects
/// has a *closed* top: no object and a count past [`MAGAZINE_SLOTS`], so the list's own
/// tests (empty? full?) send every operation to the slots, with no test of their own.
struct ListTop {
    word: Cell<*mut u8>,
    #[cfg(not(target_pointer_width = "64"))]
    count: Cell<usize>,
}

/// Bits of a 64-bit list top that hold the count (up to [`MAGAZINE_SLOTS`]).
#[cfg(target_pointer_width = "64")]
const COUNT_BITS: u32 = 6;
#[cfg(target_pointer_width = "64")]
const COUNT_SHIFT: u32 = usize::BITS - COUNT_BITS;
/// Object addresses lie below this in caches whose magazines link objects: on 64-bit targets
/// the bits above it hold a list's count. No OS hands out user addresses that high (x86-64
/// with 5-level paging stays below 2^57, AArch64 below 2^52 and untagged from `mmap`); an
/// arena reserved above it is refused, a caller buffer above it gets magazines of slots.
#[cfg(target_pointer_width = "64")]
const LINKABLE_END: usize = 1 << COUNT_SHIFT;
#[cfg(not(target_pointer_width = "64"))]
const LINKABLE_END: usize = usize::MAX;

/// The count of a closed list top (see [`ListTop`]): above any real count.
#[cfg(target_pointer_width = "64")]
const CLOSED: usize = (1 << COUNT_BITS) - 1;
#[cfg(not(target_pointer_width = "64"))]
const CLOSED: usize = usize::MAX;

#[cfg(target_pointer_width = "64")]
const _: () = assert!(
    MAGAZINE_SLOTS < CLOSED,
    "a list's count and the closed mark fit"
);

impl ListTop {
    /// An empty list, or (`closed`) one that never takes an object.
    fn new(closed: bool) -> Self {
        let count = if closed { CLOSED } else { 0 };
        ListTop {
            word: Cell::new(Self::pack(ptr::null_mut(), count)),
            #[cfg(not(target_pointer_width = "64"))]
            count: Cell::new(count),
        }
    }

    /// The word that names `first` with `count` objects from it down.
    #[inline(always)]
    fn pack(first: *mut u8, count: usize) -> *mut u8 {
        #[cfg(target_pointer_width = "64")]
        return first.map_addr(|addr| addr | count << COUNT_SHIFT);
        #[cfg(not(target_pointer_width = "64"))]
        {
            let _ = count;
            first
        }
    }

    /// The object a word (a top or a link) names.
    #[inline(always)]
    fn unpack(word: *mut u8) -> *mut u8 {
        #[cfg(target_pointer_width = "64")]
        return word.map_addr(|addr| addr & (LINKABLE_END - 1));
        #[cfg(not(target_pointer_width = "64"))]
        word
    }

    /// The newest object; null when the list is empty.
    #[inline(always)]
    fn first(&self) -> *mut u8 {
        Self::unpack(self.word.get())
    }

    /// Objects on the list.
    #[inline(always)]
    fn len(&self) -> usize {
        #[cfg(target_pointer_width = "64")]
        return self.word.get().addr() >> COUNT_SHIFT;
        #[cfg(not(target_pointer_width = "64"))]
        self.count.get()
    }

    /// The list holds fewer than [`LIST_SLOTS`] objects (never true of a closed one).
    #[inline(always)]
    fn has_room(&self) -> bool {
        #[cfg(target_pointer_width = "64")]
        return self.word.get().addr() < LIST_SLOTS << COUNT_SHIFT;
        #[cfg(not(target_pointer_width = "64"))]
        {
            self.count.get() < LIST_SLOTS
        }
    }

    #[inline(always)]
    fn set(&self, first: *mut u8, count: usize) {
        self.word.set(Self::pack(first, count));
        #[cfg(not(target_pointer_width = "64"))]
        self.count.set(count);
    }

    /// Takes `obj` off the list.
    ///
    /// # Safety
    /// `obj` is [`ListTop::first`], not null.
    #[inline(always)]
    unsafe fn pop(&self, obj: *mut u8) {
        // SAFETY: an object on the list holds its link in its first word, written by `push`
        // (unaligned: objects need not be pointer-aligned).
        self.word
            .set(unsafe { obj.cast::<*mut u8>().read_unaligned() });
        #[cfg(not(target_pointer_width = "64"))]
        self.count.set(self.count.get() - 1);
    }

    /// Puts `obj` on top of the list.
    ///
    /// # Safety
    /// `obj` is an object of the cache nobody uses, at least a pointer in size, below
    /// [`LINKABLE_END`]; the list holds fewer than [`LIST_SLOTS`] objects.
    #[inline(always)]
    unsafe fn push(&self, obj: *mut u8) {
        let word = self.word.get();
        // SAFETY: the caller's contract: the object's first pointer-sized bytes are ours.
        unsafe { obj.cast::<*mut u8>().write_unaligned(word) };
        // The count bits of `word` plus one, over the object's address.
        #[cfg(target_pointer_width = "64")]
        self.word.set(obj.map_addr(|addr| {
            addr | (word.addr() & !(LINKABLE_END - 1)).wrapping_add(LINKABLE_END)
        }));
        #[cfg(not(target_pointer_width = "64"))]
        {
            self.word.set(obj);
            self.count.set(self.count.get() + 1);
        }
    }

    /// Detaches the `count` oldest objects (the bottom of the list; at most all of them) and
    /// returns the newest of them, or null if there are none: a list of its own, each link
    /// naming the next object with the count below it and the last one null, as the bottom of
    /// a list always is. The links of the objects that stay are rewritten with their new
    /// counts (the stayers are walked; the detached objects are not touched).
    fn split_oldest(&self, count: usize) -> *mut u8 {
        let keep = self.len().saturating_sub(count);
        let mut obj = self.first();
        self.set(if keep == 0 { ptr::null_mut() } else { obj }, keep);
        for below in (0..keep).rev() {
            // SAFETY: `keep` objects are on the list from `first` down, each linking the next.
            unsafe {
                let next = Self::unpack(obj.cast::<*mut u8>().read_unaligned());
                let link = if below == 0 { ptr::null_mut() } else { next };
                obj.cast::<*mut u8>()
                    .write_unaligned(Self::pack(link, below));
                obj = next;
            }
        }
        obj
    }

    /// Moves the `out.len()` oldest objects (the bottom of the list) into `out`; the list must
    /// hold at least that many. The links of the objects that stay are rewritten with their
    /// new counts.
    fn take_oldest(&self, out: &mut [*mut u8]) {
        let len = self.len();
        let keep = len.saturating_sub(out.len());
        let chain = self.split_oldest(out.len());
        // `len - keep` is at most `out.len()`: the `get_mut` always succeeds.
        if let Some(out) = out.get_mut(..len - keep) {
            // SAFETY: the detached bottom of the list, `len - keep` linked objects.
            unsafe { Self::read_chain(chain, out) };
        }
    }

    /// The objects of a detached chain (`first` its newest), newest first, into `out`.
    ///
    /// # Safety
    /// `first` heads a chain of at least `out.len()` free objects of a linked magazine's
    /// cache, each holding the next one's word in its first bytes (see [`ListTop`]).
    unsafe fn read_chain(first: *mut u8, out: &mut [*mut u8]) {
        let mut obj = first;
        for slot in out.iter_mut() {
            *slot = obj;
            // SAFETY: the caller's contract: `obj` is one of the chain's objects.
            obj = Self::unpack(unsafe { obj.cast::<*mut u8>().read_unaligned() });
        }
    }
}

/// A per-thread magazine of a [`SlabCache`]: objects come and go without the lock; half a
/// magazine moves at once. Dropping it returns its objects to their slabs.
///
/// Objects of a cache without a constructor (at least a pointer in size) are *linked*: the
/// newest free object waits in `hot`, the others on a LIFO list through each free object's
/// first word, headed by `top`, which also counts them (up to [`LIST_SLOTS`], so the
/// magazine holds at most [`MAGAZINE_SLOTS`]). A free into an empty `hot` is one store, and
/// an allocation that finds it full another: a free followed by an allocation hands back the
/// same, cache-hot object without touching the list. Without `hot`, that pair went through
/// the list's count: the free's new top is the object with the count of the top before it,
/// which the allocation had just loaded from the object's link, so each pair waited for the
/// previous one's link load and count arithmetic (the pool's free sets its head to the
/// freed pointer and waits for nothing). A free that finds `hot` full moves its object onto
/// the list; an allocation that finds it empty takes the list's first object. Constructed
/// objects keep their state while they wait, so they cannot hold a link: they sit in
/// `slots`, the newest on top (so do objects smaller than a pointer), and both `hot` and the
/// list's top are closed.
pub struct Magazine<'c, 'a, T> {
    cache: &'c SlabCache<'a, T>,
    /// Objects are linked, not in slots (fixed when the magazine is made).
    linked: bool,
    /// The newest free object of a linked magazine, null for none; [`CLOSED_HOT`] in a
    /// magazine that does not link.
    hot: Cell<*mut u8>,
    top: ListTop,
    slots: [Cell<NonNull<u8>>; MAGAZINE_SLOTS],
    len: Cell<usize>,
    /// With the `stats` feature: operations since the last batch move.
    #[cfg(feature = "stats")]
    allocations: Cell<u64>,
    #[cfg(feature = "stats")]
    deallocations: Cell<u64>,
    /// Objects held as published at the last batch move.
    published_len: Cell<usize>,
}

impl<T> Magazine<'_, '_, T> {
    /// Objects held.
    pub fn cached(&self) -> usize {
        if self.linked {
            self.top.len() + usize::from(self.hot_held())
        } else {
            self.len()
        }
    }

    /// `hot` holds an object (neither empty nor closed).
    #[inline(always)]
    fn hot_held(&self) -> bool {
        self.hot.get().addr() > CLOSED_HOT.addr()
    }

    /// `len`, which every store keeps at most [`MAGAZINE_SLOTS`] (a refill takes at most a
    /// batch into an empty magazine, a push into a full one flushes first). The `min` is never
    /// taken; it lets the compiler see that `slots[..len]` is in bounds, so the slot accesses
    /// have no check that could panic.
    #[inline(always)]
    fn len(&self) -> usize {
        self.len.get().min(MAGAZINE_SLOTS)
    }

    /// A constructed object (see [`SlabCache::get`]).
    pub fn get(&self) -> Option<Pooled<'_, T, Self>> {
        if self.cache.ctor.is_none() {
            record(AllocErrorKind::InvalidRequest);
            return None;
        }
        let ptr = self.pop()?.cast();
        Some(Pooled { ptr, home: self })
    }

    /// The hot object, else the top of the list, else the top slot, else a refill.
    #[inline]
    fn pop(&self) -> Option<NonNull<u8>> {
        let obj = match self.take_hot().or_else(|| self.take_linked()) {
            Some(obj) => obj,
            None => self.pop_unlinked()?,
        };
        Some(self.handed_out(obj))
    }

    /// Fast path: the hot object, unless `hot` is empty or closed.
    #[inline(always)]
    fn take_hot(&self) -> Option<NonNull<u8>> {
        if !self.hot_held() {
            return None;
        }
        let obj = self.hot.replace(ptr::null_mut());
        NonNull::new(obj)
    }

    /// The list's first object, unless the list is empty or closed.
    #[inline(always)]
    fn take_linked(&self) -> Option<NonNull<u8>> {
        let obj = NonNull::new(self.top.first())?;
        // SAFETY: `obj` is the list's first object.
        unsafe { self.top.pop(obj.as_ptr()) };
        Some(obj)
    }

    /// The list is empty or closed (`pop` tried it): the top slot, else a refill.
    #[inline]
    fn pop_unlinked(&self) -> Option<NonNull<u8>> {
        let len = self.len();
        if len > 0 {
            self.len.set(len - 1);
            return Some(self.slots[len - 1].get());
        }
        self.refill();
        self.take_linked().or_else(|| {
            let len = self.len().checked_sub(1)?;
            self.len.set(len);
            Some(self.slots[len].get())
        })
    }

    /// An object leaves the magazine: marked in use (debug builds), counted (`stats`).
    #[inline(always)]
    fn handed_out(&self, obj: NonNull<u8>) -> NonNull<u8> {
        if cfg!(debug_assertions) {
            self.mark(obj.as_ptr(), IN_MAGAZINE, ALLOCATED);
        }
        #[cfg(feature = "stats")]
        self.allocations.set(self.allocations.get() + 1);
        obj
    }

    /// Debug builds: checks `obj` is an object of ours in use and marks it as in a magazine;
    /// reports and returns `false` otherwise. Release builds: always `true`.
    #[inline]
    fn accept(&self, obj: *mut u8) -> bool {
        if cfg!(debug_assertions) && !self.mark(obj, ALLOCATED, IN_MAGAZINE) {
            let mut lists = self.cache.lists.lock();
            lists.misuse += 1;
            record(AllocErrorKind::DoubleFree);
            return false;
        }
        true
    }

    /// Adds an accepted object: into an empty `hot`, else (`push_slow`) onto the list or (not
    /// linked) into the slots; `rebuild`: a constructor cache's object coming back from the
    /// byte interface (raw memory).
    #[inline]
    fn push(&self, obj: NonNull<u8>, rebuild: bool) {
        let older = self.hot.get();
        if older.is_null() {
            // Only a linked magazine's `hot` is ever empty (a closed one is not null): its
            // cache has no constructor, so there is nothing to rebuild.
            self.hot.set(obj.as_ptr());
        } else if self.top.has_room() {
            // SAFETY: the list is open (a closed one counts more than LIST_SLOTS), so the
            // magazine is linked: its objects hold a pointer and lie below LINKABLE_END
            // (`SlabCache::magazine`), and its `hot` is null or an object, here an object
            // accepted before, so nobody uses it; the list has room.
            unsafe { self.top.push(older) };
            self.hot.set(obj.as_ptr());
        } else {
            self.push_slow(obj, rebuild);
        }
        #[cfg(feature = "stats")]
        self.deallocations.set(self.deallocations.get() + 1);
    }

    /// A full `hot` over a full list (the list's oldest half is deposited, then the hot
    /// object moves onto the list), or the slots of a magazine that does not link.
    #[inline(never)]
    fn push_slow(&self, obj: NonNull<u8>, rebuild: bool) {
        if self.linked {
            self.deposit_oldest();
            let older = self.hot.replace(obj.as_ptr());
            // SAFETY: as in `push`; the deposit left room.
            unsafe { self.top.push(older) };
        } else {
            if rebuild {
                self.cache.reconstruct(obj.as_ptr());
            }
            self.push_slot(obj);
        }
    }

    #[inline]
    fn push_slot(&self, obj: NonNull<u8>) {
        let mut len = self.len();
        // Full: make room (one flush of a batch does; the loop lets the compiler see that
        // `len` indexes a slot).
        while len == MAGAZINE_SLOTS {
            self.flush(MAGAZINE_BATCH);
            len = self.len();
        }
        self.slots[len].set(obj);
        self.len.set(len + 1);
    }

    /// Debug builds: moves an object's table entry from `from` to `to`; `false` if it did not
    /// read `from` (or the pointer is not ours).
    fn mark(&self, obj: *mut u8, from: u32, to: u32) -> bool {
        let cache = self.cache;
        let lists = cache.lists.lock();
        if !cache.owns(&lists, obj) {
            return false;
        }
        let Some((slab, index)) = cache.locate(&lists, obj) else {
            return false;
        };
        let entry = cache.table(slab).wrapping_add(index);
        // SAFETY: the object is ours (checked) and its slab valid under the lock.
        unsafe {
            if *entry != from {
                return false;
            }
            *entry = to;
        }
        true
    }

    /// The report of a batch move that leaves `held_after` objects here.
    fn report(&self, held_after: usize) -> MagazineReport {
        let report = MagazineReport {
            #[cfg(feature = "stats")]
            allocations: self.allocations.replace(0),
            #[cfg(feature = "stats")]
            deallocations: self.deallocations.replace(0),
            held_before: self.published_len.get(),
            held_after,
        };
        self.published_len.set(held_after);
        report
    }

    /// Refills an empty magazine (`pop` found the list and the slots empty).
    #[cold]
    #[inline(never)]
    fn refill(&self) {
        let mut batch = [ptr::null_mut(); MAGAZINE_BATCH];
        // The fill level after the move is not known before it: `take` adds what it took.
        let report = self.report(0);
        // `take` fills `got <= MAGAZINE_BATCH` entries of the batch, with non-null objects.
        let got = if self.linked {
            match self.cache.withdraw(report, &mut batch) {
                Ok(chain) => {
                    // A chain from the depot becomes the list as it is (its links hold their
                    // counts).
                    self.top.set(chain, MAGAZINE_BATCH);
                    self.published_len.set(MAGAZINE_BATCH);
                    return;
                }
                Err(got) => got,
            }
        } else {
            self.cache.take(&mut batch, Some(report))
        };
        let objects = batch.iter().take(got).filter_map(|&obj| NonNull::new(obj));
        let mut held = 0;
        if self.linked {
            for obj in objects {
                // SAFETY: as in `push`: a fresh object of a linked magazine's cache; the
                // list was empty and takes at most a batch.
                unsafe { self.top.push(obj.as_ptr()) };
                held += 1;
            }
        } else {
            // A batch is shorter than the slots: the zip drops nothing.
            for (slot, obj) in self.slots.iter().zip(objects) {
                slot.set(obj);
                held += 1;
            }
            self.len.set(held);
        }
        self.published_len.set(held);
    }

    /// A full linked list: its oldest half goes to the depot as one chain, already linked
    /// (or, the depot full, to its slabs). The flush it replaced walked all 32 objects and
    /// returned 16 to their slabs one by one: `pool_bursts/slab_magazine` spent 54% of its
    /// time there and 22% in refills.
    #[cold]
    #[inline(never)]
    fn deposit_oldest(&self) {
        debug_assert!(self.linked && self.top.len() == LIST_SLOTS);
        let chain = self.top.split_oldest(MAGAZINE_BATCH);
        let report = self.report(self.cached());
        self.cache.deposit(chain, report);
    }

    /// Moves the `count` oldest objects to their slabs (the hot object, the newest, goes onto
    /// the list: a flush comes before a drop, or makes room in the slots of a magazine that
    /// does not link, whose `hot` is closed).
    #[cold]
    #[inline(never)]
    fn flush(&self, count: usize) {
        let mut batch = [ptr::null_mut(); MAGAZINE_SLOTS];
        let (count, left) = if self.linked {
            let count = count.min(self.top.len()).min(MAGAZINE_SLOTS);
            self.top.take_oldest(&mut batch[..count]);
            if self.hot_held() && self.top.has_room() {
                let hot = self.hot.replace(ptr::null_mut());
                // SAFETY: as in `push_slow`: a linked magazine's free object; room checked.
                unsafe { self.top.push(hot) };
            }
            (count, self.cached())
        } else {
            let len = self.len();
            let count = count.min(len);
            for (out, slot) in batch.iter_mut().zip(&self.slots[..count]) {
                *out = slot.get().as_ptr();
            }
            for i in count..len {
                self.slots[i - count].set(self.slots[i].get());
            }
            self.len.set(len - count);
            (count, len - count)
        };
        let report = self.report(left);
        self.cache.put(&batch[..count], Some(report), false);
    }
}

impl<T> ObjectHome<T> for Magazine<'_, '_, T> {
    unsafe fn put_back(&self, obj: NonNull<T>) {
        if self.accept(obj.as_ptr().cast()) {
            self.push(obj.cast(), false);
        }
    }
}

// SAFETY: objects come from the cache (see its implementation) and are held by this magazine
// alone until handed out.
unsafe impl<T> TypedAlloc for Magazine<'_, '_, T> {
    /// Fast path: a compare with a constant (folded away), the hot object taken (`hot` loaded,
    /// tested and cleared); else the list's first object (its link loaded, the top stored).
    #[inline]
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        if !SlabCache::<T>::fits(size, align) {
            record(AllocErrorKind::InvalidRequest);
            return None;
        }
        if let Some(obj) = self.take_hot().or_else(|| self.take_linked()) {
            // A linked magazine's cache has no constructor: the object is raw memory.
            return Some(self.handed_out(obj));
        }
        let obj = self.handed_out(self.pop_unlinked()?);
        if !self.linked {
            self.cache.unconstruct(obj.as_ptr());
        }
        Some(obj)
    }

    /// Fast path: `hot` tested, the object stored there (one store); else onto the list.
    #[inline]
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, _size: usize, _align: usize) {
        if self.accept(ptr.as_ptr()) {
            self.push(ptr, true);
        }
    }
}

impl_allocator_api2!(['c, 'a, T] Magazine<'c, 'a, T>);

impl<T> Drop for Magazine<'_, '_, T> {
    fn drop(&mut self) {
        // At least once, so counts of a magazine that never filled are published too.
        loop {
            self.flush(MAGAZINE_BATCH);
            if self.cached() == 0 {
                break;
            }
        }
    }
}

impl<T> core::fmt::Debug for Magazine<'_, '_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Magazine")
            .field("cached", &self.cached())
            .finish()
    }
}
