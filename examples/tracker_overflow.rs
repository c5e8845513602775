//! Catching a heap-buffer-overflow with the instrumented heap: a packet encoder appends a
//! 4-byte checksum with raw pointer writes into a buffer sized for the payload only. The
//! tracker puts red zones (canaries) around every block; when the buffer is freed it finds the
//! damaged red zone and prints the report — where the block was allocated, where it was freed,
//! how far past its end the write went — in AddressSanitizer's words. The bad block is not
//! reused, the program goes on, and it can ask the tracker how many reports it raised.
//!
//! `cargo run --release --features instrumented --example tracker_overflow`
//!
//! Options used (`ALLOCSCOPE_OPTIONS=canary=16,sample=1`; started without the variable, the
//! example runs itself again with it set): 16-byte red zones and every stack recorded. Other
//! choices: `halt_on_error=1` aborts at the first report instead of going on; `guard=all` puts
//! blocks against inaccessible guard pages, so the faulting write itself is reported (with the
//! stack of the write) and the process stops there.

use allocscope::tracker::ReportKind;

mod support;

#[global_allocator]
static GLOBAL: allocscope::GlobalHeap = allocscope::GlobalHeap::new();

/// A checksum of the payload (FNV-1a, folded to 32 bits).
fn checksum(payload: &[u8]) -> u32 {
    payload.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Builds `[len: u16][payload][checksum: u32]` — but reserves room for the header and the
/// payload only, and writes the checksum through a raw pointer. This is the bug.
#[inline(never)]
fn encode_packet(payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(2 + payload.len());
    packet.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    packet.extend_from_slice(payload);
    let sum = checksum(payload).to_le_bytes();
    // SAFETY: none — this is the heap-buffer-overflow the example catches: the 4 bytes go
    // past the end of the block, into the tracker's red zone (memory the tracker owns, so the
    // program's other blocks are not damaged).
    unsafe {
        let end = packet.as_mut_ptr().add(packet.len());
        std::ptr::copy_nonoverlapping(sum.as_ptr(), end, sum.len());
    }
    packet
}

/// Sends a packet: here, just adds its bytes up; dropping it frees the buffer.
#[inline(never)]
fn send(packet: Vec<u8>) -> u64 {
    packet.iter().map(|&b| u64::from(b)).sum()
}

fn main() {
    support::rerun_with_options("tracker_overflow", "canary=16,sample=1");

    let payload: Vec<u8> = (0..22).collect();
    let sent = send(encode_packet(&payload));
    // The report was printed when `send` freed the packet; the call was made harmless and the
    // program carries on.
    let more: usize = (0..100).map(|i| vec![i as u8; 64].len()).sum();
    println!("tracker_overflow: sent a packet (byte sum {sent}), then went on ({more} more bytes allocated and freed)");
    println!(
        "tracker_overflow: heap-buffer-overflow reports raised: {}",
        GLOBAL.report_count(ReportKind::HeapBufferOverflow)
    );
}
