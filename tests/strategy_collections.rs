//! hashbrown maps and allocator_api2 collections on the strategy allocators: the way users
//! plug a strategy into ordinary data structures.

use allocscope::buddy::Buddy;
use allocscope::pool::Pool;
use allocscope::spin::SpinLock;
use allocscope::stack::Stack;
use hashbrown::HashMap;

#[test]
fn a_hashbrown_map_grows_on_a_buddy_and_gives_everything_back() {
    let buddy = Buddy::new(1 << 20).unwrap();
    let mut map = HashMap::new_in(&buddy);
    for i in 0..5_000u64 {
        map.insert(i, i * 2);
    }
    assert_eq!(map.get(&4_321), Some(&8_642));
    assert!(buddy.stats().used_bytes > 5_000 * 16);
    drop(map);
    assert_eq!(buddy.stats().used_bytes, 0);
}

#[test]
fn a_hashbrown_map_per_frame_on_a_stack_scope() {
    let mut stack = Stack::new(1 << 20).unwrap();
    for frame in 0..3u32 {
        let scope = stack.scope();
        let mut map = HashMap::new_in(&scope);
        for i in 0..1_000 {
            map.insert(i, frame);
        }
        assert!(map.values().all(|&f| f == frame));
    }
    assert_eq!(stack.stats().used_bytes, 0);
}

#[test]
fn a_pool_backed_map_reports_exhaustion_instead_of_panicking() {
    let pool = Pool::new(4096, 16).unwrap();
    let mut map: HashMap<u64, u64, hashbrown::DefaultHashBuilder, _> =
        HashMap::with_hasher_in(Default::default(), &pool);
    let mut inserted = 0;
    while map.try_reserve(1).is_ok() && inserted < 10_000 {
        map.insert(inserted, inserted);
        inserted += 1;
    }
    assert!(
        inserted > 64 && inserted < 10_000,
        "a 4 KiB table holds {inserted} entries"
    );
}

#[test]
fn a_map_on_a_shared_spin_locked_buddy_moves_between_threads() {
    let heap = SpinLock::new(Buddy::new(1 << 20).unwrap());
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let heap = &heap;
            s.spawn(move || {
                let mut map = HashMap::new_in(heap);
                for i in 0..2_000 {
                    map.insert(i, t);
                }
                assert_eq!(map.len(), 2_000);
            });
        }
    });
    assert_eq!(heap.lock().stats().used_bytes, 0);
}
