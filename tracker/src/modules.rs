//! The module map: which executable or library is loaded where, so that the raw return
//! addresses in a trace can be symbolised later, in another process (the viewer).
//!
//! May touch: `dl_iterate_phdr`, `/proc/self/exe`.

use crate::trace_format::Module;
#[cfg(target_os = "linux")]
use crate::trace_format::Segment;

/// Every loaded module with its load bias and segments.
#[cfg(target_os = "linux")]
pub(crate) fn current() -> Vec<Module> {
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for the duration of the call, and `data`
        // is the `Vec<Module>` passed below, used by nobody else meanwhile.
        let (info, out) = unsafe { (&*info, &mut *data.cast::<Vec<Module>>()) };
        let path = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null dlpi_name is a NUL-terminated string owned by the loader.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let path = if path.is_empty() && out.is_empty() {
            std::fs::read_link("/proc/self/exe")
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        } else {
            path
        };
        let mut segments = Vec::new();
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr points to dlpi_phnum program headers.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type == libc::PT_LOAD {
                let start = info.dlpi_addr.wrapping_add(ph.p_vaddr);
                segments.push(Segment {
                    start,
                    end: start.wrapping_add(ph.p_memsz),
                    executable: ph.p_flags & libc::PF_X != 0,
                });
            }
        }
        if !segments.is_empty() {
            out.push(Module {
                path,
                bias: info.dlpi_addr,
                segments,
            });
        }
        0
    }
    let mut modules: Vec<Module> = Vec::new();
    // SAFETY: `visit` matches the callback type and only touches `modules` through `data`.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&mut modules as *mut Vec<Module>).cast()) };
    modules
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn current() -> Vec<Module> {
    Vec::new()
}

/// A cheap fingerprint of the map, to notice `dlopen`/`dlclose` between snapshots.
pub(crate) fn fingerprint(modules: &[Module]) -> u64 {
    modules.iter().fold(modules.len() as u64, |h, m| {
        h.wrapping_mul(31).wrapping_add(m.bias).rotate_left(7) ^ m.segments.len() as u64
    })
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_test_binary_is_in_the_map_with_code() {
        let modules = super::current();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let main = modules.first().expect("at least the program");
        assert_eq!(main.path, exe.display().to_string());
        assert!(main.segments.iter().any(|s| s.executable));
        // The address of a function of ours falls in an executable segment of some module.
        let f = super::current as fn() -> Vec<crate::trace_format::Module> as usize as u64;
        assert!(modules
            .iter()
            .flat_map(|m| &m.segments)
            .any(|s| s.executable && s.start <= f && f < s.end));
    }
}
