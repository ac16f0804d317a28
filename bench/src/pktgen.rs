//! `dsrgate-bench pktgen`: load a gateway on real hardware with the kernel's packet
//! generator, from a separate box, and print the same offered-vs-delivered table as
//! `dsrgate-bench forward`.
//!
//! pktgen (`CONFIG_NET_PKTGEN`, `modprobe pktgen`) runs one kernel thread per CPU,
//! controlled through `/proc/net/pktgen` (Documentation/networking/pktgen.rst):
//! `kpktgend_N` takes thread commands (`rem_device_all`, `add_device eth1@N`), each added
//! device gets a file of its own for its parameters and results, and `pgctrl` takes
//! `start` (which blocks until every device is done), `stop` and `reset`. Each thread here
//! sends UDP to the VIP on its own TX queue (`QUEUE_MAP_CPU`), from random source
//! addresses and ports in the given ranges so that the gateway sees many flows.
//!
//! For each offered rate (`ratep`, split over the threads, or unpaced for `max`) it reports:
//! - **offered**: what pktgen itself reports it sent: the packets of all threads over the
//!   longest thread's send time (each device's `Result:` line).
//! - **delivered**, with `--gateway-api`: the frames the gateway's workers transmitted
//!   (the sum of `tx_packets` over the workers in the daemon's `/status`) between a read
//!   before the step and one after it, over pktgen's send time. The daemon refreshes its
//!   status every 200 ms, so a 10 s step is exact to a few percent; other traffic through the
//!   gateway at the same time adds to it.
//!
//! Nothing here runs on the development machine (its kernel has no pktgen); the command
//! sequence and the result parsing are unit-tested.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde::Serialize;

use crate::plot;

/// Where the kernel puts pktgen's control files.
const PROC_PKTGEN: &str = "/proc/net/pktgen";
/// Longest step allowed: every load is bounded in time.
const MAX_DURATION: f64 = 600.0;
/// How long to let the gateway's status catch up after a step (it refreshes every 200 ms).
const SETTLE: Duration = Duration::from_millis(500);

#[derive(clap::Args)]
pub struct Args {
    /// Output device on the generator box (the link toward the gateway or its router).
    #[arg(long)]
    dev: String,
    /// Destination MAC: the gateway's interface, or the router in front of it.
    #[arg(long, value_parser = parse_mac)]
    dst_mac: Mac,
    /// The VIP. pktgen sends UDP, so the VIP needs a UDP service on --dst-port.
    #[arg(long)]
    vip: IpAddr,
    /// Destination UDP port.
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// Source addresses, `A-B` or one address (IPv4 ranges only; pktgen has no IPv6 source
    /// range). Default: the device's own address.
    #[arg(long, value_parser = parse_src)]
    src: Option<SrcRange>,
    /// Source UDP ports, `A-B` or one port.
    #[arg(long, default_value = "1024-65535", value_parser = parse_ports)]
    src_ports: (u16, u16),
    /// Frame size without the FCS, as pktgen counts it: 60 is a 64-byte frame on the wire.
    #[arg(long, default_value_t = 60)]
    pkt_size: u32,
    /// Packets per step over all threads; 0: no packet limit, the step ends after --duration.
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Seconds per step (at most 600).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// pktgen threads, one per core, on CPUs --first-cpu onwards. Default: every CPU.
    #[arg(long)]
    threads: Option<usize>,
    /// First CPU (pktgen thread kpktgend_N) to use.
    #[arg(long, default_value_t = 0)]
    first_cpu: usize,
    /// Offered rates in Mpps, stepped through in order; `max` runs unpaced.
    #[arg(long, value_delimiter = ',', default_value = "0.5,1,2,4,max")]
    rates: Vec<Rate>,
    /// Copies of each built packet sent before the next is built (more is faster, but the
    /// copies share one flow).
    #[arg(long, default_value_t = 0)]
    clone_skb: u32,
    /// Packets handed to the driver per doorbell (pktgen's `burst`).
    #[arg(long, default_value_t = 1)]
    burst: u32,
    /// The gateway's dsrgate API (`host:port`): delivered = its workers' transmitted frames.
    #[arg(long)]
    gateway_api: Option<SocketAddr>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Draw delivered against offered into this SVG file (needs --gateway-api).
    #[arg(long)]
    plot: Option<PathBuf>,
}

