//! A game's frame loop on allocscope's strategies, against the same loop on the system
//! allocator: entities live in a pool (spawned and despawned every frame), and everything a
//! frame needs only while it runs (a spatial grid, contact lists, a draw list) comes from a
//! per-frame stack scope that is reset in one step when the frame ends.
//!
//! The two loops run interleaved, frame by frame (their order alternating), on the same world
//! and the same random events, and print frame-time percentiles side by side.
//!
//! `cargo run --release --example gaming_example` (`-- --frames N` to change the length)

use std::alloc::Layout;
use std::time::{Duration, Instant};

use allocator_api2::alloc::{Allocator, Global};
use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec as AVec;
use allocscope::pool::Pool;
use allocscope::stack::Stack;
use hashbrown::{DefaultHashBuilder, HashMap};

mod support;
use support::{count_argument, load_average, quantile, Rng, QUANTILES};

/// Entities alive at the start; spawns and despawns keep the count near it.
const ENTITIES: usize = 4_000;
/// Side of a grid cell, in world units (the world is 1000 × 1000).
const CELL: f32 = 25.0;

#[derive(Clone)]
struct Entity {
    position: [f32; 2],
    velocity: [f32; 2],
    health: u32,
    kind: u8,
}

impl Entity {
    fn random(rng: &mut Rng) -> Self {
        Entity {
            position: [rng.unit() * 1000.0, rng.unit() * 1000.0],
            velocity: [rng.unit() * 4.0 - 2.0, rng.unit() * 4.0 - 2.0],
            health: 100,
            kind: (rng.next() % 4) as u8,
        }
    }
}

