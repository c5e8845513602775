//! What several examples share: a seeded random generator (the same stream for both sides of
//! a comparison), nearest-rank quantiles, the load average to print beside timings, and the
//! tracker examples' re-run with `ALLOCSCOPE_OPTIONS` set.
// Each example uses some of these; the rest would warn as unused in that example.
#![allow(dead_code)]

/// xorshift64: fast, seeded, and the same sequence on both sides of a comparison.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A float in `0.0..1.0`.
    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The `per_mille`-th quantile (0–1000) of sorted values, by the nearest rank (1000 = max).
pub fn quantile<T: Copy>(sorted: &[T], per_mille: usize) -> T {
    let rank = (sorted.len() * per_mille).div_ceil(1000).max(1);
    sorted[rank - 1]
}

/// The quantiles the timing examples print, with their labels.
pub const QUANTILES: [(&str, usize); 5] = [
    ("p50", 500),
    ("p90", 900),
    ("p99", 990),
    ("p99.9", 999),
    ("max", 1000),
];

/// The 1, 5 and 15 minute load averages ("?" where /proc/loadavg cannot be read).
pub fn load_average() -> String {
    match std::fs::read_to_string("/proc/loadavg") {
        Ok(text) => text
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        Err(_) => "?".into(),
    }
}

/// Parses the one option of the timing examples, `--NAME N` (N > 0), or exits with usage.
pub fn count_argument(program: &str, name: &str, default: usize) -> usize {
    let mut value = default;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (
            arg.strip_prefix("--"),
            args.next().and_then(|v| v.parse().ok()),
        ) {
            (Some(n), Some(v)) if n == name && v > 0 => value = v,
            _ => {
                eprintln!("usage: {program} [--{name} N]  (N > 0, default {default})");
                std::process::exit(2);
            }
        }
    }
    value
}

/// Tracker options are read from `ALLOCSCOPE_OPTIONS` at the first allocation, before `main`
/// can set anything. When it is unset, runs this program again with `options` — as a user
/// would type `ALLOCSCOPE_OPTIONS=... cargo run ...` — and exits with the child's status.
pub fn rerun_with_options(program: &str, options: &str) {
    if std::env::var_os("ALLOCSCOPE_OPTIONS").is_some() {
        return;
    }
    println!("{program}: running again with ALLOCSCOPE_OPTIONS={options}");
    let status = std::process::Command::new(std::env::current_exe().expect("the program's path"))
        .args(std::env::args_os().skip(1))
        .env("ALLOCSCOPE_OPTIONS", options)
        .status()
        .expect("the program runs itself");
    std::process::exit(status.code().unwrap_or(1));
}