pub type Mac = [u8; 6];

fn parse_mac(s: &str) -> Result<Mac, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    Ok(mac)
}

fn fmt_mac(m: &Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Source addresses: an IPv4 range, or one address of either family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrcRange {
    V4(std::net::Ipv4Addr, std::net::Ipv4Addr),
    V6(std::net::Ipv6Addr),
}

fn parse_src(s: &str) -> Result<SrcRange, String> {
    match s.split_once('-') {
        Some((a, b)) => {
            let a: std::net::Ipv4Addr = a.trim().parse().map_err(|e| format!("{a}: {e}"))?;
            let b: std::net::Ipv4Addr = b.trim().parse().map_err(|e| format!("{b}: {e}"))?;
            if a > b {
                return Err(format!("source range {s} is backwards"));
            }
            Ok(SrcRange::V4(a, b))
        }
        None => match s.parse::<IpAddr>().map_err(|e| format!("{s}: {e}"))? {
            IpAddr::V4(a) => Ok(SrcRange::V4(a, a)),
            IpAddr::V6(a) => Ok(SrcRange::V6(a)),
        },
    }
}

fn parse_ports(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p}: {e}"));
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("port range {s} is backwards"));
    }
    Ok((a, b))
}

/// One offered rate: packets per second over all threads, or unpaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Pps(f64),
    Max,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        if s.trim().eq_ignore_ascii_case("max") {
            return Ok(Rate::Max);
        }
        match s.trim().parse::<f64>() {
            Ok(m) if m > 0.0 && m.is_finite() => Ok(Rate::Pps(m * 1e6)),
            _ => Err(format!(
                "{s:?}: a rate is a positive number of Mpps, or max"
            )),
        }
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rate::Pps(p) => write!(f, "{:.3}", p / 1e6),
            Rate::Max => f.write_str("max"),
        }
    }
}

/// What every step sends; the rate varies per step.
#[derive(Clone, Debug)]
pub struct Plan {
    pub dev: String,
    pub dst_mac: Mac,
    pub vip: IpAddr,
    pub dst_port: u16,
    pub src: Option<SrcRange>,
    pub src_ports: (u16, u16),
    pub pkt_size: u32,
    /// Packets per step over all threads (0: unlimited).
    pub count: u64,
    /// CPUs whose pktgen threads send, one device (`dev@i`) each.
    pub cpus: Vec<usize>,
    pub clone_skb: u32,
    pub burst: u32,
}

/// One write to a pktgen control file (relative to `/proc/net/pktgen`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub file: String,
    pub cmd: String,
}

impl Write {
    fn new(file: impl Into<String>, cmd: impl Into<String>) -> Write {
        Write {
            file: file.into(),
            cmd: cmd.into(),
        }
    }

    /// Device and thread files answer every command on their `Result:` line; `pgctrl` has
    /// none.
    fn checked(&self) -> bool {
        self.file != "pgctrl"
    }
}

impl Plan {
    /// The device file of thread `i`: `eth1@0`, `eth1@1`, ...
    pub fn device(&self, i: usize) -> String {
        format!("{}@{i}", self.dev)
    }

