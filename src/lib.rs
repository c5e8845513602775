#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]

//! The facade re-exports everything of [`allocscope_core`] (the heap, the strategy allocators,
//! statistics, the OS layer), and with the `instrumented` feature the tracker as [`tracker`].

pub use allocscope_core::*;

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
