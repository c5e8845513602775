//! The allocators the Rust harness compares, each called through its `GlobalAlloc` impl with
//! the workload code monomorphised for it, so no dynamic dispatch sits between the workload and
//! the allocator.
//!
//! May touch: [`crate::workload`], the allocator crates.

use std::alloc::GlobalAlloc;

use crate::workload::{self, Outcome, Workload};

/// An allocator linked into this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RustAllocator {
    /// `std::alloc::System`: the C library's malloc (glibc on Linux).
    System,
    /// `mimalloc::MiMalloc` (the `mimalloc` crate, built from its bundled sources).
    Mimalloc,
    /// `tikv_jemallocator::Jemalloc` (jemalloc built from the crate's bundled sources).
    Jemalloc,
    /// `allocscope_core::Allocscope`: the allocator this project builds.
    Allocscope,
    /// `snmalloc_rs::SnMalloc` (snmalloc built from the crate's bundled sources with cc).
    Snmalloc,
    /// `rpmalloc::RpMalloc` (rpmalloc built from the crate's bundled sources).
    Rpmalloc,
}

impl RustAllocator {
    /// Every allocator, in the order tables list them.
    pub const ALL: [RustAllocator; 6] = [
        RustAllocator::System,
        RustAllocator::Mimalloc,
        RustAllocator::Jemalloc,
        RustAllocator::Snmalloc,
        RustAllocator::Rpmalloc,
        RustAllocator::Allocscope,
    ];

    /// The name in tables and result files.
    pub fn name(self) -> &'static str {
        match self {
            RustAllocator::System => "system",
            RustAllocator::Mimalloc => "mimalloc",
            RustAllocator::Jemalloc => "jemalloc",
            RustAllocator::Allocscope => "allocscope",
            RustAllocator::Snmalloc => "snmalloc",
            RustAllocator::Rpmalloc => "rpmalloc",
        }
    }

    /// The allocator named `name`, if any.
    pub fn from_name(name: &str) -> Option<RustAllocator> {
        RustAllocator::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Runs `workload` on this allocator (see [`workload::run`]).
    pub fn run(
        self,
        workload: Workload,
        threads: usize,
        ops: u64,
        seed: u64,
    ) -> Result<Outcome, String> {
        struct Run(Workload, usize, u64, u64);
        impl WithAlloc for Run {
            type Out = Result<Outcome, String>;
            fn call<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out {
                workload::run(a, self.0, self.1, self.2, self.3)
            }
        }
        self.with(Run(workload, threads, ops, seed))
    }

    /// Calls `v` with this allocator, monomorphised for it.
    pub fn with<V: WithAlloc>(self, v: V) -> V::Out {
        match self {
            RustAllocator::System => v.call(&std::alloc::System),
            RustAllocator::Mimalloc => v.call(&mimalloc::MiMalloc),
            RustAllocator::Jemalloc => v.call(&tikv_jemallocator::Jemalloc),
            RustAllocator::Allocscope => v.call(&allocscope_core::Allocscope::new()),
            RustAllocator::Snmalloc => v.call(&snmalloc_rs::SnMalloc),
            RustAllocator::Rpmalloc => v.call(&rpmalloc::RpMalloc),
        }
    }
}

/// Code to run on whichever allocator [`RustAllocator::with`] picks.
pub trait WithAlloc {
    /// What the code returns.
    type Out;
    /// Runs the code on `a`.
    fn call<A: GlobalAlloc + Sync>(self, a: &A) -> Self::Out;
}