    /// The writes that configure every thread and device for one step at `rate`, after
    /// which `start` on `pgctrl` sends. Pure, so the sequence is unit-tested.
    pub fn writes(&self, rate: Rate) -> Result<Vec<Write>> {
        let threads = self.cpus.len();
        ensure!(threads > 0, "no pktgen threads");
        let mut w = vec![Write::new("pgctrl", "reset")];
        let per_thread_count = self.count.div_ceil(threads as u64);
        for (i, cpu) in self.cpus.iter().enumerate() {
            let thread = format!("kpktgend_{cpu}");
            w.push(Write::new(&thread, "rem_device_all"));
            w.push(Write::new(
                &thread,
                format!("add_device {}", self.device(i)),
            ));
            let dev = self.device(i);
            let mut set = |cmd: String| w.push(Write::new(&dev, cmd));
            set("flag QUEUE_MAP_CPU".into());
            set(format!("count {per_thread_count}"));
            set(format!("clone_skb {}", self.clone_skb));
            set(format!("burst {}", self.burst));
            set(format!("pkt_size {}", self.pkt_size));
            set("delay 0".into());
            if let Rate::Pps(pps) = rate {
                let share = (pps / threads as f64).round().max(1.0);
                set(format!("ratep {share}"));
            }
            set(format!("dst_mac {}", fmt_mac(&self.dst_mac)));
            match (self.vip, self.src) {
                (IpAddr::V4(vip), src) => {
                    set(format!("dst_min {vip}"));
                    set(format!("dst_max {vip}"));
                    match src {
                        Some(SrcRange::V4(a, b)) => {
                            set(format!("src_min {a}"));
                            set(format!("src_max {b}"));
                            if a != b {
                                set("flag IPSRC_RND".into());
                            }
                        }
                        Some(SrcRange::V6(_)) => bail!("an IPv4 VIP needs IPv4 sources"),
                        None => {}
                    }
                }
                (IpAddr::V6(vip), src) => {
                    set("flag IPV6".into());
                    set(format!("dst6 {vip}"));
                    match src {
                        Some(SrcRange::V6(a)) => set(format!("src6 {a}")),
                        Some(SrcRange::V4(..)) => bail!(
                            "an IPv6 VIP needs one IPv6 source (pktgen has no IPv6 source range)"
                        ),
                        None => {}
                    }
                }
            }
            set(format!("udp_dst_min {}", self.dst_port));
            set(format!("udp_dst_max {}", self.dst_port));
            set(format!("udp_src_min {}", self.src_ports.0));
            set(format!("udp_src_max {}", self.src_ports.1));
            if self.src_ports.0 != self.src_ports.1 {
                set("flag UDPSRC_RND".into());
            }
            set("flag NO_TIMESTAMP".into());
        }
        Ok(w)
    }
}

/// A finished run of one device, from its `Result:` line (pktgen.c `show_results`):
///
/// ```text
/// Result: OK: 15430(c15405+d25) usec, 100000 (60byte,0frags)
///   6480562pps 3110Mb/sec (3110669760bps) errors: 0
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunResult {
    /// Time from start to stop.
    pub usec: u64,
    pub packets: u64,
    pub pkt_size: u32,
    pub pps: u64,
    pub errors: u64,
}

/// Parses a device file's `Result:` after a run. Anything else there (`Idle`, an error, a
/// command's `OK: count=...`) is returned as the error text.
pub fn parse_result(file: &str) -> Result<RunResult, String> {
    let at = file
        .find("Result: ")
        .ok_or_else(|| "no Result: line".to_owned())?;
    let text = &file[at + "Result: ".len()..];
    let first = text.lines().next().unwrap_or_default().trim();
    let run = || -> Option<RunResult> {
        let rest = text.strip_prefix("OK: ")?;
        let (usec, rest) = rest.split_once('(')?;
        let (_, rest) = rest.split_once("usec, ")?;
        let (packets, rest) = rest.split_once(" (")?;
        let (size, rest) = rest.split_once("byte")?;
        let (pps, rest) = rest.split_once("pps")?;
        let pps = pps.rsplit(|c: char| c.is_whitespace() || c == ')').next()?;
        let (_, errors) = rest.split_once("errors: ")?;
        let errors: String = errors.chars().take_while(char::is_ascii_digit).collect();
        Some(RunResult {
            usec: usec.trim().parse().ok()?,
            packets: packets.trim().parse().ok()?,
            pkt_size: size.trim().parse().ok()?,
            pps: pps.trim().parse().ok()?,
            errors: errors.parse().ok()?,
        })
    };
    run().ok_or_else(|| first.to_owned())
}

/// `pkts-sofar` of a device file's `Current:` section (the running count).
pub fn parse_sofar(file: &str) -> Option<u64> {
    let (_, rest) = file.split_once("pkts-sofar:")?;
    rest.split_whitespace().next()?.parse().ok()
}

/// The first line of the `Result:` of a device or thread file, for command errors.
fn result_line(file: &str) -> Option<&str> {
    file.lines()
        .find_map(|l| l.trim().strip_prefix("Result: "))
        .map(str::trim)
}

