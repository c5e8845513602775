//! The interface every allocscope allocator offers besides `GlobalAlloc`: [`TypedAlloc`] (two
//! byte-level calls each allocator writes, and typed calls built on them), [`Owned`] (an RAII
//! handle that frees on drop), and the glue that derives `allocator_api2::alloc::Allocator` and
//! `GlobalAlloc` from it so no allocator writes them by hand.
//!
//! May touch: nothing but `allocator_api2`; the allocators depend on this module, not the
//! other way round.

use core::alloc::Layout;
use core::fmt;
use core::marker::PhantomData;
use core::mem::{align_of, size_of, ManuallyDrop};
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

/// Byte-level allocation, plus typed calls and RAII handles built on it.
///
/// # Safety
/// Implementors promise that a pointer returned by [`TypedAlloc::allocate_bytes`] is valid for
/// reads and writes of `size` bytes, aligned to `align`, disjoint from every other live block,
/// and stays valid until it is passed to [`TypedAlloc::deallocate_bytes`] or the allocator is
/// dropped; and that [`TypedAlloc::resize_in_place`] returns `true` only when the block now
/// holds `new_size` bytes at the same address. `Allocator` and `GlobalAlloc` implementations
/// derived from this trait rely on it.
pub unsafe trait TypedAlloc {
    /// Allocates `size` bytes aligned to `align` (a power of two). `None` when the allocator is
    /// exhausted or cannot serve the request; [`crate::error::last_error`] says which. A zero
    /// `size` still returns a distinct block.
    fn allocate_bytes(&self, size: usize, align: usize) -> Option<NonNull<u8>>;

    /// Frees a block. Misuse this allocator can detect cheaply (a double free, a pointer it did
    /// not hand out) is refused, counted in its statistics and recorded for
    /// [`crate::error::last_error`]; which checks run in release builds is documented per
    /// allocator.
    ///
    /// # Safety
    /// `ptr` came from `allocate_bytes(size, align)` on this allocator (or was resized to
    /// `size` by [`TypedAlloc::resize_in_place`]) and is not used afterwards.
    unsafe fn deallocate_bytes(&self, ptr: NonNull<u8>, size: usize, align: usize);

    /// Tries to make the block at `ptr` hold `new_size` bytes without moving it. The default
    /// never can; allocators that sometimes can (the top of a stack, a buddy block with room)
    /// override it.
    ///
    /// # Safety
    /// `ptr` is a live block of this allocator of `old_size` bytes allocated with `align`.
    unsafe fn resize_in_place(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        align: usize,
    ) -> bool {
        let _ = (ptr, old_size, new_size, align);
        false
    }

    /// Allocates room for `count` values of `T`, uninitialised. `None` when exhausted or when
    /// `count * size_of::<T>()` overflows. Zero-sized requests get a dangling pointer.
    #[inline]
    fn allocate<T>(&self, count: usize) -> Option<NonNull<T>>
    where
        Self: Sized,
    {
        let Ok(layout) = Layout::array::<T>(count) else {
            crate::error::record(crate::error::AllocErrorKind::InvalidRequest);
            return None;
        };
        if layout.size() == 0 {
            return Some(NonNull::dangling());
        }
        self.allocate_bytes(layout.size(), layout.align())
            .map(NonNull::cast)
    }

    /// Frees what [`TypedAlloc::allocate`] gave. Values in it are not dropped.
    ///
    /// # Safety
    /// `ptr` came from `allocate::<T>(count)` on this allocator, with the same `count`, and is
    /// not used afterwards.
    #[inline]
    unsafe fn deallocate<T>(&self, ptr: NonNull<T>, count: usize)
    where
        Self: Sized,
    {
        let size = size_of::<T>() * count;
        if size != 0 {
            // SAFETY: the caller guarantees `ptr` came from allocate::<T>(count), which asked
            // allocate_bytes for exactly this size and alignment.
            unsafe { self.deallocate_bytes(ptr.cast(), size, align_of::<T>()) }
        }
    }

    /// Moves `value` into a new block and returns a handle that drops it and frees the block
    /// when dropped. Gives `value` back when the allocator is exhausted.
    #[inline]
    fn boxed<T>(&self, value: T) -> Result<Owned<'_, T, Self>, T>
    where
        Self: Sized,
    {
        match self.allocate::<T>(1) {
            Some(ptr) => {
                // SAFETY: `ptr` is a fresh block with room and alignment for one T.
                unsafe { ptr.as_ptr().write(value) };
                Ok(Owned {
                    ptr,
                    alloc: self,
                    _owns: PhantomData,
                })
            }
            None => Err(value),
        }
    }
}

/// A value in a block of allocator `A`: dropping the handle drops the value and frees the block.
/// Moving the handle moves a pointer, never the value.
pub struct Owned<'a, T, A: TypedAlloc + ?Sized> {
    ptr: NonNull<T>,
    alloc: &'a A,
    _owns: PhantomData<T>,
}

