//! The poll-mode loop of one worker: the RX, fill, TX, completion cycle of Linux's xdpsock,
//! in the order that held up under overload here (see `shared/notes/platform-facts.md`):
//!
//! 1. reap completions into the stash;
//! 2. compute the free TX room and take at most that much from RX (frames the worker cannot
//!    send stay in the RX ring, and once that is full the kernel drops at its cheapest point,
//!    before copying, counted as `rx_ring_full`);
//! 3. process the batch and enqueue the TX descriptors;
//! 4. refill the fill ring from the stash, using the count each reservation really returned;
//! 5. peek at the next batch in RX and prefetch its frames, so they load during the kick;
//! 6. kick TX: in copy mode until nothing is pending (it transmits only inside `sendto`),
//!    in zero-copy mode once, and only if the driver asks.
//!
//! No allocation, lock or per-packet syscall: per batch there is one clock read, one
//! `sendto` per port with pending TX (in copy mode a few under overload), and counter
//! stores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use xdpilone::xdp::XdpDesc;

use super::socket::{xdp_stats, Port, WorkerIo, XskMode};
use super::stats::{Counters, SharedStats};
use super::{monotonic_ns, Census, Processor};
use crate::bpf::ShedFlags;
use crate::pipeline::{Frame, Verdict, BATCH};

/// Iterations without traffic before the worker sleeps in `poll`.
const IDLE_SPINS: u32 = 1024;
/// Longest `poll` sleep: bounds how long `stop` waits for an idle worker.
const IDLE_POLL_MS: libc::c_int = 20;
/// Copy-mode `sendto` calls per port and iteration before moving on (the next iteration
/// retries).
const KICK_LIMIT: u32 = 16;
/// How often the worker refreshes the kernel's socket statistics and checks its frame count.
const HOUSEKEEPING_NS: u64 = 1_000_000_000;

/// This worker's overload flag in the steering program. Set when the RX ring is still more
/// than three-quarters full after a batch was taken (the worker is falling behind), cleared
/// once it is below a quarter: the gap keeps the flag from flapping, and the ring never runs
/// dry while shedding, so the worker keeps forwarding at its full rate.
pub(crate) struct Shedding {
    flags: Arc<ShedFlags>,
    queue: u32,
    on: bool,
}

impl Shedding {
    pub(crate) fn new(flags: Arc<ShedFlags>, queue: u32) -> Self {
        flags.set(queue, false);
        Shedding {
            flags,
            queue,
            on: false,
        }
    }

    /// Updates the flag for an RX backlog of `backlog` frames in a ring of `ring` entries;
    /// true when shedding starts.
    fn update(&mut self, backlog: u32, ring: u32) -> bool {
        let on = shed_next(self.on, backlog, ring);
        let started = on && !self.on;
        if on != self.on {
            self.on = on;
            self.flags.set(self.queue, on);
        }
        started
    }

    fn clear(&mut self) {
        self.on = false;
        self.flags.set(self.queue, false);
    }
}

/// Whether to shed after a batch, given whether we were and the RX backlog left in a ring
/// of `ring` entries: start above three-quarters full, stop below a quarter.
fn shed_next(on: bool, backlog: u32, ring: u32) -> bool {
    if on {
        backlog >= ring / 4
    } else {
        backlog > ring / 4 * 3
    }
}

pub(crate) struct Worker<P> {
    pub(crate) io: WorkerIo,
    pub(crate) processor: P,
    pub(crate) stats: Arc<SharedStats>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Free chunk addresses: the worker's stash. Capacity = all frames, so it never grows.
    stash: Vec<u64>,
    counters: Counters,
    shedding: Option<Shedding>,
}

/// What a kick loop saw.
#[derive(Default)]
struct Kick {
    again: u64,
    busy: u64,
    errors: u64,
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// What [`kick`] needs of a port: its TX ring's state and the wakeup call. A trait so that
/// the kick policy can be tested without a socket.
trait Kickable {
    /// Descriptors in the TX ring the kernel has not taken yet.
    fn tx_pending(&self) -> u32;
    /// Whether the kernel asks to be woken to transmit (the ring's `XDP_RING_NEED_WAKEUP`).
    fn tx_needs_wakeup(&self) -> bool;
    /// A zero-length `sendto`: `Err(errno)` if it failed.
    fn wake_tx(&self) -> Result<(), i32>;
}

impl Kickable for Port {
    fn tx_pending(&self) -> u32 {
        self.tx.pending()
    }

    fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    fn wake_tx(&self) -> Result<(), i32> {
        // SAFETY: a zero-length sendto on our own socket fd, as the AF_XDP API specifies.
        let r = unsafe {
            libc::sendto(
                self.fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if r >= 0 {
            Ok(())
        } else {
            Err(last_errno())
        }
    }
}

/// Transmit what is queued on `port`.
///
/// In copy mode the kernel sends only inside `sendto`, so it is kicked while descriptors
/// are pending, up to [`KICK_LIMIT`] times. EAGAIN (per-call budget spent) and EBUSY (the
/// peer's queue is full) yield the CPU, which on veth lets the receiving side drain.
///
/// In zero-copy mode the driver transmits from its own NAPI poll, often on another CPU,
/// and keeps asking for a wakeup (`needs_wakeup`) until that poll has run: one `sendto`
/// when it asks is all it needs, and more would only repeat the syscall (as Linux's
/// xdpsock sample, which kicks once).
fn kick<K: Kickable>(port: &K, mode: XskMode, k: &mut Kick) {
    if mode == XskMode::ZeroCopy {
        if port.tx_pending() > 0 && port.tx_needs_wakeup() {
            if let Err(errno) = port.wake_tx() {
                k.failed(errno);
            }
        }
        return;
    }
    for _ in 0..KICK_LIMIT {
        if port.tx_pending() == 0 {
            return;
        }
        let Err(errno) = port.wake_tx() else {
            continue;
        };
        match errno {
            libc::EINTR => continue,
            libc::EAGAIN | libc::EBUSY => k.failed(errno),
            _ => {
                k.failed(errno);
                return;
            }
        }
        std::thread::yield_now();
    }
}

impl Kick {
    /// Counts a failed wakeup. ENETDOWN, ENXIO, ENOBUFS and the like (the device is gone
    /// or down): the frames stay queued and are retried next iteration rather than lost.
    fn failed(&mut self, errno: i32) {
        match errno {
            libc::EAGAIN => self.again += 1,
            libc::EBUSY => self.busy += 1,
            libc::EINTR => {}
            _ => self.errors += 1,
        }
    }
}

/// Starts loading the cache line holding `p` in a writable state (`prefetchw`), so a store
/// to it neither waits for the line nor for a second request to own it. Written as `asm!`
/// because `_MM_HINT_ET0` compiles to a plain read prefetch unless the whole crate is built
/// for a CPU with `prfchw`; CPUs without the instruction execute it as a no-op.
#[inline(always)]
fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address, and writes no
    // register, memory or flag.
    unsafe {
        std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags, readonly))
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Enqueue `descs` on the TX ring; returns how many went in. xdpilone may reserve fewer slots
/// than are free (its cached consumer head is refreshed only when it reads zero), so a short
/// reservation is retried once, which refreshes it.
fn enqueue(port: &mut Port, descs: &[XdpDesc]) -> usize {
    let mut done = 0;
    for _ in 0..2 {
        if done == descs.len() {
            break;
        }
        let mut w = port.tx.transmit((descs.len() - done) as u32);
        let n = w.insert(descs[done..].iter().copied());
        w.commit();
        done += n as usize;
    }
    done
}

impl<P: Processor> Worker<P> {
    pub(crate) fn new(
        mut io: WorkerIo,
        processor: P,
        stats: Arc<SharedStats>,
        stop: Arc<AtomicBool>,
        shedding: Option<Shedding>,
    ) -> Self {
        let mut stash = Vec::with_capacity(io.frames as usize);
        stash.append(&mut io.initial_stash);
        let mut w = Worker {
            io,
            processor,
            stats,
            stop,
            stash,
            counters: Counters::default(),
            shedding,
        };
        w.refill();
        w
    }

    /// Frames in every ring plus the stash: exact whenever the kernel holds no frame in
    /// transit, an estimate otherwise (see [`Census`]). Rings are read downstream first (RX
    /// before fill, completion before TX), so a frame moving between two rings is usually
    /// missed rather than counted twice.
    pub(crate) fn census(&self) -> Census {
        let up = &self.io.up;
        let rx = up.rx.as_ref().map_or(0, |r| r.available());
        let mut c = Census {
            total: self.io.frames,
            rx,
            fill: up.fq.pending(),
            completion: up.cq.available(),
            tx: up.tx.pending(),
            stash: self.stash.len() as u32,
        };
        if let Some(d) = &self.io.down {
            c.completion += d.cq.available();
            c.tx += d.tx.pending();
            c.fill += d.fq.pending();
        }
        c
    }