/// Checks that pktgen is there: its directory, `pgctrl`, a thread per CPU asked for, and
/// the device.
pub fn preflight(root: &Path, cpus: &[usize], dev: &str) -> Result<()> {
    if !root.is_dir() {
        bail!(
            "{} does not exist: the kernel's packet generator is not loaded. Run `modprobe pktgen` \
             on the generator box (the kernel needs CONFIG_NET_PKTGEN, as a module or built in)",
            root.display()
        );
    }
    ensure!(
        root.join("pgctrl").exists(),
        "{}/pgctrl is missing",
        root.display()
    );
    for cpu in cpus {
        ensure!(
            root.join(format!("kpktgend_{cpu}")).exists(),
            "{}/kpktgend_{cpu} is missing: pktgen has one thread per online CPU; lower \
             --threads or --first-cpu",
            root.display()
        );
    }
    ensure!(
        Path::new("/sys/class/net").join(dev).exists(),
        "no network device {dev:?} on this box"
    );
    Ok(())
}

/// The proc interface: writes commands and reads results.
struct Proc {
    root: PathBuf,
}

impl Proc {
    fn write(&self, w: &Write) -> Result<()> {
        let path = self.root.join(&w.file);
        let sent = OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{}\n", w.cmd).as_bytes()));
        let answer = if w.checked() {
            std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| result_line(&t).map(str::to_owned))
        } else {
            None
        };
        match (sent, answer) {
            (Ok(()), None) => Ok(()),
            (Ok(()), Some(a)) if a.starts_with("OK") => Ok(()),
            (sent, answer) => bail!(
                "pktgen rejected `{}` on {}: {}",
                w.cmd,
                path.display(),
                answer.unwrap_or_else(|| sent.err().map_or("no answer".into(), |e| e.to_string()))
            ),
        }
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.root.join(file);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Writes `stop` to `pgctrl` when dropped, so an error or panic mid-step never leaves
/// pktgen sending.
struct StopGuard<'a>(&'a Proc);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        let _ = self.0.write(&Write::new("pgctrl", "stop"));
    }
}

/// Frames the gateway's workers received and transmitted so far.
fn gateway_counters(api: SocketAddr) -> Result<(u64, u64)> {
    let s = control::status::fetch(api, Duration::from_secs(3))?;
    Ok(s.workers
        .iter()
        .fold((0, 0), |(rx, tx), w| (rx + w.rx_packets, tx + w.tx_packets)))
}

/// One measured step.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Point {
    /// The rate asked for (None: unpaced).
    pub target_pps: Option<f64>,
    /// What pktgen reports it sent.
    pub offered_pps: f64,
    /// The gateway's transmitted frames per second (with --gateway-api).
    pub delivered_pps: Option<f64>,
    /// The gateway's received frames per second (with --gateway-api).
    pub gateway_rx_pps: Option<f64>,
    /// pktgen's transmit errors (the device refused a frame).
    pub errors: u64,
    pub packets: u64,
    pub seconds: f64,
}

/// Sums the threads' results: all packets over the longest send time.
fn combine(results: &[RunResult]) -> (u64, f64, u64) {
    let packets = results.iter().map(|r| r.packets).sum();
    let usec = results.iter().map(|r| r.usec).max().unwrap_or(0);
    let errors = results.iter().map(|r| r.errors).sum();
    (packets, usec as f64 / 1e6, errors)
}

/// The forward table's summary: best delivered rate and where, and the unpaced step.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    pub peak_pps: f64,
    pub peak_offered_pps: f64,
    pub overload_pps: f64,
    pub overload_offered_pps: f64,
}

/// Delivered where the gateway was read, else pktgen's own rate.
fn summarize(points: &[Point]) -> Summary {
    let delivered = |p: &Point| p.delivered_pps.unwrap_or(p.offered_pps);
    let mut s = Summary::default();
    for p in points {
        if delivered(p) > s.peak_pps {
            s.peak_pps = delivered(p);
            s.peak_offered_pps = p.offered_pps;
        }
        if p.target_pps.is_none() {
            s.overload_pps = delivered(p);
            s.overload_offered_pps = p.offered_pps;
        }
    }
    s
}