/// The frame: spawn and despawn entities (boxes from `entities_in`), move them, bucket them
/// into a grid, find contacts, and build a draw list (all from `frame_in`). Returns a checksum
/// so that the work cannot be optimised away and both loops can be compared.
fn frame<F: Allocator + Copy, E: Allocator + Copy>(
    frame_in: F,
    entities_in: E,
    world: &mut Vec<Box<Entity, E>>,
    rng: &mut Rng,
) -> u64 {
    let spawns = 40 + (rng.next() % 40) as usize;
    for _ in 0..spawns {
        world.push(Box::new_in(Entity::random(rng), entities_in));
    }
    // As many leave as arrive, and a few more while the world is above its usual size.
    let despawns = spawns + world.len().saturating_sub(ENTITIES) / 8;
    for _ in 0..despawns.min(world.len()) {
        let i = (rng.next() % world.len() as u64) as usize;
        world.swap_remove(i);
    }

    let mut grid: HashMap<u32, AVec<u32, F>, DefaultHashBuilder, F> =
        HashMap::with_hasher_in(DefaultHashBuilder::default(), frame_in);
    for (i, e) in world.iter_mut().enumerate() {
        for axis in 0..2 {
            e.position[axis] = (e.position[axis] + e.velocity[axis]).rem_euclid(1000.0);
        }
        let cell = (e.position[0] / CELL) as u32 * 1000 + (e.position[1] / CELL) as u32;
        grid.entry(cell)
            .or_insert_with(|| AVec::new_in(frame_in))
            .push(i as u32);
    }

    let mut contacts: AVec<(u32, u32), F> = AVec::new_in(frame_in);
    for members in grid.values() {
        for (n, &a) in members.iter().enumerate() {
            for &b in &members[n + 1..] {
                let (ea, eb) = (&world[a as usize], &world[b as usize]);
                let dx = ea.position[0] - eb.position[0];
                let dy = ea.position[1] - eb.position[1];
                if dx * dx + dy * dy < 16.0 {
                    contacts.push((a, b));
                }
            }
        }
    }
    for &(a, _) in &contacts {
        let e = &mut world[a as usize];
        e.health = e.health.saturating_sub(1);
    }

    let mut draw: AVec<(u8, u32, [f32; 2]), F> = AVec::with_capacity_in(world.len(), frame_in);
    draw.extend(
        world
            .iter()
            .enumerate()
            .map(|(i, e)| (e.kind, i as u32, e.position)),
    );
    draw.sort_unstable_by_key(|d| (d.0, d.1));
    let mut sum = contacts.len() as u64 * 31 + grid.len() as u64;
    for d in draw.iter().step_by(97) {
        sum = sum.wrapping_mul(7).wrapping_add(u64::from(d.1));
    }
    sum
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

fn main() {
    let frames = count_argument("gaming_example", "frames", 3_000);

    let layout = Layout::new::<Entity>();
    let pool = Pool::new(layout.size(), layout.align()).expect("a pool from the OS");
    let mut stack = Stack::new(16 << 20).expect("16 MiB of address space for frame memory");

    let mut seed = Rng(0x9e37_79b9_7f4a_7c15);
    let mut ours: Vec<Box<Entity, &Pool>> = Vec::with_capacity(2 * ENTITIES);
    let mut system: Vec<Box<Entity, Global>> = Vec::with_capacity(2 * ENTITIES);
    for _ in 0..ENTITIES {
        let e = Entity::random(&mut seed);
        system.push(Box::new_in(e.clone(), Global));
        ours.push(Box::new_in(e, &pool));
    }
    // Each loop gets its own copy of the same event stream.
    let (mut rng_ours, mut rng_system) = (Rng(7), Rng(7));
    let (mut t_ours, mut t_system) = (Vec::with_capacity(frames), Vec::with_capacity(frames));

    for f in 0..frames {
        let run_ours = |stack: &mut Stack, ours: &mut Vec<_>, rng: &mut Rng| {
            let start = Instant::now();
            let sum = frame(&stack.scope(), &pool, ours, rng);
            (start.elapsed(), sum)
        };
        let run_system = |system: &mut Vec<_>, rng: &mut Rng| {
            let start = Instant::now();
            let sum = frame(Global, Global, system, rng);
            (start.elapsed(), sum)
        };
        let ((a, sum_a), (b, sum_b)) = if f % 2 == 0 {
            let a = run_ours(&mut stack, &mut ours, &mut rng_ours);
            (a, run_system(&mut system, &mut rng_system))
        } else {
            let b = run_system(&mut system, &mut rng_system);
            (run_ours(&mut stack, &mut ours, &mut rng_ours), b)
        };
        assert_eq!(sum_a, sum_b, "both loops simulate the same world");
        t_ours.push(a);
        t_system.push(b);
    }

    t_ours.sort();
    t_system.sort();
    println!(
        "gaming_example: {frames} frames, ~{ENTITIES} entities, interleaved frame by frame (load average {})",
        load_average()
    );
    println!(
        "{:<10} {:>18} {:>22} {:>8}",
        "frame time", "system allocator", "allocscope pool+stack", "ratio"
    );
    for (name, q) in QUANTILES {
        let (s, o) = (quantile(&t_system, q), quantile(&t_ours, q));
        println!(
            "{name:<10} {:>15.1} µs {:>19.1} µs {:>7.2}x",
            us(s),
            us(o),
            us(s) / us(o)
        );
    }
    let s = pool.stats();
    // The pool counts its operations only with allocscope-core's `stats` feature.
    let churn = if allocscope_core::strategy_stats::OPERATIONS_COUNTED {
        format!(
            "{} spawned and {} despawned in all",
            s.allocations, s.deallocations
        )
    } else {
        "spawn counts off (allocscope-core's `stats` feature counts them)".to_string()
    };
    println!(
        "entity pool: {} live entities of {} B, {churn}, capacity {} blocks",
        ours.len(),
        pool.block_size(),
        pool.capacity()
    );
    println!(
        "frame stack: up to {:.0} KiB per frame, {} B in use between frames (each scope resets it)",
        stack.stats().peak_used_bytes as f64 / 1024.0,
        stack.stats().used_bytes
    );
}
