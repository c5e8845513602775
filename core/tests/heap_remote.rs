//! Remote frees that a thread holds back (batched per destination page) reach their pages when
//! the page's own thread is gone. Alone in its test binary: a page whose heap has no thread may
//! be adopted by any thread that needs a segment, and only the adopter then takes the page's
//! remote counts; with other tests' threads around, the counts checked below could sit in a
//! heap whose thread is waiting for something else.

use std::sync::mpsc;

use allocscope_core::{heap, Allocscope};

#[global_allocator]
static GLOBAL: Allocscope = Allocscope::new();

mod heap_support;
use heap_support::page_in_use;

#[test]
fn remote_frees_held_back_outlive_the_thread_that_owns_their_page() {
    let (to_freer, blocks_in) = mpsc::channel::<Vec<(usize, usize)>>();
    let (owner_gone, wait_for_owner) = mpsc::channel::<()>();
    // The freer frees every block (fewer than a batch of each page holds), waits until the
    // owner thread has exited and its heap is idle, then exits: its pushes at exit reach pages
    // whose heap has no thread.
    let freer = std::thread::spawn(move || {
        let blocks = blocks_in.recv().unwrap();
        for &(p, size) in &blocks {
            // SAFETY: a live block of `size` bytes, handed over.
            let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
            assert!(bytes.iter().all(|&b| b == size as u8), "block {p:#x}");
            // SAFETY: live blocks of the owner, handed over; each freed once.
            unsafe { heap::free(p as *mut u8) };
        }
        wait_for_owner.recv().unwrap();
    });
    let pages = std::thread::spawn(move || {
        let blocks: Vec<(usize, usize)> = (0..40)
            .map(|i| {
                let size = 150 + i % 50;
                let p = heap::alloc(size, 8);
                // SAFETY: a fresh block of `size` bytes.
                unsafe { p.write_bytes(size as u8, size) };
                (p as usize, size)
            })
            .collect();
        let mut pages: Vec<(usize, u32, u32)> = Vec::with_capacity(blocks.len());
        for &(b, _) in &blocks {
            let (page, used) = page_in_use(b).expect("the page of a live block is in use");
            match pages.iter_mut().find(|(p, _, _)| *p == page) {
                Some(entry) => entry.2 += 1,
                None => pages.push((page, used, 1)),
            }
        }
        to_freer.send(blocks).unwrap();
        pages
    })
    .join()
    .unwrap();
    owner_gone.send(()).unwrap();
    freer.join().unwrap();
    // The owner's heap is idle: collect() takes its pages' remote counts (and gives back the
    // pages that emptied).
    allocscope_core::collect();
    for (page, before, freed) in pages {
        if let Some((_, after)) = page_in_use(page) {
            assert!(
                after <= before - freed,
                "page {page:#x}: used {after}, was {before} with {freed} freed remotely"
            );
        }
    }
}