struct Progress {
    tty: bool,
    last_line: Instant,
}

impl Progress {
    fn show(&mut self, line: &str) {
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            let _ = writeln!(err, "{line}");
            self.last_line = Instant::now();
        }
    }

    fn done(&mut self, line: &str) {
        let mut err = std::io::stderr();
        if self.tty {
            let _ = writeln!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        self.last_line = Instant::now();
    }
}

fn step(
    proc: &Proc,
    plan: &Plan,
    rate: Rate,
    duration: Duration,
    api: Option<SocketAddr>,
    progress: &mut Progress,
    label: &str,
) -> Result<Point> {
    for w in plan.writes(rate)? {
        proc.write(&w)?;
    }
    let before = api.map(gateway_counters).transpose()?;
    let guard = StopGuard(proc);
    let start = Instant::now();
    // `start` blocks until every device has sent its count, or until `stop`.
    let root = proc.root.clone();
    let runner = std::thread::Builder::new()
        .name("pktgen-start".into())
        .spawn(move || Proc { root }.write(&Write::new("pgctrl", "start")))?;
    let devices: Vec<String> = (0..plan.cpus.len()).map(|i| plan.device(i)).collect();
    let mut last = (start, 0u64);
    while !runner.is_finished() && start.elapsed() < duration {
        std::thread::sleep(
            Duration::from_millis(250).min(duration.saturating_sub(start.elapsed())),
        );
        let mut sofar = 0;
        for d in &devices {
            sofar += proc
                .read(d)
                .ok()
                .as_deref()
                .and_then(parse_sofar)
                .unwrap_or(0);
        }
        let now = Instant::now();
        if now.duration_since(last.0) >= Duration::from_secs(1) {
            let pps = (sofar - last.1.min(sofar)) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, sofar);
            progress.show(&format!(
                "{label}: {:>5.1}/{:.0} s, sent {sofar} ({:.3} Mpps)",
                start.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                pps / 1e6
            ));
        }
    }
    drop(guard);
    runner
        .join()
        .map_err(|_| anyhow!("the pktgen start thread panicked"))??;
    let mut results = Vec::new();
    for d in &devices {
        let text = proc.read(d)?;
        results.push(parse_result(&text).map_err(|e| anyhow!("pktgen {d}: no run result: {e}"))?);
    }
    let (packets, seconds, errors) = combine(&results);
    ensure!(seconds > 0.0, "pktgen reported a zero send time");
    let (delivered, rx) = match (api, before) {
        (Some(api), Some((rx0, tx0))) => {
            std::thread::sleep(SETTLE);
            let (rx1, tx1) = gateway_counters(api)?;
            (
                Some(tx1.saturating_sub(tx0) as f64 / seconds),
                Some(rx1.saturating_sub(rx0) as f64 / seconds),
            )
        }
        _ => (None, None),
    };
    let offered = packets as f64 / seconds;
    let mut line = format!("{label}: offered {:.3} Mpps", offered / 1e6);
    if let Some(d) = delivered {
        let _ = write!(line, ", delivered {:.3} Mpps", d / 1e6);
    }
    let _ = write!(line, ", {errors} errors");
    progress.done(&line);
    Ok(Point {
        target_pps: match rate {
            Rate::Pps(p) => Some(p),
            Rate::Max => None,
        },
        offered_pps: offered,
        delivered_pps: delivered,
        gateway_rx_pps: rx,
        errors,
        packets,
        seconds,
    })
}

fn mpps(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{:.3}", v / 1e6))
}

