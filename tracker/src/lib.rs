//! allocscope's instrumented mode (in progress, see issue 4): the core allocator wrapped with
//! canaries, guard pages, quarantine, double/invalid-free detection and sampled stacks, streaming
//! events to a trace file or a live socket. The trace format will be one module of this crate,
//! shared by the writer here and the readers in the viewer.
