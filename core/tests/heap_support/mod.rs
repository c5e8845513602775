//! Helpers shared by the heap's test binaries.

/// The address and `used` count of the page holding `p`, if that page is in use.
pub fn page_in_use(p: usize) -> Option<(usize, u32)> {
    let mut found = None;
    allocscope_core::walk_pages(&mut |page| {
        if p >= page.address && p < page.address + page.size && page.class.is_some() {
            found = Some((page.address, page.used));
        }
    });
    found
}