pub fn run(a: Args) -> Result<()> {
    ensure!(
        a.duration > 0.0 && a.duration <= MAX_DURATION,
        "--duration must be in (0, {MAX_DURATION}] seconds"
    );
    ensure!(!a.rates.is_empty(), "--rates is empty");
    ensure!(
        a.plot.is_none() || a.gateway_api.is_some(),
        "--plot draws delivered against offered: it needs --gateway-api"
    );
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a
        .threads
        .unwrap_or(online.saturating_sub(a.first_cpu).max(1));
    ensure!(threads > 0, "--threads must be at least 1");
    let plan = Plan {
        dev: a.dev,
        dst_mac: a.dst_mac,
        vip: a.vip,
        dst_port: a.dst_port,
        src: a.src,
        src_ports: a.src_ports,
        pkt_size: a.pkt_size,
        count: a.count,
        cpus: (a.first_cpu..a.first_cpu + threads).collect(),
        clone_skb: a.clone_skb,
        burst: a.burst,
    };
    // Every step's writes are valid before anything is sent.
    for r in &a.rates {
        plan.writes(*r)?;
    }
    let root = PathBuf::from(PROC_PKTGEN);
    preflight(&root, &plan.cpus, &plan.dev)?;
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "pktgen needs root (writes to {PROC_PKTGEN})"
    );
    if let Some(api) = a.gateway_api {
        gateway_counters(api).with_context(|| format!("reading the gateway's status at {api}"))?;
    }

    let proc = Proc { root };
    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        last_line: Instant::now(),
    };
    let duration = Duration::from_secs_f64(a.duration);
    let mut points = Vec::new();
    for (i, rate) in a.rates.iter().enumerate() {
        let label = format!("[{}/{}] rate {rate} Mpps", i + 1, a.rates.len());
        points.push(step(
            &proc,
            &plan,
            *rate,
            duration,
            a.gateway_api,
            &mut progress,
            &label,
        )?);
    }
    // Leave pktgen with no devices, as found before a run.
    proc.write(&Write::new("pgctrl", "reset"))?;

    let summary = summarize(&points);
    if let Some(file) = &a.plot {
        let curve = plot::Curve {
            name: "gateway (forwarded)".into(),
            points: points
                .iter()
                .filter_map(|p| Some((p.offered_pps, p.delivered_pps?)))
                .collect(),
        };
        plot::throughput_curve(
            file,
            &format!("pktgen to {}:{} via {}", plan.vip, plan.dst_port, plan.dev),
            &[curve],
        )?;
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({ "pktgen": summary, "points": points, "threads": threads })
        );
        return Ok(());
    }
    println!(
        "pktgen: {}-byte frames ({} on the wire) to {}:{} via {}, {threads} threads, {} s per rate{}",
        plan.pkt_size,
        plan.pkt_size + 4,
        plan.vip,
        plan.dst_port,
        plan.dev,
        a.duration,
        if a.gateway_api.is_some() {
            ""
        } else {
            " (no --gateway-api: delivered unknown, pktgen's sent rate shown)"
        }
    );
    println!(
        "{:>12} {:>14} {:>15} {:>14} {:>10}",
        "target Mpps", "offered Mpps", "delivered Mpps", "gw rx Mpps", "errors"
    );
    for p in &points {
        println!(
            "{:>12} {:>14.3} {:>15} {:>14} {:>10}",
            p.target_pps
                .map_or("max".into(), |t| format!("{:.3}", t / 1e6)),
            p.offered_pps / 1e6,
            mpps(p.delivered_pps),
            mpps(p.gateway_rx_pps),
            p.errors
        );
    }
    println!(
        "{:<16} {:>12} {:>14} {:>14} {:>16}",
        "path", "peak Mpps", "@offered Mpps", "overload Mpps", "@offered Mpps"
    );
    println!(
        "{:<16} {:>12.3} {:>14.3} {:>14.3} {:>16.3}",
        "pktgen",
        summary.peak_pps / 1e6,
        summary.peak_offered_pps / 1e6,
        summary.overload_pps / 1e6,
        summary.overload_offered_pps / 1e6
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            dev: "eth1".into(),
            dst_mac: parse_mac("02:00:00:00:00:0a").unwrap(),
            vip: "192.0.2.10".parse().unwrap(),
            dst_port: 7,
            src: Some(parse_src("203.0.113.1-203.0.113.254").unwrap()),
            src_ports: (1024, 65535),
            pkt_size: 60,
            count: 1_000_001,
            cpus: vec![2, 3],
            clone_skb: 0,
            burst: 8,
        }
    }

    fn cmds(w: &[Write], file: &str) -> Vec<String> {
        w.iter()
            .filter(|w| w.file == file)
            .map(|w| w.cmd.clone())
            .collect()
    }

    #[test]
    fn ipv4_command_sequence() {
        let w = plan().writes(Rate::Pps(1e6)).unwrap();
        assert_eq!(w[0], Write::new("pgctrl", "reset"));
        assert_eq!(
            cmds(&w, "kpktgend_2"),
            ["rem_device_all", "add_device eth1@0"]
        );
        assert_eq!(
            cmds(&w, "kpktgend_3"),
            ["rem_device_all", "add_device eth1@1"]
        );
        let dev = cmds(&w, "eth1@1");
        assert_eq!(
            dev,
            [
                "flag QUEUE_MAP_CPU",
                "count 500001",
                "clone_skb 0",
                "burst 8",
                "pkt_size 60",
                "delay 0",
                "ratep 500000",
                "dst_mac 02:00:00:00:00:0a",
                "dst_min 192.0.2.10",
                "dst_max 192.0.2.10",
                "src_min 203.0.113.1",
                "src_max 203.0.113.254",
                "flag IPSRC_RND",
                "udp_dst_min 7",
                "udp_dst_max 7",
                "udp_src_min 1024",
                "udp_src_max 65535",
                "flag UDPSRC_RND",
                "flag NO_TIMESTAMP",
            ]
        );
        assert_eq!(cmds(&w, "eth1@0"), dev);
        // A thread's device is added before the device file is written to.
        let add = w.iter().position(|w| w.cmd == "add_device eth1@1").unwrap();
        let first = w.iter().position(|w| w.file == "eth1@1").unwrap();
        assert!(add < first);
        // start is not part of the configuration.
        assert!(!w.iter().any(|w| w.cmd == "start"));
    }

    #[test]
    fn unpaced_single_source_and_ipv6() {
        let mut p = plan();
        p.src = Some(parse_src("203.0.113.9").unwrap());
        p.src_ports = (4000, 4000);
        p.count = 0;
        let dev = cmds(&p.writes(Rate::Max).unwrap(), "eth1@0");
        assert!(dev.contains(&"count 0".to_owned()));
        assert!(!dev.iter().any(|c| c.starts_with("ratep")));
        assert!(!dev.iter().any(|c| c.contains("_RND")));
        assert!(dev.contains(&"src_min 203.0.113.9".to_owned()));

        p.vip = "2001:db8:100::10".parse().unwrap();
        assert!(p.writes(Rate::Max).is_err(), "IPv4 sources for an IPv6 VIP");
        p.src = Some(parse_src("2001:db8:c::10").unwrap());
        let dev = cmds(&p.writes(Rate::Max).unwrap(), "eth1@0");
        for c in ["flag IPV6", "dst6 2001:db8:100::10", "src6 2001:db8:c::10"] {
            assert!(dev.contains(&c.to_owned()), "{c} in {dev:?}");
        }
        assert!(!dev.iter().any(|c| c.starts_with("dst_min")));
    }

    /// A device file after a run, as pktgen.c prints it (the pktgen.rst example).
    const DEVICE: &str = "\
Params: count 100000  min_pkt_size: 60  max_pkt_size: 60
     frags: 0  delay: 0  clone_skb: 64  ifname: eth4@0
     flows: 0 flowlen: 0
     queue_map_min: 0  queue_map_max: 0
     dst_min: 192.168.81.2  dst_max:
     src_min:   src_max:
     src_mac: 90:e2:ba:0a:56:b4 dst_mac: 00:1b:21:3c:9d:f8
     udp_src_min: 9  udp_src_max: 109  udp_dst_min: 9  udp_dst_max: 9
     src_mac_count: 0  dst_mac_count: 0
     Flags: UDPSRC_RND  NO_TIMESTAMP  QUEUE_MAP_CPU
