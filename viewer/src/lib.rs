//! allocscope's viewer: the aggregation of traces ([`model`]), their symbolisation
//! ([`symbols`]), the text report ([`report`]), exports ([`export`]), the `allocscope` command
//! line ([`cli`]) and the desktop viewer ([`app`]). Traces are read only through the tracker's
//! trace-format module.

pub mod app;
pub mod cli;
pub mod export;
pub mod model;
pub mod report;
pub mod symbols;
