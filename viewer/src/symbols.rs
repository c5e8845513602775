//! Symbolisation of a trace's return addresses in another process than the traced one: the
//! trace's module map says which file each address belongs to and at which load bias, and the
//! file's DWARF (through `addr2line`) gives function, file and line. Results are cached per
//! address; a module whose file is gone or has no debug info gives `module+0xoffset`.
//!
//! May touch: the file system (reading the traced program's binaries), `addr2line`.

use std::collections::HashMap;

use allocscope_tracker::symbolize::{is_allocator_frame, SymbolizedFrame};
use allocscope_tracker::trace_format::Module;

/// Resolves addresses against one trace's module map.
pub struct Symbolizer {
    modules: Vec<Module>,
    loaders: HashMap<usize, Option<addr2line::Loader>>,
    cache: HashMap<u64, Vec<SymbolizedFrame>>,
}

impl Symbolizer {
    /// A symboliser for addresses of a process with this module map.
    pub fn new(modules: &[Module]) -> Self {
        Symbolizer {
            modules: modules.to_vec(),
            loaders: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    /// The frames (several when calls were inlined, innermost first) at one return address.
    pub fn resolve(&mut self, address: u64) -> &[SymbolizedFrame] {
        if !self.cache.contains_key(&address) {
            let frames = self.lookup(address);
            self.cache.insert(address, frames);
        }
        self.cache.get(&address).map_or(&[], |v| v.as_slice())
    }

    fn lookup(&mut self, address: u64) -> Vec<SymbolizedFrame> {
        let unknown = |function: Option<String>| SymbolizedFrame {
            address: address as usize,
            function,
            file: None,
            line: None,
        };
        let Some(index) = self.modules.iter().position(|m| {
            m.segments
                .iter()
                .any(|s| s.start <= address && address < s.end)
        }) else {
            return vec![unknown(None)];
        };
        let module = &self.modules[index];
        // A return address points after the call; one byte back is inside the call instruction.
        let probe = address.wrapping_sub(module.bias).saturating_sub(1);
        let fallback = format!("{}+{:#x}", short_name(&module.path), probe + 1);
        let path = module.path.clone();
        let loader = self
            .loaders
            .entry(index)
            .or_insert_with(|| addr2line::Loader::new(&path).ok());
        let Some(loader) = loader else {
            return vec![unknown(Some(fallback))];
        };
        let mut out = Vec::new();
        if let Ok(mut frames) = loader.find_frames(probe) {
            while let Ok(Some(frame)) = frames.next() {
                let function = frame
                    .function
                    .as_ref()
                    .and_then(|f| f.demangle().ok())
                    .map(|name| strip_hash(&name).to_owned());
                let (file, line) = frame
                    .location
                    .as_ref()
                    .map_or((None, None), |l| (l.file.map(str::to_owned), l.line));
                out.push(SymbolizedFrame {
                    address: address as usize,
                    function,
                    file,
                    line,
                });
            }
        }
        if out.iter().all(|f| f.function.is_none()) {
            // No DWARF for this address: the nearest symbol before it, with the offset (in a
            // stripped library that is the nearest exported name, not always the function).
            let symbol = loader.find_symbol_info(probe).map(|sym| {
                format!(
                    "{:#}+{:#x}",
                    rustc_demangle::demangle(sym.name()),
                    (probe + 1).saturating_sub(sym.address())
                )
            });
            return vec![unknown(symbol.or(Some(fallback)))];
        }
        out
    }

    /// A whole stack (return addresses, innermost first), with the allocator's own frames at
    /// its top left out so that the first frame is the program's allocation site.
    pub fn stack(&mut self, addresses: &[u64]) -> Vec<SymbolizedFrame> {
        let mut out: Vec<SymbolizedFrame> = Vec::new();
        for &a in addresses {
            out.extend_from_slice(self.resolve(a));
        }
        let top = out.len().min(16);
        let skip = out[..top]
            .iter()
            .rposition(|f| self.is_allocator(f))
            .map_or(0, |i| i + 1);
        if skip < out.len() {
            out.drain(..skip);
        }
        out
    }
}

impl Symbolizer {
    /// Whether a frame is the allocation machinery's: the tracker's or core's Rust, the C
    /// allocation entry points, or anything inside an allocscope preload library.
    fn is_allocator(&self, f: &SymbolizedFrame) -> bool {
        const C_ENTRY_POINTS: &[&str] = &[
            "malloc",
            "calloc",
            "realloc",
            "reallocarray",
            "free",
            "posix_memalign",
            "aligned_alloc",
            "memalign",
            "valloc",
            "pvalloc",
            "operator new",
            "operator delete",
        ];
        let named = f.function.as_deref().is_some_and(|name| {
            is_allocator_frame(name)
                || name.starts_with("__rustc::")
                || C_ENTRY_POINTS.iter().any(|c| {
                    // `free+0x12` when named from the symbol table.
                    let bare = name.split('+').next().unwrap_or(name);
                    bare == *c || name.starts_with(&format!("{c}("))
                })
        });
        named
            || self.modules.iter().any(|m| {
                short_name(&m.path).starts_with("liballocscope")
                    && m.segments
                        .iter()
                        .any(|s| s.start <= f.address as u64 && (f.address as u64) < s.end)
            })
    }
}

/// The frame to name an allocation site by: the first one outside the standard library's
/// containers and plumbing (`Vec::with_capacity` says less than the function that called it),
/// else the first frame.
pub fn site_frame(frames: &[SymbolizedFrame]) -> Option<&SymbolizedFrame> {
    const LIBRARY: &[&str] = &[
        "alloc::",
        "<alloc::",
        "core::",
        "<core::",
        "std::",
        "<std::",
        "hashbrown::",
        "<hashbrown::",
        "<u8 as alloc::",
        "<T as alloc::",
    ];
    frames
        .iter()
        .find(|f| {
            f.function
                .as_deref()
                .is_some_and(|n| !LIBRARY.iter().any(|l| n.starts_with(l)))
        })
        .or_else(|| frames.first())
}

/// A frame's display name: the function, else the address.
pub fn frame_name(f: &SymbolizedFrame) -> String {
    match &f.function {
        Some(name) => name.clone(),
        None => format!("{:#x}", f.address),
    }
}

/// A frame as `function (file:line)`.
pub fn frame_label(f: &SymbolizedFrame) -> String {
    let mut s = frame_name(f);
    if let Some(file) = &f.file {
        s.push_str(" (");
        s.push_str(file);
        if let Some(line) = f.line {
            s.push_str(&format!(":{line}"));
        }
        s.push(')');
    }
    s
}

fn short_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Drops a Rust legacy-mangling hash suffix (`::h0123456789abcdef`) that `{:#}` may leave.
fn strip_hash(name: &str) -> &str {
    match name.rfind("::h") {
        Some(i) if name.len() - i == 19 && name[i + 3..].chars().all(|c| c.is_ascii_hexdigit()) => {
            &name[..i]
        }
        _ => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use allocscope_tracker::trace_format::Segment;

    #[test]
    fn hashes_are_stripped_and_other_names_kept() {
        assert_eq!(strip_hash("prog::main::h0123456789abcdef"), "prog::main");
        assert_eq!(strip_hash("prog::hello"), "prog::hello");
    }

    #[test]
    fn an_address_outside_every_module_stays_an_address() {
        let mut s = Symbolizer::new(&[]);
        let f = s.resolve(0x1234).to_vec();
        assert_eq!(f.len(), 1);
        assert_eq!(frame_name(&f[0]), "0x1234");
    }

    #[test]
    fn a_missing_module_file_gives_module_plus_offset() {
        let m = Module {
            path: "/nonexistent/libgone.so".into(),
            bias: 0x10000,
            segments: vec![Segment {
                start: 0x10000,
                end: 0x20000,
                executable: true,
            }],
        };
        let mut s = Symbolizer::new(&[m]);
        let f = s.resolve(0x10100).to_vec();
        assert_eq!(f[0].function.as_deref(), Some("libgone.so+0x100"));
    }

    #[test]
    fn this_test_binary_resolves_one_of_its_own_functions() {
        // The module map of a real process, here this one, as the tracker would record it.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let exe_str = exe.display().to_string();
        let mut lowest = u64::MAX;
        let mut segments = Vec::new();
        for line in maps.lines().filter(|l| l.ends_with(&exe_str)) {
            let mut parts = line.split_whitespace();
            let range = parts.next().unwrap();
            let perms = parts.next().unwrap();
            let offset = u64::from_str_radix(parts.next().unwrap(), 16).unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
            );
            lowest = lowest.min(a - offset);
            segments.push(Segment {
                start: a,
                end: b,
                executable: perms.contains('x'),
            });
        }
        let m = Module {
            path: exe_str,
            bias: lowest,
            segments,
        };
        let mut s = Symbolizer::new(&[m]);
        let addr = marker_function as fn() -> u32 as usize as u64 + 1;
        let frames = s.resolve(addr).to_vec();
        assert!(
            frames.iter().any(|f| f
                .function
                .as_deref()
                .is_some_and(|n| n.ends_with("marker_function"))),
            "{frames:?}"
        );
    }

    #[test]
    fn the_site_is_the_first_frame_outside_the_standard_library() {
        let f = |name: &str| SymbolizedFrame {
            address: 1,
            function: Some(name.into()),
            file: None,
            line: None,
        };
        let frames = [
            f("alloc::raw_vec::RawVecInner<A>::with_capacity_in"),
            f("<u8 as alloc::vec::spec_from_elem::SpecFromElem>::from_elem"),
            f("demo::leak_buffer"),
            f("demo::main"),
        ];
        assert_eq!(
            site_frame(&frames).unwrap().function.as_deref(),
            Some("demo::leak_buffer")
        );
        assert_eq!(
            site_frame(&frames[..1]).unwrap().function,
            frames[0].function
        );
        assert!(site_frame(&[]).is_none());
    }

    #[inline(never)]
    fn marker_function() -> u32 {
        std::hint::black_box(7)
    }
}