    /// Run until `stop` is set. Returns the final frame census, taken after TX has drained.
    pub(crate) fn run(mut self) -> Census {
        let mut idle = 0u32;
        let mut next_housekeeping = monotonic_ns();
        // Relaxed: the flag carries no data (see `Workers::shutdown`).
        while !self.stop.load(Ordering::Relaxed) {
            let now = monotonic_ns();
            let moved = self.iteration(now);
            if now >= next_housekeeping {
                self.processor.housekeeping(now);
                self.housekeeping();
                next_housekeeping = now + HOUSEKEEPING_NS;
            }
            if moved {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle >= IDLE_SPINS {
                idle = 0;
                // Idle only with nothing left to send: a worker whose TX cannot drain (kicks
                // failing, the ring full) is stalled, and the daemon's stall detector counts
                // idle polls as a sign of life.
                if self.tx_pending() == 0 {
                    self.counters.idle_polls += 1;
                }
                self.sleep();
            } else {
                std::hint::spin_loop();
            }
        }
        if let Some(s) = self.shedding.as_mut() {
            s.clear();
        }
        self.drain();
        self.housekeeping();
        self.census()
    }

    /// Descriptors queued on the TX rings that the kernel has not taken yet.
    fn tx_pending(&self) -> u32 {
        let down = self.io.down.as_ref().map_or(0, |d| d.tx.pending());
        self.io.up.tx.pending() + down
    }

    /// One pass of the loop; true if any frame moved.
    fn iteration(&mut self, now: u64) -> bool {
        let mut moved = self.reap() > 0;

        let mut room = self.io.up.tx_free();
        if let Some(d) = &self.io.down {
            room = room.min(d.tx_free());
        }
        let room = (room as usize).min(BATCH);
        if room == 0 {
            self.counters.tx_ring_stalls += 1;
        } else {
            moved |= self.receive_and_process(now, room) > 0;
        }
        if let (Some(s), Some(rx)) = (self.shedding.as_mut(), self.io.up.rx.as_ref()) {
            if s.update(rx.available(), self.io.up.ring_size) {
                self.counters.shed_starts += 1;
            }
        }

        self.refill();
        if moved {
            self.prefetch_next();
        }
        let mut k = Kick::default();
        kick(&self.io.up, self.io.mode, &mut k);
        if let Some(d) = &self.io.down {
            kick(d, self.io.mode, &mut k);
        }
        self.counters.kick_again += k.again;
        self.counters.kick_busy += k.busy;
        self.counters.kick_errors += k.errors;
        self.stats.publish(&self.counters);
        moved
    }

    /// Move completed TX frames to the stash.
    fn reap(&mut self) -> u32 {
        let mask = !(u64::from(self.io.frame_size) - 1);
        let mut n = 0;
        let ports = std::iter::once(&mut self.io.up).chain(self.io.down.as_mut());
        for port in ports {
            // xdpilone serves a peek from its cached producer head while that shows at least
            // one entry, so one call may return only part of what is there: repeat until a
            // call comes back empty (which refreshes the head).
            loop {
                let mut r = port.cq.complete(BATCH as u32 * 4);
                let before = n;
                while let Some(addr) = r.read() {
                    debug_assert!(
                        self.stash.len() < self.stash.capacity(),
                        "frame count exceeded"
                    );
                    self.stash.push(addr & mask);
                    n += 1;
                }
                r.release();
                if n == before {
                    break;
                }
            }
        }
        self.counters.completed += u64::from(n);
        n
    }

    /// Take up to `room` frames from RX, run the processor, and queue or free each frame.
    fn receive_and_process(&mut self, now: u64, room: usize) -> usize {
        let fs = self.io.frame_size as usize;
        let mask = !(fs as u64 - 1);
        let area_len = self.io.area.len() as u64;
        let base = self.io.area.base();

        let mut addrs = [0u64; BATCH];
        let mut lens = [0u32; BATCH];
        let mut n = 0;
        if let Some(rx) = self.io.up.rx.as_mut() {
            // A short peek may come from xdpilone's stale cached head; a second one refreshes it.
            for _ in 0..2 {
                let mut r = rx.receive((room - n) as u32);
                let before = n;
                while let Some(d) = r.read() {
                    addrs[n] = d.addr;
                    lens[n] = d.len;
                    n += 1;
                }
                r.release();
                if n == room || n == before {
                    break;
                }
            }
        }
        if n == 0 {
            return 0;
        }
        // Usually a no-op: the previous iteration prefetched these (see `prefetch_next`).
        self.prefetch_frames(&addrs[..n], &lens[..n]);

        let mut verdicts = [Verdict::Pass; BATCH];
        // The frames (views into the UMEM) live only inside this block: their descriptors
        // go back to the kernel below.
        {
            let mut frames: [Frame<'_>; BATCH] = std::array::from_fn(|i| {
                let chunk = addrs[i] & mask;
                if i >= n || chunk + fs as u64 > area_len {
                    return Frame {
                        buf: &mut [],
                        offset: 0,
                        len: 0,
                    };
                }
                let offset = (addrs[i] - chunk) as usize;
                let len = (lens[i] as usize).min(fs - offset);
                // SAFETY: `chunk..chunk+fs` lies inside the UMEM area (checked above). The
                // kernel hands back only chunks we gave it, each once per time we gave it,
                // and the worker gives each chunk out at most once at a time: a chunk is in
                // exactly one of the stash, a ring, or this batch (the frame census counts
                // every chunk in exactly one place; debug builds also assert the stash never
                // overflows). So each RX descriptor names a distinct chunk the kernel will not
                // touch until we return it through the fill or TX ring, and this is the only
                // reference to those bytes while `frames` lives.
                let buf = unsafe { std::slice::from_raw_parts_mut(base.add(chunk as usize), fs) };
                Frame { buf, offset, len }
            });
            self.processor
                .process(now, &mut frames[..n], &mut verdicts[..n]);
        }
        // Test builds only: the daemon's tests make a worker panic here.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("xsk-worker-batch");

        let empty = XdpDesc {
            addr: 0,
            len: 0,
            options: 0,
        };
        let mut to_down = [empty; BATCH];
        let mut to_up = [empty; BATCH];
        // Whether each of `to_up` is a `Tx` frame (one-arm) rather than a `Reply`.
        let mut up_is_tx = [false; BATCH];
        let (mut nd, mut nu) = (0, 0);
        let two_arm = self.io.down.is_some();
        let c = &mut self.counters;
        c.rx += n as u64;
        for i in 0..n {
            let chunk = addrs[i] & mask;
            if chunk + fs as u64 > area_len {
                // A descriptor outside our UMEM: never ours to recycle.
                c.bad_descs += 1;
                continue;
            }
            match verdicts[i] {
                Verdict::Tx { offset, len } | Verdict::Reply { offset, len }
                    if offset.checked_add(len).is_some_and(|end| end <= fs) && len > 0 =>
                {
                    let desc = XdpDesc {
                        addr: chunk + offset as u64,
                        len: len as u32,
                        options: 0,
                    };
                    let tx = matches!(verdicts[i], Verdict::Tx { .. });
                    if two_arm && tx {
                        to_down[nd] = desc;
                        nd += 1;
                    } else {
                        to_up[nu] = desc;
                        up_is_tx[nu] = tx;
                        nu += 1;
                    }
                }
                Verdict::Tx { .. } | Verdict::Reply { .. } => {
                    c.bad_verdicts += 1;
                    self.stash.push(chunk);
                }
                // A frame in an AF_XDP ring has left the kernel's stack for good: there is no
                // way to hand it back (short of re-injecting through a TAP device, which would
                // cost a syscall per packet). The steering program passes non-VIP traffic to
                // the kernel before it reaches us, so a `Pass` here is counted and dropped.
                Verdict::Pass => {
                    c.pass_dropped += 1;
                    self.stash.push(chunk);
                }
                Verdict::Drop(reason) => {
                    c.drop(reason);
                    self.stash.push(chunk);
                }
            }
        }

        // `tx` and `reply` count what went into a TX ring; a frame that found no slot (the
        // room checked before receiving makes that all but impossible) counts only as
        // `tx_ring_full`.
        let mut unsent = 0;
        if let Some(d) = self.io.down.as_mut() {
            let sent = enqueue(d, &to_down[..nd]);
            for desc in &to_down[sent..nd] {
                self.stash.push(desc.addr & mask);
            }
            self.counters.tx += sent as u64;
            unsent += nd - sent;
        }
        let sent = enqueue(&mut self.io.up, &to_up[..nu]);
        for desc in &to_up[sent..nu] {
            self.stash.push(desc.addr & mask);
        }
        let sent_tx = up_is_tx[..sent].iter().filter(|&&tx| tx).count();
        self.counters.tx += sent_tx as u64;
        self.counters.reply += (sent - sent_tx) as u64;
        unsent += nu - sent;
        self.counters.tx_ring_full += unsent as u64;
        n
    }

