//! The C harness's contenders: the C library's own malloc (no preload) and allocators brought in
//! with `LD_PRELOAD`, found where the distribution installs them or, for the peers no
//! distribution packages (snmalloc, rpmalloc), in the directory benches/run_compare.sh compiles
//! them into from the sources their -sys crates vendor.
//!
//! May touch: the file system (to find libraries and their build logs), `nm` (to see whether a
//! library exports `malloc`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One allocator for the C program: a name and the library to preload (none: the C library's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preload {
    /// The name in tables and result files.
    pub name: String,
    /// The library put in `LD_PRELOAD`; `None` runs the program on the C library's malloc.
    pub lib: Option<PathBuf>,
}

/// The name of the C library's malloc among the contenders.
pub const SYSTEM: &str = "glibc";

/// Debian's packages of the peers (package, library file), found in [`LIB_DIRS`].
const PEERS: [(&str, &str); 3] = [
    ("mimalloc", "libmimalloc.so.2"),
    ("jemalloc", "libjemalloc.so.2"),
    ("tcmalloc", "libtcmalloc_minimal.so.4"),
];

/// Peers without a distribution package: (name, library file, the crate whose vendored sources
/// benches/run_compare.sh compiles it from), found in the peer directory.
pub const BUILT_PEERS: [(&str, &str, &str); 2] = [
    ("snmalloc", "libsnmallocshim.so", "snmalloc-sys"),
    ("rpmalloc", "librpmalloc.so", "rpmalloc-sys"),
];

/// Where distributions put shared libraries, most specific first.
const LIB_DIRS: [&str; 5] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
];

/// The default contenders: the C library, each peer that is installed, each peer built into
/// `peer_dir`, and allocscope's preload library when it exists and exports `malloc`. Says in
/// `notes` why any was left out.
pub fn defaults(allocscope_lib: &Path, peer_dir: &Path, notes: &mut Vec<String>) -> Vec<Preload> {
    let mut all = vec![Preload {
        name: SYSTEM.to_string(),
        lib: None,
    }];
    for (name, file) in PEERS {
        match LIB_DIRS
            .iter()
            .map(|d| Path::new(d).join(file))
            .find(|p| p.exists())
        {
            Some(lib) => all.push(Preload {
                name: name.to_string(),
                lib: Some(lib),
            }),
            None => notes.push(format!(
                "{name}: skipped, {file} not found in {} (Debian: apt-get install {})",
                LIB_DIRS.join(", "),
                debian_package(name)
            )),
        }
    }
    for (name, file, krate) in BUILT_PEERS {
        let lib = peer_dir.join(file);
        match exports_malloc(&lib) {
            Ok(true) => all.push(Preload {
                name: name.to_string(),
                lib: Some(lib),
            }),
            Ok(false) => notes.push(format!(
                "{name}: skipped, {} does not export malloc",
                lib.display()
            )),
            Err(_) => notes.push(not_built(name, &lib, krate, peer_dir)),
        }
    }
    match exports_malloc(allocscope_lib) {
        Ok(true) => all.push(Preload {
            name: "allocscope".to_string(),
            lib: Some(allocscope_lib.to_path_buf()),
        }),
        Ok(false) => notes.push(format!(
            "allocscope: skipped, {} does not export malloc yet",
            allocscope_lib.display()
        )),
        Err(e) => notes.push(format!("allocscope: skipped, {e}")),
    }
    all
}

/// Why a peer built from vendored sources is missing: its build log's last line when there is
/// one, else how to build it.
fn not_built(name: &str, lib: &Path, krate: &str, peer_dir: &Path) -> String {
    let log = peer_dir.join(format!("{name}.log"));
    let last = std::fs::read_to_string(&log).ok().and_then(|t| {
        t.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    });
    match last {
        Some(line) => format!(
            "{name}: skipped, it did not build as a preload library from the {krate} crate's \
             sources ({}: {})",
            log.display(),
            line.trim()
        ),
        None => format!(
            "{name}: skipped, {} not built (benches/run_compare.sh builds it from the {krate} \
             crate's vendored sources)",
            lib.display()
        ),
    }
}

fn debian_package(name: &str) -> &'static str {
    match name {
        "mimalloc" => "libmimalloc2.0",
        "jemalloc" => "libjemalloc2",
        _ => "libtcmalloc-minimal4",
    }
}

/// Parses `NAME=PATH` (an empty PATH: no preload, the C library's malloc).
pub fn parse_spec(spec: &str) -> Result<Preload, String> {
    let (name, path) = spec
        .split_once('=')
        .filter(|(name, _)| !name.is_empty())
        .ok_or_else(|| format!("--preload {spec}: expected NAME=PATH"))?;
    let lib = (!path.is_empty()).then(|| PathBuf::from(path));
    if let Some(lib) = &lib {
        if !lib.exists() {
            return Err(format!(
                "--preload {spec}: {} does not exist",
                lib.display()
            ));
        }
    }
    Ok(Preload {
        name: name.to_string(),
        lib,
    })
}

/// Whether the shared library at `lib` defines a dynamic `malloc` symbol (asked of `nm -D`).
pub fn exports_malloc(lib: &Path) -> Result<bool, String> {
    if !lib.exists() {
        return Err(format!(
            "{} not built (cargo build --release -p allocscope-preload)",
            lib.display()
        ));
    }
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(lib)
        .output()
        .map_err(|e| format!("cannot run nm to inspect {}: {e}", lib.display()))?;
    if !out.status.success() {
        return Err(format!("nm could not read {}", lib.display()));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().last() == Some("malloc")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_reject_nonsense() {
        assert_eq!(
            parse_spec("glibc="),
            Ok(Preload {
                name: "glibc".into(),
                lib: None
            })
        );
        assert!(parse_spec("=x").is_err());
        assert!(parse_spec("novalue").is_err());
        assert!(parse_spec("x=/no/such/lib.so").is_err());
    }

    #[test]
    fn a_missing_library_is_reported_not_assumed() {
        assert!(exports_malloc(Path::new("/no/such/liballocscope.so")).is_err());
        let mut notes = Vec::new();
        let all = defaults(
            Path::new("/no/such/liballocscope.so"),
            Path::new("/no/such/peers"),
            &mut notes,
        );
        assert_eq!(all[0].name, SYSTEM);
        assert!(all
            .iter()
            .all(|p| !["allocscope", "snmalloc", "rpmalloc"].contains(&p.name.as_str())));
        assert!(notes.iter().any(|n| n.starts_with("allocscope: skipped")));
        assert!(notes
            .iter()
            .any(|n| n.starts_with("snmalloc: skipped") && n.contains("snmalloc-sys")));
    }

    #[test]
    fn a_failed_peer_build_is_reported_with_its_log() {
        let dir = std::env::temp_dir().join(format!("allocscope-peers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("rpmalloc.log"), "cc: error: no such file\n\n").unwrap();
        let mut notes = Vec::new();
        let all = defaults(Path::new("/no/such/liballocscope.so"), &dir, &mut notes);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(all.iter().all(|p| p.name != "rpmalloc"));
        let note = notes.iter().find(|n| n.starts_with("rpmalloc:")).unwrap();
        assert!(
            note.contains("did not build") && note.ends_with("cc: error: no such file)"),
            "{note}"
        );
    }
}
