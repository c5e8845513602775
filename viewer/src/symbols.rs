//! Symbolisation of a trace's return addresses in another process than the traced one: the
//! trace's module map says which file each address belongs to and at which load bias, and the
//! file's DWARF (through `addr2line`) gives function, file and line. Results are cached per
//! address; a module whose file is gone or has no debug info gives `module+0xoffset`.
//!
//! May touch: the file system (reading the traced program's binaries), `addr2line`.

use std::collections::HashMap;

use allocscope_tracker::symbolize::{is_allocator_frame, SymbolizedFrame};
use allocscope_tracker::trace_format::Module;

/// A module's files: the module itself (symbol table, maybe DWARF) and its separate debug
/// file, if the system has one.
struct ModuleFiles {
    own: Option<addr2line::Loader>,
    debug: Option<addr2line::Loader>,
}

/// Resolves addresses against one trace's module map.
pub struct Symbolizer {
    modules: Vec<Module>,
    loaders: HashMap<usize, ModuleFiles>,
    cache: HashMap<u64, Vec<SymbolizedFrame>>,
}

/// The separate debug file of the ELF file at `path`, found by its build id the way gdb
/// does (`/usr/lib/debug/.build-id/xx/yyyy.debug`, what Debian's `-dbg` and `-dbgsym`
/// packages install), if there is one.
fn separate_debug_file(path: &str) -> Option<std::path::PathBuf> {
    let bytes = std::fs::read(path).ok()?;
    let id = elf_build_id(&bytes)?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let (dir, rest) = hex.split_at_checked(2)?;
    let file = std::path::Path::new("/usr/lib/debug/.build-id")
        .join(dir)
        .join(format!("{rest}.debug"));
    file.is_file().then_some(file)
}

/// The GNU build id of a 64-bit little-endian ELF file, from its `PT_NOTE` segments.
pub fn elf_build_id(elf: &[u8]) -> Option<&[u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // Magic, 64-bit class, little-endian.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)?), usize::from(u16_at(0x38)?));
    const PT_NOTE: u32 = 4;
    const NT_GNU_BUILD_ID: u32 = 3;
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != PT_NOTE {
            continue;
        }
        let offset = usize::try_from(u64_at(ph + 0x08)?).ok()?;
        let end = offset.checked_add(usize::try_from(u64_at(ph + 0x20)?).ok()?)?;
        let mut at = offset;
        while at + 12 <= end {
            let (namesz, descsz) = (u32_at(at)? as usize, u32_at(at + 4)? as usize);
            let kind = u32_at(at + 8)?;
            let name = at + 12;
            let desc = name.checked_add(namesz.div_ceil(4) * 4)?;
            let next = desc.checked_add(descsz.div_ceil(4) * 4)?;
            if kind == NT_GNU_BUILD_ID && elf.get(name..name + namesz)? == b"GNU\0" {
                return elf.get(desc..desc + descsz);
            }
            at = next;
        }
    }
    None
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
        let files = self.loaders.entry(index).or_insert_with(|| ModuleFiles {
            own: addr2line::Loader::new(&path).ok(),
            debug: separate_debug_file(&path).and_then(|p| addr2line::Loader::new(p).ok()),
        });
        let Some(loader) = &files.own else {
            return vec![unknown(Some(fallback))];
        };
        let mut out = Vec::new();
        // A system library's DWARF is usually in its separate debug file (same addresses).
        let dwarf = files.debug.as_ref().unwrap_or(loader);
        if let Ok(mut frames) = dwarf.find_frames(probe) {
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
        let named = f
            .function
            .as_deref()
            .is_some_and(|name| is_allocator_frame(name) || name.starts_with("__rustc::"));
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

    /// A minimal ELF: header, one program header (PT_NOTE), an unrelated note, then the
    /// build-id note.
    fn elf_with_notes(build_id: &[u8]) -> Vec<u8> {
        let mut notes = Vec::new();
        for (kind, name, desc) in [
            (1u32, &b"XYZ\0"[..], &[9u8; 6][..]),
            (3, b"GNU\0", build_id),
        ] {
            notes.extend((name.len() as u32).to_le_bytes());
            notes.extend((desc.len() as u32).to_le_bytes());
            notes.extend(kind.to_le_bytes());
            notes.extend(name);
            notes.extend(desc);
            notes.resize(notes.len().div_ceil(4) * 4, 0);
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        elf[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        elf[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[64 + 0x20..64 + 0x28].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        elf.extend(notes);
        elf
    }

    #[test]
    fn the_build_id_is_read_from_the_note_segment_and_damage_is_none() {
        let id = [0xab, 0xcd, 0xef, 0x01, 0x23];
        let elf = elf_with_notes(&id);
        assert_eq!(elf_build_id(&elf), Some(&id[..]));
        for cut in 0..elf.len() {
            assert!(elf_build_id(&elf[..cut]).is_none_or(|got| got == id));
        }
        let mut not_gnu = elf.clone();
        let at = not_gnu.len() - 12; // the build-id note's name, "GNU\0", then 5+3 bytes
        not_gnu[at] = b'X';
        assert_eq!(elf_build_id(&not_gnu), None);
        assert_eq!(elf_build_id(b"not an elf file at all"), None);
    }

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