// SAFETY: the handle owns its T like a Box does; sending it sends the T and a shared reference
// to the allocator, which must itself be shareable (A: Sync) for that.
unsafe impl<T: Send, A: TypedAlloc + Sync + ?Sized> Send for Owned<'_, T, A> {}
// SAFETY: `&Owned` gives only `&T`, and a shared reference to a Sync allocator.
unsafe impl<T: Sync, A: TypedAlloc + Sync + ?Sized> Sync for Owned<'_, T, A> {}

impl<'a, T, A: TypedAlloc + ?Sized> Owned<'a, T, A> {
    /// Takes the value out and frees the block.
    pub fn into_inner(self) -> T {
        let this = ManuallyDrop::new(self);
        // SAFETY: the block holds a live T that nobody else reads; ManuallyDrop keeps our Drop
        // from reading or dropping it again.
        let value = unsafe { this.ptr.as_ptr().read() };
        if size_of::<T>() != 0 {
            // SAFETY: the block came from this allocator for one T and is not used after.
            unsafe {
                this.alloc
                    .deallocate_bytes(this.ptr.cast(), size_of::<T>(), align_of::<T>())
            }
        }
        value
    }

    /// Gives up ownership without dropping or freeing: the caller frees with
    /// [`TypedAlloc::deallocate`] (count 1) after dropping the value.
    pub fn into_raw(self) -> NonNull<T> {
        ManuallyDrop::new(self).ptr
    }

    /// The block's address.
    pub fn as_ptr(&self) -> NonNull<T> {
        self.ptr
    }
}

impl<T, A: TypedAlloc + ?Sized> Deref for Owned<'_, T, A> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the block holds a live T owned by this handle.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, A: TypedAlloc + ?Sized> DerefMut for Owned<'_, T, A> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the block holds a live T owned by this handle; `&mut self` makes it unique.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T: fmt::Debug, A: TypedAlloc + ?Sized> fmt::Debug for Owned<'_, T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T, A: TypedAlloc + ?Sized> Drop for Owned<'_, T, A> {
    fn drop(&mut self) {
        // SAFETY: the block holds a live T owned by this handle, dropped exactly once here.
        unsafe { core::ptr::drop_in_place(self.ptr.as_ptr()) };
        if size_of::<T>() != 0 {
            // SAFETY: the block came from this allocator for one T and is not used after.
            unsafe {
                self.alloc
                    .deallocate_bytes(self.ptr.cast(), size_of::<T>(), align_of::<T>())
            }
        }
    }
}

/// A dangling, well-aligned pointer for zero-sized blocks.
#[inline]
fn dangling(align: usize) -> NonNull<u8> {
    // Strict provenance: an address without provenance (offset from null), never dereferenced.
    NonNull::new(core::ptr::null_mut::<u8>().wrapping_add(align)).unwrap_or(NonNull::dangling())
}

/// The `allocator_api2::alloc::Allocator` methods in terms of [`TypedAlloc`];
/// [`impl_allocator_api2`] calls them. Not for direct use.
#[doc(hidden)]
pub mod api2 {
    use super::*;
    use allocator_api2::alloc::AllocError;

    /// `Allocator::allocate`.
    #[inline]
    pub fn allocate<A: TypedAlloc + ?Sized>(
        a: &A,
        layout: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let ptr = a
            .allocate_bytes(layout.size(), layout.align())
            .ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    /// `Allocator::deallocate`.
    ///
    /// # Safety
    /// `Allocator::deallocate`'s contract.
    #[inline]
    pub unsafe fn deallocate<A: TypedAlloc + ?Sized>(a: &A, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: Allocator's contract: `ptr` is a live block allocated with `layout`.
            unsafe { a.deallocate_bytes(ptr, layout.size(), layout.align()) }
        }
    }

    /// `Allocator::grow`, `grow_zeroed` and `shrink`: in place when the allocator can, else
    /// allocate, copy, free.
    ///
    /// # Safety
    /// `Allocator::grow`'s (or `shrink`'s) contract.
    #[inline]
    pub unsafe fn resize<A: TypedAlloc + ?Sized>(
        a: &A,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero_tail: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: Allocator's contract: `ptr` is a live block allocated with `old`.
        let in_place = old.size() != 0
            && new.size() != 0
            && new.align() <= old.align()
            && unsafe { a.resize_in_place(ptr, old.size(), new.size(), old.align()) };
        let (block, copy) = if in_place {
            (ptr, 0)
        } else {
            let block = allocate(a, new)?.cast::<u8>();
            (block, old.size().min(new.size()))
        };
        if !in_place {
            // SAFETY: both blocks are live, distinct, and at least `copy` bytes long.
            unsafe { core::ptr::copy_nonoverlapping(ptr.as_ptr(), block.as_ptr(), copy) };
            // SAFETY: Allocator's contract: `ptr` was allocated with `old`; not used after.
            unsafe { deallocate(a, ptr, old) };
        }
        if zero_tail && new.size() > old.size() {
            // SAFETY: the block holds new.size() bytes; the tail past old.size() is ours.
            unsafe {
                core::ptr::write_bytes(block.as_ptr().add(old.size()), 0, new.size() - old.size())
            };
        }
        Ok(NonNull::slice_from_raw_parts(block, new.size()))
    }
}