    /// Starts loading what processing the frames at `addrs` will touch. The kernel copied
    /// them on the CPU that received them (on veth, the sender's), so each header is a
    /// cross-core miss; up to two lines cover Ethernet + IPv6 + TCP (and no more than the
    /// frame: a minimum-size frame fits one, and a second would load a line nobody reads while
    /// it holds a miss buffer the useful prefetches need). A processor that encapsulates
    /// also writes the headroom in front, a line last touched when the frame was last sent,
    /// thousands of frames ago: it is asked for writable, because stores that miss fill the
    /// store buffer and stall everything behind them (a profile showed that stall as the
    /// largest cost in the pipeline).
    fn prefetch_frames(&self, addrs: &[u64], lens: &[u32]) {
        let mask = !(u64::from(self.io.frame_size) - 1);
        let area_len = self.io.area.len() as u64;
        let base = self.io.area.base();
        let headroom = self.processor.headroom_written();
        for (&addr, &len) in addrs.iter().zip(lens) {
            if addr + 128 <= area_len && addr >= (addr & mask) + headroom as u64 {
                let p = base.wrapping_add(addr as usize);
                crate::flow::prefetch_range(p, (len as usize).clamp(1, 128));
                if headroom > 0 {
                    prefetch_write(p.wrapping_sub(headroom));
                    prefetch_write(p.wrapping_sub(1));
                }
            }
        }
    }

