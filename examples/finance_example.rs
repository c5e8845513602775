//! An order book whose orders live in a slab cache, against the same book with orders in
//! system-allocator `Box`es: limit orders arrive, cross the spread and fill, or rest and are
//! cancelled later. Every order's allocation and free is timed on its own, and the latency
//! percentiles of the two books are printed side by side.
//!
//! Both books process the same event stream in lockstep, event by event (which book goes first
//! alternating), so machine noise falls on both alike. A timed call includes the clock read
//! itself; the clock's own cost, measured the same way, is printed as the floor.
//!
//! `cargo run --release --example finance_example` (`-- --events N` to change the length)

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::DerefMut;
use std::time::Instant;

use allocscope::slab::{Magazine, SlabCache};
use allocscope::typed::{Owned, TypedAlloc};

mod support;
use support::{count_argument, load_average, quantile, Rng, QUANTILES};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Buy,
    Sell,
}

/// An order as a matching engine keeps it (64 bytes).
#[derive(Clone, Debug)]
#[allow(dead_code)] // `trader`, `entered` and `tag` are carried, as a real book would.
struct Order {
    id: u64,
    trader: u32,
    side: Side,
    price: u64,
    quantity: u32,
    entered: u64,
    tag: [u8; 24],
}

/// Where orders live: a `Box` on the system allocator, or a slot of a slab cache.
trait OrderStore {
    type Handle: DerefMut<Target = Order>;
    fn store(&self, order: Order) -> Self::Handle;
}

struct SystemBoxes;

impl OrderStore for SystemBoxes {
    type Handle = Box<Order>;
    fn store(&self, order: Order) -> Box<Order> {
        Box::new(order)
    }
}

impl<'m, 'c, 'a> OrderStore for &'m Magazine<'c, 'a, Order> {
    type Handle = Owned<'m, Order, Magazine<'c, 'a, Order>>;
    fn store(&self, order: Order) -> Self::Handle {
        match self.boxed(order) {
            Ok(handle) => handle,
            Err(order) => panic!("the slab cache is out of memory (order {})", order.id),
        }
    }
}

/// Allocation and free latencies, in nanoseconds.
#[derive(Default)]
struct Latencies {
    alloc: Vec<u64>,
    free: Vec<u64>,
}

/// A price-time priority book: per side, price levels in a B-tree, orders FIFO in each level.
struct Book<S: OrderStore> {
    store: S,
    bids: BTreeMap<u64, VecDeque<S::Handle>>,
    asks: BTreeMap<u64, VecDeque<S::Handle>>,
    /// id -> (side, price) of resting orders, for cancels.
    resting: HashMap<u64, (Side, u64)>,
    traded: u64,
    latencies: Latencies,
}

impl<S: OrderStore> Book<S> {
    fn new(store: S) -> Self {
        Book {
            store,
            bids: BTreeMap::new(),
            asks: BTreeMap::new(),
            resting: HashMap::new(),
            traded: 0,
            latencies: Latencies::default(),
        }
    }

    fn release(&mut self, handle: S::Handle) {
        let start = Instant::now();
        drop(handle);
        self.latencies.free.push(start.elapsed().as_nanos() as u64);
    }

    /// A new limit order: matched against the other side while it crosses, the rest rests.
    fn submit(&mut self, order: Order) {
        let start = Instant::now();
        let mut incoming = self.store.store(order);
        self.latencies.alloc.push(start.elapsed().as_nanos() as u64);
        loop {
            let best = match incoming.side {
                Side::Buy => self.asks.first_entry(),
                Side::Sell => self.bids.last_entry(),
            };
            let Some(mut level) = best else { break };
            let crosses = match incoming.side {
                Side::Buy => *level.key() <= incoming.price,
                Side::Sell => *level.key() >= incoming.price,
            };
            if !crosses || incoming.quantity == 0 {
                break;
            }
            let queue = level.get_mut();
            let maker = queue.front_mut().expect("levels are never empty");
            let fill = maker.quantity.min(incoming.quantity);
            maker.quantity -= fill;
            incoming.quantity -= fill;
            self.traded += u64::from(fill);
            if maker.quantity == 0 {
                let done = queue.pop_front().expect("the front order exists");
                if queue.is_empty() {
                    level.remove();
                }
                self.resting.remove(&done.id);
                self.release(done);
            }
        }
        if incoming.quantity == 0 {
            self.release(incoming);
            return;
        }
        self.resting
            .insert(incoming.id, (incoming.side, incoming.price));
        let side = match incoming.side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        side.entry(incoming.price).or_default().push_back(incoming);
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Submit(order) => self.submit(order.clone()),
            Event::Cancel(id) => self.cancel(*id),
        }
    }

    fn cancel(&mut self, id: u64) {
        let Some((side, price)) = self.resting.remove(&id) else {
            return;
        };
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let queue = levels
            .get_mut(&price)
            .expect("a resting order's level exists");
        let at = queue
            .iter()
            .position(|o| o.id == id)
            .expect("a resting order is in its level");
        let order = queue.remove(at).expect("the position is in range");
        if queue.is_empty() {
            levels.remove(&price);
        }
        self.release(order);
    }
}

