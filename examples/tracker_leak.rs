//! Finding a leak with the instrumented heap: a small service interns user names with
//! `Box::leak` to get `&'static str`s, uses them for one request and drops the reference —
//! so the names are never freed. When `main` returns, the tracker's exit check scans the
//! program's memory for pointers (like LeakSanitizer), finds the blocks nothing points to any
//! more and prints the leak report on standard error, naming the function that allocated them.
//!
//! `cargo run --release --features instrumented --example tracker_leak`
//!
//! The report needs the allocation stacks, so every allocation's stack is recorded
//! (`ALLOCSCOPE_OPTIONS=sample=1`; the default samples one stack per 512 KiB allocated, which
//! finds big leaks at almost no cost). Started without `ALLOCSCOPE_OPTIONS`, the example runs
//! itself again with it set, as you would from the shell.

use std::collections::HashMap;

mod support;

#[global_allocator]
static GLOBAL: allocscope::GlobalHeap = allocscope::GlobalHeap::new();

/// Turns a name into a `&'static str` so that it can sit in long-lived tables without a
/// lifetime — by leaking it. This is the bug.
#[inline(never)]
fn intern_user_name(name: &str) -> &'static str {
    Box::leak(name.to_owned().into_boxed_str())
}

/// One request: the handler greets the user and counts requests per name length.
#[inline(never)]
fn handle_request(user: u32, per_length: &mut HashMap<usize, u32>) -> usize {
    let name = intern_user_name(&format!(
        "user-{user:05}-{}",
        "x".repeat(user as usize % 40)
    ));
    *per_length.entry(name.len()).or_default() += 1;
    let greeting = format!("hello, {name}");
    greeting.len()
}

fn main() {
    support::rerun_with_options("tracker_leak", "sample=1");

    let mut per_length = HashMap::new();
    let mut bytes = 0;
    for user in 0..200 {
        bytes += handle_request(user, &mut per_length);
    }
    println!(
        "tracker_leak: served 200 requests ({bytes} bytes of greetings, {} name lengths)",
        per_length.len()
    );
    let stats = GLOBAL.stats();
    println!(
        "tracker_leak: the tracker holds {} live block(s) of the program; main returns now and the exit check prints the leak report:",
        stats.live_blocks
    );
}