/// The `GlobalAlloc` methods in terms of [`TypedAlloc`]. Not for direct use.
#[doc(hidden)]
pub mod global {
    use super::*;

    /// `GlobalAlloc::alloc` (null on failure).
    #[inline]
    pub fn alloc<A: TypedAlloc + ?Sized>(a: &A, layout: Layout) -> *mut u8 {
        a.allocate_bytes(layout.size(), layout.align())
            .map_or(core::ptr::null_mut(), NonNull::as_ptr)
    }

    /// `GlobalAlloc::dealloc`.
    ///
    /// # Safety
    /// `GlobalAlloc::dealloc`'s contract.
    #[inline]
    pub unsafe fn dealloc<A: TypedAlloc + ?Sized>(a: &A, ptr: *mut u8, layout: Layout) {
        if let Some(ptr) = NonNull::new(ptr) {
            // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc(layout)`.
            unsafe { a.deallocate_bytes(ptr, layout.size(), layout.align()) }
        }
    }

    /// `GlobalAlloc::realloc` (null on failure, the old block untouched).
    ///
    /// # Safety
    /// `GlobalAlloc::realloc`'s contract.
    #[inline]
    pub unsafe fn realloc<A: TypedAlloc + ?Sized>(
        a: &A,
        ptr: *mut u8,
        layout: Layout,
        new_size: usize,
    ) -> *mut u8 {
        let Some(old) = NonNull::new(ptr) else {
            return core::ptr::null_mut();
        };
        let Ok(new) = Layout::from_size_align(new_size, layout.align()) else {
            return core::ptr::null_mut();
        };
        // SAFETY: GlobalAlloc's contract: `ptr` came from `alloc(layout)`; api2::resize has
        // the same requirements (a non-zero-sized live block).
        match unsafe { api2::resize(a, old, layout, new, false) } {
            Ok(block) => block.cast::<u8>().as_ptr(),
            Err(_) => core::ptr::null_mut(),
        }
    }
}

/// Implements `allocator_api2::alloc::Allocator` for a type that implements [`TypedAlloc`]:
/// `impl_allocator_api2!([generics] Type);`. `allocator_api2` then also gives it to `&Type`,
/// so `allocator_api2::vec::Vec<T, &Pool>` and hashbrown maps work.
macro_rules! impl_allocator_api2 {
    ([$($generics:tt)*] $ty:ty) => {
        // SAFETY: every method forwards to the type's TypedAlloc implementation, whose unsafe
        // contract gives exactly what Allocator requires (valid, aligned, disjoint blocks that
        // live until freed or until the allocator is dropped).
        unsafe impl<$($generics)*> allocator_api2::alloc::Allocator for $ty {
            #[inline]
            fn allocate(
                &self,
                layout: core::alloc::Layout,
            ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                $crate::typed::api2::allocate(self, layout)
            }

            #[inline]
            unsafe fn deallocate(&self, ptr: core::ptr::NonNull<u8>, layout: core::alloc::Layout) {
                // SAFETY: Allocator's contract, forwarded unchanged.
                unsafe { $crate::typed::api2::deallocate(self, ptr, layout) }
            }

            #[inline]
            unsafe fn grow(
                &self,
                ptr: core::ptr::NonNull<u8>,
                old: core::alloc::Layout,
                new: core::alloc::Layout,
            ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator's contract, forwarded unchanged.
                unsafe { $crate::typed::api2::resize(self, ptr, old, new, false) }
            }

            #[inline]
            unsafe fn grow_zeroed(
                &self,
                ptr: core::ptr::NonNull<u8>,
                old: core::alloc::Layout,
                new: core::alloc::Layout,
            ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator's contract, forwarded unchanged.
                unsafe { $crate::typed::api2::resize(self, ptr, old, new, true) }
            }

            #[inline]
            unsafe fn shrink(
                &self,
                ptr: core::ptr::NonNull<u8>,
                old: core::alloc::Layout,
                new: core::alloc::Layout,
            ) -> Result<core::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError> {
                // SAFETY: Allocator's contract, forwarded unchanged.
                unsafe { $crate::typed::api2::resize(self, ptr, old, new, false) }
            }
        }
    };
}
pub(crate) use impl_allocator_api2;
