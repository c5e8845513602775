//! Turning return addresses into function names and file:line, for reports. Only ever called
//! on a report's path or at exit, never for an ordinary allocation: resolving reads debug info
//! and allocates (internally, under the re-entrancy flag).
//!
//! May touch: `backtrace` (its resolver), [`crate::stacks`], [`crate::spin`].

use std::fmt::Write as _;

use crate::spin::SpinLock;

/// One resolved frame (an inlined call gives several for one address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizedFrame {
    /// The return address.
    pub address: usize,
    /// Demangled function name, without the hash suffix.
    pub function: Option<String>,
    /// Source file.
    pub file: Option<String>,
    /// Source line.
    pub line: Option<u32>,
}

/// Held around every call into `backtrace`'s resolver, so that `fork`'s prepare handler can
/// wait for the one under way ([`crate::fork`]): the resolver takes a lock of its own, which
/// another thread resolving at the fork would leave held in the child for good (a child that
/// then raised a report hung: 132 of 200 children of a program whose threads kept raising).
static RESOLVING: SpinLock<()> = SpinLock::new(());

/// Takes [`RESOLVING`] for `fork`.
#[cfg(unix)]
pub(crate) fn hold_for_fork() {
    RESOLVING.hold();
}

/// Releases what [`hold_for_fork`] took.
///
/// # Safety
/// This thread (or, in the child, the thread that forked) took it there, and releases it
/// once.
#[cfg(unix)]
pub(crate) unsafe fn release_after_fork() {
    // SAFETY: the caller's contract.
    unsafe { RESOLVING.release_held() };
}

/// Resolves one return address.
pub fn symbolize_address(address: usize) -> Vec<SymbolizedFrame> {
    let mut out = Vec::new();
    // A return address points after the call; one byte back is inside the call instruction,
    // which is the line the user wants to see.
    let probe = address.saturating_sub(1);
    let _resolving = RESOLVING.lock();
    backtrace::resolve(probe as *mut core::ffi::c_void, |symbol| {
        out.push(SymbolizedFrame {
            address,
            function: symbol.name().map(|n| format!("{n:#}")),
            file: symbol.filename().map(|f| f.display().to_string()),
            line: symbol.lineno(),
        });
    });
    if out.is_empty() {
        out.push(SymbolizedFrame {
            address,
            function: None,
            file: None,
            line: None,
        });
    }
    out
}

/// Whether a function belongs to the allocation machinery rather than to the program
/// (skipped at the top of printed stacks so that frame #0 is the program's call).
pub fn is_allocator_frame(function: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "allocscope_tracker::",
        "<allocscope_tracker::",
        "allocscope_core::",
        "<allocscope_core::",
        "backtrace::",
        "__rust_alloc",
        // Newer compilers put the allocator shims in a `__rustc` namespace.
        "__rustc::__rust_",
        "__rustc::__rdl_",
        "__rustc::__rg_",
        "__rust_dealloc",
        "__rust_realloc",
        "__rust_alloc_zeroed",
        "__rdl_",
        "__rg_",
        "alloc::alloc::",
        "<alloc::alloc::Global",
        "std::alloc::",
        "<std::alloc::System",
        "_Unwind_",
        "allocscope_", // the C-ABI wrappers of the preload library (allocscope_malloc, ...)
    ];
    // The C allocation entry points (the preload libraries export them under these names; a
    // frame named from a symbol table reads `free+0x12`, a demangled C++ one
    // `operator new(unsigned long)`).
    const C_ENTRY_POINTS: &[&str] = &[
        "malloc",
        "calloc",
        "realloc",
        "reallocarray",
        "free",
        "free_sized",
        "free_aligned_sized",
        "posix_memalign",
        "aligned_alloc",
        "memalign",
        "valloc",
        "pvalloc",
        "operator new",
        "operator delete",
    ];
    let bare = function.split('+').next().unwrap_or(function);
    PREFIXES.iter().any(|p| function.starts_with(p))
        || C_ENTRY_POINTS.iter().any(|c| {
            bare == *c
                || function
                    .strip_prefix(c)
                    .is_some_and(|rest| rest.starts_with('(') || rest.starts_with("[]("))
        })
}

/// Whether a source file is the allocation machinery's: the tracker's own (found from where it
/// was compiled) or the standard library's allocation front ends (`alloc::alloc`,
/// `std::alloc`). For debug info made with `debug = "line-tables-only"`, whose functions are
/// named without their paths (`dealloc`, not `<allocscope_tracker::Tracker<A> as ...>::dealloc`)
/// so that [`is_allocator_frame`] cannot tell them by name.
fn is_allocator_file(file: &str) -> bool {
    const TRACKER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");
    const LIBRARY: &[&str] = &["/library/alloc/src/alloc.rs", "/library/std/src/alloc.rs"];
    // Either separator: a Windows build's paths mix them (`/rustc/<hash>/library\std\src`).
    let same = |a: u8, b: u8| a == b || (matches!(a, b'/' | b'\\') && matches!(b, b'/' | b'\\'));
    let starts =
        |s: &[u8], p: &[u8]| s.len() >= p.len() && s.iter().zip(p).all(|(&a, &b)| same(a, b));
    let file = file.as_bytes();
    starts(file, TRACKER.as_bytes())
        || LIBRARY
            .iter()
            .any(|l| file.len() >= l.len() && starts(&file[file.len() - l.len()..], l.as_bytes()))
}