enum Event {
    Submit(Order),
    Cancel(u64),
}

/// Random flow around a drifting mid price: 70 % new orders, 30 % cancels of recent ones.
fn next_event(rng: &mut Rng, next_id: &mut u64, mid: &mut i64) -> Event {
    if rng.next() % 10 < 3 && *next_id > 1 {
        let back = 1 + rng.next() % (*next_id - 1).min(500);
        return Event::Cancel(*next_id - back);
    }
    *mid = (*mid + (rng.next() % 3) as i64 - 1).clamp(5_000, 15_000);
    let side = if rng.next() % 2 == 0 {
        Side::Buy
    } else {
        Side::Sell
    };
    let offset = (rng.next() % 20) as i64 - 5;
    let price = match side {
        Side::Buy => *mid - offset,
        Side::Sell => *mid + offset,
    };
    *next_id += 1;
    Event::Submit(Order {
        id: *next_id,
        trader: (rng.next() % 64) as u32,
        side,
        price: price as u64,
        quantity: 1 + (rng.next() % 100) as u32,
        entered: *next_id,
        tag: [(*next_id % 251) as u8; 24],
    })
}

fn main() {
    let events = count_argument("finance_example", "events", 1_000_000);

    let cache: SlabCache<'static, Order> = SlabCache::new();
    let magazine = cache.magazine();
    let mut slab_book = Book::new(&magazine);
    let mut box_book = Book::new(SystemBoxes);
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let (mut next_id, mut mid) = (0u64, 10_000i64);
    let mut clock = Vec::with_capacity(events);

    for i in 0..events {
        let event = next_event(&mut rng, &mut next_id, &mut mid);
        let start = Instant::now();
        clock.push(start.elapsed().as_nanos() as u64);
        if i % 2 == 0 {
            slab_book.apply(&event);
            box_book.apply(&event);
        } else {
            box_book.apply(&event);
            slab_book.apply(&event);
        }
    }
    assert_eq!(
        slab_book.traded, box_book.traded,
        "both books saw the same flow"
    );
    assert_eq!(slab_book.resting.len(), box_book.resting.len());

    println!(
        "finance_example: {events} events ({} orders, {} resting at the end, {} lots traded), \
         interleaved event by event (load average {})",
        slab_book.latencies.alloc.len(),
        slab_book.resting.len(),
        slab_book.traded,
        load_average()
    );
    clock.sort_unstable();
    println!(
        "{:<12} {:>16} {:>16} {:>16}",
        "latency, ns", "system Box", "SlabCache", "clock alone"
    );
    for (what, sys, slab) in [
        (
            "alloc",
            &mut box_book.latencies.alloc,
            &mut slab_book.latencies.alloc,
        ),
        (
            "free",
            &mut box_book.latencies.free,
            &mut slab_book.latencies.free,
        ),
    ] {
        sys.sort_unstable();
        slab.sort_unstable();
        for (name, q) in QUANTILES {
            println!(
                "{:<12} {:>16} {:>16} {:>16}",
                format!("{what} {name}"),
                quantile(sys, q),
                quantile(slab, q),
                quantile(&clock, q)
            );
        }
    }
    let s = cache.stats();
    let (partial, full, empty) = cache.slab_counts();
    println!(
        "slab cache: {} objects of {} B per {} KiB slab; slabs partial/full/empty {partial}/{full}/{empty}; \
         {} objects in the thread's magazine; fragmentation {:.2}",
        cache.objects_per_slab(),
        std::mem::size_of::<Order>(),
        cache.slab_size() / 1024,
        magazine.cached(),
        s.fragmentation
    );
}
