//! Where a strategy allocator's memory comes from: regions reserved through an [`Os`] (released
//! when the allocator is dropped), or a buffer the caller lends (never released: it is the
//! caller's).
//!
//! May touch: [`crate::os`], [`crate::error`].

use core::mem::MaybeUninit;
use core::ptr::NonNull;

use crate::error::{record, AllocErrorKind};
use crate::os::Os;

/// One span of memory a strategy carves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Region {
    pub(crate) base: NonNull<u8>,
    pub(crate) len: usize,
}

impl Region {
    /// The span of a caller's buffer.
    pub(crate) fn of_buffer(buffer: &mut [MaybeUninit<u8>]) -> Self {
        let len = buffer.len();
        let base = NonNull::new(buffer.as_mut_ptr().cast::<u8>()).unwrap_or(NonNull::dangling());
        Region { base, len }
    }

    /// Reserves and commits `size` bytes aligned to `align` from `os`. Records
    /// [`AllocErrorKind::OutOfMemory`] and returns `None` when the OS refuses.
    pub(crate) fn reserve(os: &dyn Os, size: usize, align: usize) -> Option<Self> {
        let Some(base) = os.reserve(size, align) else {
            record(AllocErrorKind::OutOfMemory);
            return None;
        };
        // SAFETY: `base..base+size` is the region just reserved.
        if !unsafe { os.commit(base, size) } {
            // SAFETY: exactly the region just reserved; nothing uses it.
            unsafe { os.release(base, size) };
            record(AllocErrorKind::OutOfMemory);
            return None;
        }
        Some(Region { base, len: size })
    }

    /// Gives a region from [`Region::reserve`] back.
    ///
    /// # Safety
    /// `self` came from `Region::reserve` on `os`, is released once, and nothing uses it after.
    pub(crate) unsafe fn release(self, os: &dyn Os) {
        // SAFETY: the caller's contract.
        unsafe { os.release(self.base, self.len) }
    }

    /// The address one past the end.
    pub(crate) fn end_addr(&self) -> usize {
        self.base.as_ptr() as usize + self.len
    }

    /// The pointer `offset` bytes in, with the region's provenance.
    ///
    /// # Safety
    /// `offset <= self.len`.
    #[inline(always)]
    pub(crate) unsafe fn at(&self, offset: usize) -> NonNull<u8> {
        // SAFETY: the caller keeps offset within the region; a non-null base plus an in-bounds
        // offset is non-null.
        unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset)) }
    }
}

/// The process's [`crate::os::SystemOs`], for the strategies' `std` constructors.
#[cfg(all(feature = "std", any(unix, windows)))]
pub(crate) static SYSTEM_OS: crate::os::SystemOs = crate::os::SystemOs;