/// Whether a resolved frame is the allocation machinery's, by its name or its file.
fn is_allocator_symbol(f: &SymbolizedFrame) -> bool {
    f.function.as_deref().is_some_and(is_allocator_frame)
        || f.file.as_deref().is_some_and(is_allocator_file)
}

/// Resolves a stack and drops the allocator's own frames from its top.
pub fn symbolize_stack(frames: &[usize]) -> Vec<SymbolizedFrame> {
    let mut out: Vec<SymbolizedFrame> = Vec::new();
    // Near the top: the frames of the first 16 return addresses (one address gives a frame for
    // each call inlined there, a dozen in the tracker's release code).
    let mut top = 0;
    for (i, &address) in frames.iter().enumerate() {
        out.extend(symbolize_address(address));
        if i < 16 {
            top = out.len();
        }
    }
    // Drop everything down to the last allocator frame near the top: helpers the allocator
    // calls (std's thread-local access, say) sit between its frames and are not the program's.
    let skip = out[..top]
        .iter()
        .rposition(is_allocator_symbol)
        .map_or(0, |i| i + 1);
    // Keep everything if the whole stack looks like allocator code (better than nothing).
    if skip < out.len() {
        out.drain(..skip);
    }
    out
}

/// Appends a stack in AddressSanitizer's layout (`    #0 0x... in function file:line`).
pub fn format_stack(out: &mut String, frames: &[SymbolizedFrame]) {
    for (i, f) in frames.iter().enumerate() {
        let _ = write!(
            out,
            "    #{i} {:#x} in {}",
            f.address,
            f.function.as_deref().unwrap_or("??")
        );
        match (&f.file, f.line) {
            (Some(file), Some(line)) => {
                let _ = write!(out, " {file}:{line}");
            }
            (Some(file), None) => {
                let _ = write!(out, " {file}");
            }
            _ => {}
        }
        out.push('\n');
    }
}

/// The first frame that is the program's, as `function file:line`, for a report's summary.
pub fn first_program_frame(frames: &[SymbolizedFrame]) -> Option<String> {
    let f = frames.first()?;
    let mut s = String::new();
    if let (Some(file), Some(line)) = (&f.file, f.line) {
        let _ = write!(s, "{file}:{line} in ");
    }
    s.push_str(f.function.as_deref().unwrap_or("??"));
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocator_frames_are_recognised() {
        assert!(is_allocator_frame(
            "<allocscope_tracker::Tracker<A> as core::alloc::global::GlobalAlloc>::alloc"
        ));
        assert!(is_allocator_frame("__rust_alloc"));
        assert!(is_allocator_frame("__rustc::__rust_alloc"));
        assert!(is_allocator_frame("__rustc::__rust_realloc"));
        assert!(is_allocator_frame("__rustc::__rdl_alloc"));
        assert!(!is_allocator_frame("__rustc::rust_begin_unwind"));
        assert!(is_allocator_frame("alloc::alloc::exchange_malloc"));
        assert!(!is_allocator_frame("alloc::raw_vec::RawVec<T,A>::grow_one"));
        assert!(!is_allocator_frame("my_program::main"));
        assert!(is_allocator_frame("free"));
        assert!(is_allocator_frame("malloc+0x1a"));
        assert!(is_allocator_frame("operator new(unsigned long)"));
        assert!(is_allocator_frame("operator delete[](void*)"));
        assert!(!is_allocator_frame("free_list_push"));
        assert!(!is_allocator_frame("mallocator"));
    }

    #[test]
    fn allocator_files_are_recognised() {
        let tracker = env!("CARGO_MANIFEST_DIR");
        assert!(is_allocator_file(&format!("{tracker}/src/tracker.rs")));
        let backslashed = format!("{tracker}/src/tracker.rs").replace('/', "\\");
        assert!(is_allocator_file(&backslashed));
        assert!(!is_allocator_file(&format!(
            "{tracker}/tests/corruption.rs"
        )));
        assert!(is_allocator_file(
            "/rustc/0123/library\\alloc\\src\\alloc.rs"
        ));
        assert!(is_allocator_file("/rustc/0123/library/std/src/alloc.rs"));
        assert!(!is_allocator_file(
            "/rustc/0123/library/alloc/src/raw_vec.rs"
        ));
        assert!(!is_allocator_file("src/main.rs"));
        assert!(!is_allocator_file("alloc.rs"));
    }

    #[test]
    fn stacks_print_in_asan_layout() {
        let frames = [
            SymbolizedFrame {
                address: 0x1234,
                function: Some("prog::leaky".into()),
                file: Some("src/main.rs".into()),
                line: Some(7),
            },
            SymbolizedFrame {
                address: 0x5678,
                function: None,
                file: None,
                line: None,
            },
        ];
        let mut text = String::new();
        format_stack(&mut text, &frames);
        assert_eq!(
            text,
            "    #0 0x1234 in prog::leaky src/main.rs:7\n    #1 0x5678 in ??\n"
        );
        assert_eq!(
            first_program_frame(&frames).unwrap(),
            "src/main.rs:7 in prog::leaky"
        );
    }
}
