//! Turns the `initial-exec-tls` feature into `cfg(initial_exec_tls)` on the targets that
//! support it (x86-64 Linux), so the code says one short cfg instead of three conditions.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(initial_exec_tls)");
    let feature = std::env::var_os("CARGO_FEATURE_INITIAL_EXEC_TLS").is_some();
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if feature && os == "linux" && arch == "x86_64" {
        println!("cargo::rustc-cfg=initial_exec_tls");
    }
}
