//! A worker's stats name the core it runs on only when it could be pinned there: a worker
//! whose core this process may not run on runs unpinned, and says so (`core: None`),
//! rather than reporting the core it was given.
//!
//! Topology: `gen eth0 ──veth── eth0 gw`, two RX queues, the steering program on the
//! gateway's end and a worker per queue.

use dataplane::bpf::Steer;
use dataplane::xsk::{BareForwarder, Workers, XskConfig};
use dsrgate_tests::netns::{unique_prefix, Port, Topology};
use dsrgate_tests::require_privileges;

/// The CPUs this process may run on, and the first CPU below 1024 it may not.
fn cpus() -> (Vec<usize>, usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes into it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a writable cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY (both): every `cpu` is below CPU_SETSIZE (1024).
    let allowed = (0..1024)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    let not = (0..1024)
        .rev()
        .find(|&cpu| !unsafe { libc::CPU_ISSET(cpu, &set) })
        .expect("a host with 1024 CPUs");
    (allowed, not)
}

#[test]
fn only_a_pinned_worker_reports_its_core() {
    if !require_privileges("xsk_pinning::only_a_pinned_worker_reports_its_core") {
        return;
    }
    let mut t = Topology::default();
    t.ns("gen");
    t.ns("gw");
    t.link(
        Port::new("gen", "eth0").queues(2),
        Port::new("gw", "eth0").queues(2),
        None,
    );
    let net = t.build(&unique_prefix()).expect("topology");
    let (allowed, unavailable) = cpus();
    let stats = net
        .ns("gw")
        .enter(move || {
            let steer = Steer::attach("eth0").expect("steering program");
            let mut cfg = XskConfig::new("eth0");
            cfg.cores = vec![allowed[0], unavailable];
            cfg.frames = 1024;
            cfg.ring_size = 512;
            let workers = Workers::start(&cfg, steer, |_| BareForwarder {
                src: [0; 6],
                dst: [0; 6],
            })
            .expect("workers");
            let stats = workers.stats();
            workers.stop().expect("stop");
            (stats, allowed[0])
        })
        .unwrap();
    let (stats, pinned) = stats;
    let cores: Vec<Option<usize>> = stats.iter().map(|s| s.core).collect();
    assert_eq!(
        cores,
        [Some(pinned), None],
        "core {unavailable} cannot be pinned"
    );
}
