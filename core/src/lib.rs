#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod error;
pub mod os;
pub mod sync;
#[cfg(feature = "std")]
pub mod global;
#[cfg(feature = "std")]
pub mod heap;
#[cfg(feature = "std")]
pub mod stats;

#[cfg(feature = "std")]
pub use global::Allocscope;
