#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]

//! # The facade
//!
//! This crate re-exports everything of [`allocscope_core`]: the heap ([`Allocscope`],
//! [`collect`], [`stats`](stats())), the strategy allocators ([`pool`], [`lock_free`],
//! [`stack`], [`buddy`], [`slab`]), the typed interface they share ([`typed`]), sharing a
//! single-owner allocator ([`spin`]), failure reasons ([`error`]), run-time options
//! ([`options`]) and the OS layer ([`os`]). [`GlobalHeap`] is the type to install as the
//! global allocator.
//!
//! With the `instrumented` feature the tracker crate (`allocscope-tracker`: canaries, guard
//! pages, quarantine, leak checks, traces) is re-exported as `allocscope::tracker`, and
//! [`GlobalHeap`] becomes its `Tracker`.
//!
//! Features: `std` (default; the heap, `GlobalHeap`, the OS-backed constructors) and
//! `instrumented`. Without `std` the strategy allocators work over caller buffers (`no_std`).
//! The examples (`examples/`) show each part running; `docs/api_reference.md` is a guide to
//! the whole API.

pub use allocscope_core::*;

// The API guide's examples run as doctests, so the guide cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../docs/api_reference.md")]
mod api_reference {}

#[cfg(feature = "instrumented")]
pub use allocscope_tracker as tracker;

#[cfg(feature = "instrumented")]
use allocscope_tracker::Tracker as Selected;

#[cfg(all(feature = "std", not(feature = "instrumented")))]
use allocscope_core::Allocscope as Selected;

/// The type to install with `#[global_allocator]`: the release heap ([`Allocscope`]), or with
/// the `instrumented` feature the tracker. One line serves both builds:
///
/// ```
/// #[global_allocator]
/// static GLOBAL: allocscope::GlobalHeap = allocscope::GlobalHeap::new();
/// ```
///
/// To instrument debug builds only, give your crate a feature that turns on
/// `allocscope/instrumented` and enable it in debug runs (`cargo run --features debug-heap`);
/// Cargo features cannot follow the profile by themselves. Without the feature this is exactly
/// `Allocscope`: no extra code on the allocation path.
#[cfg(feature = "std")]
pub type GlobalHeap = Selected;
