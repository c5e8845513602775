// The C allocation ABI, written once for both preload libraries: `liballocscope.so` (the
// release heap) and `liballocscope_debug.so` (the instrumented tracker). Each includes this
// file and invokes `c_abi!()` next to a module `backend` offering `alloc(size, align)`,
// `alloc_zeroed`, `free`, `realloc(ptr, size, align)`, `usable_size` (which set `errno` on
// failure themselves), `collect()` and `malloc_align(size)`: the alignment to ask the heap for
// so that `malloc(size)` keeps C's promise (16, or 8 for requests of at most 8 bytes).
//
// Failures follow C: null plus `errno` (`ENOMEM`, `EINVAL`), never a message or an abort.

macro_rules! c_abi {
    () => {
        use core::ffi::c_void;
        use core::ptr::null_mut;

        #[inline(always)]
        fn set_errno(code: i32) {
            // SAFETY: __errno_location returns the calling thread's errno slot.
            unsafe { *libc::__errno_location() = code };
        }

        #[inline(always)]
        fn page_size() -> usize {
            // SAFETY: sysconf has no preconditions.
            let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if p > 0 {
                p as usize
            } else {
                4096
            }
        }

        /// C's `max_align_t`: the alignment `malloc` promises (8-byte blocks keep 8).
        const MIN_ALIGN: usize = 16;

        /// `malloc(size)`: at least `size` bytes aligned to 16 (8 for requests of 8 bytes or less).
        #[no_mangle]
        pub extern "C" fn malloc(size: usize) -> *mut c_void {
            backend::alloc(size, backend::malloc_align(size)).cast()
        }

        /// `free(ptr)`. `ptr` is null or a live block of this heap.
        #[no_mangle]
        pub unsafe extern "C" fn free(ptr: *mut c_void) {
            // SAFETY: C's contract: `ptr` is null or came from this allocator and is freed once.
            unsafe { backend::free(ptr.cast()) }
        }

        /// C23 `free_sized`: the size is a hint we do not need.
        #[no_mangle]
        pub unsafe extern "C" fn free_sized(ptr: *mut c_void, _size: usize) {
            // SAFETY: as for `free`.
            unsafe { backend::free(ptr.cast()) }
        }

        /// C23 `free_aligned_sized`.
        #[no_mangle]
        pub unsafe extern "C" fn free_aligned_sized(ptr: *mut c_void, _align: usize, _size: usize) {
            // SAFETY: as for `free`.
            unsafe { backend::free(ptr.cast()) }
        }

        /// `calloc(n, size)`: zeroed; the memset is skipped on fresh OS memory.
        #[no_mangle]
        pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
            let Some(total) = n.checked_mul(size) else {
                set_errno(libc::ENOMEM);
                return null_mut();
            };
            backend::alloc_zeroed(total, backend::malloc_align(total)).cast()
        }

        /// `realloc(ptr, size)`: glibc's semantics for `size == 0` (free, return null).
        #[no_mangle]
        pub unsafe extern "C" fn realloc(ptr: *mut c_void, size: usize) -> *mut c_void {
            if !ptr.is_null() && size == 0 {
                // SAFETY: C's contract: `ptr` is a live block.
                unsafe { backend::free(ptr.cast()) };
                return null_mut();
            }
            // SAFETY: C's contract: `ptr` is null or a live block of this heap.
            unsafe { backend::realloc(ptr.cast(), size, backend::malloc_align(size)) }.cast()
        }

        /// `reallocarray(ptr, n, size)`: `realloc` with an overflow check.
        #[no_mangle]
        pub unsafe extern "C" fn reallocarray(ptr: *mut c_void, n: usize, size: usize) -> *mut c_void {
            match n.checked_mul(size) {
                // SAFETY: forwarded.
                Some(total) => unsafe { realloc(ptr, total) },
                None => {
                    set_errno(libc::ENOMEM);
                    null_mut()
                }
            }
        }

        /// `posix_memalign(out, align, size)`: `align` a power of two multiple of `sizeof(void*)`.
        #[no_mangle]
        pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> i32 {
            if !align.is_power_of_two() || align % core::mem::size_of::<usize>() != 0 {
                return libc::EINVAL;
            }
            let p = backend::alloc(size, align.max(MIN_ALIGN));
            if p.is_null() {
                return libc::ENOMEM;
            }
            // SAFETY: C's contract: `out` is writable.
            unsafe { *out = p.cast() };
            0
        }

        /// `aligned_alloc(align, size)`: any power-of-two alignment.
        #[no_mangle]
        pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
            if !align.is_power_of_two() {
                set_errno(libc::EINVAL);
                return null_mut();
            }
            backend::alloc(size, align.max(MIN_ALIGN)).cast()
        }

        /// `memalign(align, size)`: like glibc, a non-power-of-two alignment is rounded up.
        #[no_mangle]
        pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
            let Some(align) = align.max(MIN_ALIGN).checked_next_power_of_two() else {
                set_errno(libc::EINVAL);
                return null_mut();
            };
            backend::alloc(size, align).cast()
        }

        /// `valloc(size)`: page-aligned.
        #[no_mangle]
        pub extern "C" fn valloc(size: usize) -> *mut c_void {
            backend::alloc(size, page_size()).cast()
        }

        /// `pvalloc(size)`: page-aligned, size rounded up to whole pages.
        #[no_mangle]
        pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
            let page = page_size();
            let Some(rounded) = size.max(1).checked_next_multiple_of(page) else {
                set_errno(libc::ENOMEM);
                return null_mut();
            };
            backend::alloc(rounded, page).cast()
        }

        /// `malloc_usable_size(ptr)`: bytes usable in the block (0 for null).
        #[no_mangle]
        pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
            if ptr.is_null() {
                return 0;
            }
            // SAFETY: C's contract: `ptr` is a live block of this heap.
            unsafe { backend::usable_size(ptr.cast()) }
        }

        /// `malloc_trim(pad)`: give free memory back to the OS now. Returns 1 (memory may have been
        /// released), as glibc does when it could release something.
        #[no_mangle]
        pub extern "C" fn malloc_trim(_pad: usize) -> i32 {
            backend::collect();
            1
        }
    };
}
