#![doc = include_str!("../README.md")]
#![cfg_attr(not(feature = "std"), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]
// Module docs name the private modules and items they build on ("May touch: ..."); those
// links resolve in the maintainers' build (`cargo doc --document-private-items`).
#![allow(rustdoc::private_intra_doc_links)]

pub mod buddy;
pub mod error;
pub mod lock_free;
pub mod os;
pub mod pool;
mod region;
pub mod size_class;
pub mod slab;
pub mod spin;
pub mod stack;
pub mod strategy_stats;
pub mod sync;
pub mod typed;

#[cfg(all(feature = "std", not(loom)))]
pub mod global;
#[cfg(all(feature = "std", not(loom)))]
pub mod heap;
#[cfg(all(feature = "std", not(loom)))]
mod large;
#[cfg(feature = "std")]
pub mod options;
pub(crate) mod page;
#[cfg(all(feature = "std", not(loom)))]
pub(crate) mod segment;
#[cfg(all(feature = "std", not(loom)))]
pub mod stats;
#[cfg(all(feature = "std", not(loom)))]
mod thread;

#[cfg(all(feature = "std", not(loom)))]
pub use global::Allocscope;
#[cfg(all(feature = "std", not(loom)))]
pub use heap::collect;
#[cfg(all(feature = "std", not(loom)))]
pub use stats::{for_each_metadata_region, stats, walk_pages, ClassStats, PageInfo, Stats};
