#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]

//! The facade re-exports everything of [`allocscope_core`] (the heap, the strategy allocators,
//! statistics, the OS layer).

pub use allocscope_core::*;