Current:
     pkts-sofar: 100000  errors: 0
     started: 623913381008us  stopped: 623913396439us idle: 25us
     seq_num: 100001  cur_dst_mac_offset: 0  cur_src_mac_offset: 0
     cur_saddr: 192.168.8.3  cur_daddr: 192.168.81.2
     cur_udp_dst: 9  cur_udp_src: 42
     cur_queue_map: 0
     flows: 0
Result: OK: 15430(c15405+d25) usec, 100000 (60byte,0frags)
  6480562pps 3110Mb/sec (3110669760bps) errors: 0
";

    #[test]
    fn parses_a_run_result() {
        assert_eq!(
            parse_result(DEVICE),
            Ok(RunResult {
                usec: 15430,
                packets: 100000,
                pkt_size: 60,
                pps: 6480562,
                errors: 0
            })
        );
        assert_eq!(parse_sofar(DEVICE), Some(100000));
        let errs = DEVICE.replace("errors: 0\n", "errors: 17\n");
        assert_eq!(parse_result(&errs).unwrap().errors, 17);
    }

    #[test]
    fn other_results_are_errors() {
        assert_eq!(
            parse_result("Params: ...\nResult: Idle\n"),
            Err("Idle".into())
        );
        assert_eq!(
            parse_result("Result: OK: count=100000\n"),
            Err("OK: count=100000".into())
        );
        assert_eq!(
            parse_result("Result: No such parameter \"bogus\"\n"),
            Err("No such parameter \"bogus\"".into())
        );
        assert!(parse_result("Result: OK: 15430(c15405+d25) usec, x (60byte,0frags)").is_err());
        assert!(parse_result("").is_err());
        assert_eq!(
            result_line("Running: \nStopped: eth4@0\nResult: OK: add_device=eth4@0\n"),
            Some("OK: add_device=eth4@0")
        );
    }

    #[test]
    fn combines_threads_and_summarizes() {
        let r = |usec, packets| RunResult {
            usec,
            packets,
            pkt_size: 60,
            pps: 0,
            errors: 1,
        };
        assert_eq!(
            combine(&[r(2_000_000, 3_000_000), r(1_900_000, 2_000_000)]),
            (5_000_000, 2.0, 2)
        );
        let p = |target: Option<f64>, offered: f64, delivered: Option<f64>| Point {
            target_pps: target,
            offered_pps: offered,
            delivered_pps: delivered,
            gateway_rx_pps: None,
            errors: 0,
            packets: 0,
            seconds: 1.0,
        };
        let s = summarize(&[
            p(Some(1e6), 1e6, Some(1e6)),
            p(Some(2e6), 2e6, Some(1.7e6)),
            p(None, 6e6, Some(1.6e6)),
        ]);
        assert_eq!(
            s,
            Summary {
                peak_pps: 1.7e6,
                peak_offered_pps: 2e6,
                overload_pps: 1.6e6,
                overload_offered_pps: 6e6
            }
        );
        // Without the gateway, pktgen's own rate stands in.
        assert_eq!(summarize(&[p(None, 6e6, None)]).peak_pps, 6e6);
    }

    #[test]
    fn preflight_names_the_missing_module() {
        let e = preflight(Path::new("/nonexistent/pktgen"), &[0], "lo").unwrap_err();
        assert!(e.to_string().contains("modprobe pktgen"), "{e}");
        // A directory without pgctrl or threads is not pktgen either.
        let dir = std::env::temp_dir().join(format!("dsrgate-pktgen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = preflight(&dir, &[0], "lo").unwrap_err().to_string();
        std::fs::File::create(dir.join("pgctrl")).unwrap();
        let e2 = preflight(&dir, &[5], "lo").unwrap_err().to_string();
        std::fs::File::create(dir.join("kpktgend_5")).unwrap();
        let e3 = preflight(&dir, &[5], "no-such-dev0")
            .unwrap_err()
            .to_string();
        let ok = preflight(&dir, &[5], "lo");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains("pgctrl"), "{e}");
        assert!(e2.contains("kpktgend_5"), "{e2}");
        assert!(e3.contains("no-such-dev0"), "{e3}");
        ok.unwrap();
    }

    #[test]
    fn argument_parsers() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("1.5".parse::<Rate>(), Ok(Rate::Pps(1.5e6)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!(parse_ports("53"), Ok((53, 53)));
        assert!(parse_ports("9-1").is_err());
        assert!(parse_src("10.0.0.9-10.0.0.1").is_err());
        assert!(parse_src("2001:db8::1-2001:db8::9").is_err());
        assert!(parse_mac("02:00:00:00:00").is_err());
        assert!(parse_mac("02:00:00:00:00:zz").is_err());
    }
}