    /// Prefetches the frames the next iteration will take, so that they load while this one
    /// is in `sendto`: the RX ring is peeked, not consumed (a reader dropped without
    /// `release` rolls back), so no frame changes hands.
    fn prefetch_next(&mut self) {
        let mut addrs = [0u64; BATCH];
        let mut lens = [0u32; BATCH];
        let mut n = 0;
        if let Some(rx) = self.io.up.rx.as_mut() {
            let mut r = rx.receive(BATCH as u32);
            while let Some(d) = r.read() {
                addrs[n] = d.addr;
                lens[n] = d.len;
                n += 1;
            }
        }
        self.prefetch_frames(&addrs[..n], &lens[..n]);
    }

    /// Give stashed frames to the fill ring. Each reservation may return fewer slots than asked
    /// for; what didn't fit stays in the stash for the next try, so no frame is ever lost.
    fn refill(&mut self) {
        let Self { io, stash, .. } = self;
        while !stash.is_empty() {
            let mut w = io.up.fq.fill(stash.len() as u32);
            let cap = w.capacity() as usize;
            if cap == 0 {
                break;
            }
            let from = stash.len() - cap;
            let n = w.insert(stash[from..].iter().copied()) as usize;
            w.commit();
            stash.truncate(stash.len() - n);
        }
        if io.mode == XskMode::ZeroCopy && io.up.fq.needs_wakeup() {
            io.up.fq.wake();
        }
    }

