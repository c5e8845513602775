//! Run-time options of the heap, read once from `ALLOCSCOPE_OPTIONS`
//! (`purge_delay=10,huge_pages=1`), without allocating: the string is parsed in place.
//! Keys the heap does not know are left for the tracker, which reads the same variable.
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `purge_delay` | 10 | milliseconds a free page or span waits before going back to the OS |
//! | `huge_pages` | 0 | ask for transparent huge pages on arenas (faster TLB, coarser RSS) |
//!
//! May touch: `libc` (getenv), [`crate::sync`].

// Plain atomics: process-wide caches, never part of a loom model (loom's cannot be static).
use core::sync::atomic::{AtomicUsize, Ordering};

const UNREAD: usize = usize::MAX;

/// Parsed values; `UNREAD` until the first read. Relaxed: every thread parses the same string
/// to the same values, so a race only repeats the parse.
static PURGE_DELAY_MS: AtomicUsize = AtomicUsize::new(UNREAD);
static HUGE_PAGES: AtomicUsize = AtomicUsize::new(UNREAD);

const DEFAULT_PURGE_DELAY_MS: usize = 10;

/// Milliseconds before free pages are decommitted and free spans released.
pub fn purge_delay_ms() -> u64 {
    let v = PURGE_DELAY_MS.load(Ordering::Relaxed);
    if v != UNREAD {
        return v as u64;
    }
    load();
    PURGE_DELAY_MS.load(Ordering::Relaxed) as u64
}

/// Whether arenas get the transparent-huge-page hint.
pub fn huge_pages() -> bool {
    let v = HUGE_PAGES.load(Ordering::Relaxed);
    if v != UNREAD {
        return v != 0;
    }
    load();
    HUGE_PAGES.load(Ordering::Relaxed) != 0
}

/// The keys the heap reads; the tracker accepts them too (the instrumented mode runs over the
/// same heap) and reports the rest of `ALLOCSCOPE_OPTIONS`.
pub const KEYS: [&str; 2] = ["purge_delay", "huge_pages"];

/// The value of one of the heap's keys ([`KEYS`]): `None` for a key that is not the heap's,
/// `Some(Err(what was expected))` for a value it cannot take.
pub fn parse(key: &[u8], value: &[u8]) -> Option<Result<usize, &'static str>> {
    match key {
        b"purge_delay" => Some(parse_number(value).ok_or("expected milliseconds (a number)")),
        b"huge_pages" => Some(match parse_number(value) {
            Some(n @ (0 | 1)) => Ok(n),
            _ => Err("expected 0 or 1"),
        }),
        _ => None,
    }
}

#[cold]
fn load() {
    let mut delay = DEFAULT_PURGE_DELAY_MS;
    let mut huge = 0;
    if let Some(text) = env_options() {
        for_each_option(text, |key, value| match (key, parse(key, value)) {
            (b"purge_delay", Some(Ok(n))) => delay = n,
            (b"huge_pages", Some(Ok(n))) => huge = n,
            (_, Some(Err(expected))) => warn(key, value, expected),
            _ => {}
        });
    }
    PURGE_DELAY_MS.store(delay, Ordering::Relaxed);
    HUGE_PAGES.store(huge, Ordering::Relaxed);
}

/// Says on standard error that a value was refused and the default kept (the heap cannot stop
/// the program over it: it reads its options at its first allocation). No allocation: pieces
/// written one after another.
fn warn(key: &[u8], value: &[u8], expected: &str) {
    #[cfg(unix)]
    for piece in [
        b"allocscope: ALLOCSCOPE_OPTIONS: ".as_slice(),
        key,
        b"=",
        value,
        b": ",
        expected.as_bytes(),
        b"; the default is kept\n",
    ] {
        // SAFETY: writes `piece.len()` bytes from a valid slice to fd 2; a failed write is
        // ignored (nothing better can be done with a warning).
        let _ = unsafe { libc::write(2, piece.as_ptr().cast(), piece.len()) };
    }
    #[cfg(not(unix))]
    let _ = (key, value, expected);
}

/// Calls `f(key, value)` for each `key=value` item of a comma-separated list.
pub fn for_each_option(text: &[u8], mut f: impl FnMut(&[u8], &[u8])) {
    for item in text.split(|&b| b == b',' || b == b':') {
        let mut parts = item.splitn(2, |&b| b == b'=');
        let key = trim(parts.next().unwrap_or(b""));
        let value = trim(parts.next().unwrap_or(b""));
        if !key.is_empty() {
            f(key, value);
        }
    }
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &s[start..end]
}

fn parse_number(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0usize, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add((b - b'0') as usize)
        } else {
            None
        }
    })
}

#[cfg(unix)]
fn env_options() -> Option<&'static [u8]> {
    // SAFETY: the name is NUL-terminated; getenv does not allocate. The returned string lives
    // as long as the environment is not modified, which programs do not do to this variable
    // while allocating; we copy nothing and keep no reference past `load`.
    unsafe {
        let p = libc::getenv(c"ALLOCSCOPE_OPTIONS".as_ptr());
        if p.is_null() {
            return None;
        }
        Some(core::ffi::CStr::from_ptr(p).to_bytes())
    }
}

#[cfg(not(unix))]
fn env_options() -> Option<&'static [u8]> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_and_trim() {
        let mut seen = Vec::new();
        for_each_option(b" purge_delay=25, huge_pages = 1,,flag", |k, v| {
            seen.push((k.to_vec(), v.to_vec()))
        });
        assert_eq!(
            seen,
            vec![
                (b"purge_delay".to_vec(), b"25".to_vec()),
                (b"huge_pages".to_vec(), b"1".to_vec()),
                (b"flag".to_vec(), b"".to_vec()),
            ]
        );
        assert_eq!(parse_number(b"25"), Some(25));
        assert_eq!(parse_number(b"2x"), None);
        assert_eq!(parse_number(b""), None);
    }

    #[test]
    fn the_heaps_keys_are_told_apart_and_their_values_checked() {
        assert_eq!(parse(b"purge_delay", b"50"), Some(Ok(50)));
        assert!(matches!(parse(b"purge_delay", b"soon"), Some(Err(_))));
        assert_eq!(parse(b"huge_pages", b"1"), Some(Ok(1)));
        assert!(matches!(parse(b"huge_pages", b"2"), Some(Err(_))));
        assert_eq!(parse(b"sample", b"1"), None);
        for key in KEYS {
            assert!(parse(key.as_bytes(), b"0").is_some(), "{key}");
        }
    }
}
