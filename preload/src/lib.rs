//! `liballocscope.so`: the C allocation ABI over the allocscope heap (in progress).