    /// Sleep until RX has frames (or the poll times out, so `stop` is seen).
    fn sleep(&mut self) {
        let mut pfd = libc::pollfd {
            fd: self.io.up.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for our own socket.
        unsafe { libc::poll(&mut pfd, 1, IDLE_POLL_MS) };
    }

    /// On stop: transmit what is queued and collect completions, bounded in time.
    fn drain(&mut self) {
        let deadline = monotonic_ns() + 200_000_000;
        loop {
            self.reap();
            let mut k = Kick::default();
            kick(&self.io.up, self.io.mode, &mut k);
            if let Some(d) = &self.io.down {
                kick(d, self.io.mode, &mut k);
            }
            let c = self.census();
            // Saturating: a frame in transit may be seen in two rings (see [`Census`]).
            let in_flight = c.total.saturating_sub(c.fill + c.rx + c.stash);
            if in_flight == 0 || monotonic_ns() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stats.publish(&self.counters);
    }

    /// Once a second: refresh the kernel's socket statistics.
    fn housekeeping(&mut self) {
        if let Ok(s) = xdp_stats(self.io.up.fd()) {
            self.counters.kernel = s;
        }
        self.stats.publish(&self.counters);
    }
}

#[cfg(test)]
mod shed_tests {
    use super::shed_next;

    #[test]
    fn shedding_starts_above_three_quarters_and_stops_below_a_quarter() {
        let ring = 2048;
        assert!(!shed_next(false, 1536, ring));
        assert!(shed_next(false, 1537, ring));
        // Between the marks the state holds, whichever it is.
        for backlog in [512, 1000, 1536] {
            assert!(shed_next(true, backlog, ring));
            assert!(!shed_next(false, backlog, ring));
        }
        assert!(!shed_next(true, 511, ring));
        assert!(!shed_next(true, 0, ring));
    }
}

#[cfg(test)]
mod kick_tests {
    use super::{kick, Kick, Kickable, KICK_LIMIT};
    use crate::xsk::XskMode;
    use std::cell::Cell;

    /// A TX ring whose wakeups are counted: each one takes up to `per_call` descriptors,
    /// fails with `errno` if set, and the driver keeps asking for more while `wakeup`.
    struct FakePort {
        pending: Cell<u32>,
        wakeup: bool,
        per_call: u32,
        errno: Option<i32>,
        calls: Cell<u32>,
    }

    impl FakePort {
        fn new(pending: u32, per_call: u32) -> FakePort {
            FakePort {
                pending: Cell::new(pending),
                wakeup: true,
                per_call,
                errno: None,
                calls: Cell::new(0),
            }
        }
    }

    impl Kickable for FakePort {
        fn tx_pending(&self) -> u32 {
            self.pending.get()
        }

        fn tx_needs_wakeup(&self) -> bool {
            self.wakeup
        }

        fn wake_tx(&self) -> Result<(), i32> {
            self.calls.set(self.calls.get() + 1);
            if let Some(e) = self.errno {
                return Err(e);
            }
            self.pending
                .set(self.pending.get().saturating_sub(self.per_call));
            Ok(())
        }
    }

    /// Zero-copy: the driver sends from its own NAPI poll and asks for a wakeup until that
    /// has run, so the ring still shows pending descriptors after the call. One call a kick.
    #[test]
    fn a_zero_copy_kick_wakes_the_driver_once() {
        let port = FakePort::new(64, 0);
        let mut k = Kick::default();
        kick(&port, XskMode::ZeroCopy, &mut k);
        assert_eq!(port.calls.get(), 1);
        // Not asked: no call.
        let quiet = FakePort {
            wakeup: false,
            ..FakePort::new(64, 0)
        };
        kick(&quiet, XskMode::ZeroCopy, &mut k);
        assert_eq!(quiet.calls.get(), 0);
        // A failure is counted, once.
        let down = FakePort {
            errno: Some(libc::ENETDOWN),
            ..FakePort::new(64, 0)
        };
        kick(&down, XskMode::ZeroCopy, &mut k);
        assert_eq!((down.calls.get(), k.errors), (1, 1));
    }

    /// Copy mode transmits only inside `sendto`: kicked until nothing is pending, up to
    /// KICK_LIMIT calls, whatever `needs_wakeup` says.
    #[test]
    fn a_copy_kick_sends_until_nothing_is_pending() {
        let port = FakePort {
            wakeup: false,
            ..FakePort::new(100, 32)
        };
        let mut k = Kick::default();
        kick(&port, XskMode::Copy, &mut k);
        assert_eq!((port.calls.get(), port.pending.get()), (4, 0));
        let busy = FakePort {
            errno: Some(libc::EBUSY),
            ..FakePort::new(100, 32)
        };
        kick(&busy, XskMode::Copy, &mut k);
        assert_eq!(
            (busy.calls.get(), k.busy),
            (KICK_LIMIT, u64::from(KICK_LIMIT))
        );
        let down = FakePort {
            errno: Some(libc::ENETDOWN),
            ..FakePort::new(100, 32)
        };
        kick(&down, XskMode::Copy, &mut k);
        assert_eq!((down.calls.get(), k.errors), (1, 1));
    }
}
