//! The lab's client: traffic to a VIP, and what the nodes saw.
//!
//! `dsrgate-client http --vip ADDR [--port 80] --count N [--expect-nodes a,b]
//! [--expect-client IP]`: N fresh connections, one `GET /` each; prints how the answers
//! spread over the nodes (`node=<name> client=<ip>:<port>` bodies from `dsrgate-node`)
//! and which client addresses the nodes saw. Exits non-zero if a request failed, a node
//! outside `--expect-nodes` answered or one inside it never did, or a node saw another
//! client address than `--expect-client`.
//!
//! `dsrgate-client hold --vip ADDR [--port 7] --conns N --seconds S [--interval-ms 100]`:
//! N long-lived TCP echo connections, each sending a message every interval and waiting
//! for its echo; prints per connection its local port, round trips and longest stall, and
//! how many survived (no error, and the last echo arrived before the end). Exits non-zero
//! unless `--expect-survivors K` (default: all) survived.
//!
//! `dsrgate-client udp --vip ADDR [--port 7] --count N`: N datagrams, each from its own
//! socket (so its own flow), each waiting for its echo from exactly the VIP's address and
//! port (a connected socket drops anything else). Exits non-zero unless all are answered.
//!
//! Every run is bounded in connections, datagrams and time.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

const MAX_COUNT: usize = 10_000;
const MAX_CONNS: usize = 200;
const MAX_SECONDS: u64 = 600;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dsrgate-client: {e:#}");
            ExitCode::from(2)
        }
    }
}

const USAGE: &str = "usage: dsrgate-client http --vip ADDR [--port 80] --count N \
[--expect-nodes a,b] [--expect-client IP] [--timeout-ms 2000]\n       \
dsrgate-client hold --vip ADDR [--port 7] --conns N --seconds S [--interval-ms 100] \
[--expect-survivors K]\n       \
dsrgate-client udp --vip ADDR [--port 7] --count N [--timeout-ms 1000]";

/// `--key value` options after the subcommand.
struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(args: &[String], known: &[&str]) -> Result<Args> {
        let mut map = BTreeMap::new();
        let mut it = args.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .filter(|k| known.contains(k))
                .with_context(|| format!("unknown option {k:?}\n{USAGE}"))?;
            let v = it.next().with_context(|| format!("{k} needs a value"))?;
            map.insert(key.to_owned(), v.clone());
        }
        Ok(Args(map))
    }

    fn get<T: std::str::FromStr>(&self, key: &str, default: Option<T>) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.get(key) {
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("--{key} {v:?}: {e}")),
            None => default.with_context(|| format!("--{key} is required\n{USAGE}")),
        }
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

fn run() -> Result<bool> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    match cmd.as_str() {
        "http" => {
            let a = Args::parse(
                rest,
                &[
                    "vip",
                    "port",
                    "count",
                    "expect-nodes",
                    "expect-client",
                    "timeout-ms",
                ],
            )?;
            let vip: IpAddr = a.get("vip", None)?;
            let count: usize = a.get("count", None)?;
            ensure!((1..=MAX_COUNT).contains(&count), "--count 1..={MAX_COUNT}");
            let expect_nodes: Option<Vec<String>> = a
                .opt("expect-nodes")
                .map(|l| l.split(',').map(str::to_owned).collect());
            let expect_client: Option<IpAddr> = match a.opt("expect-client") {
                Some(c) => Some(c.parse().context("--expect-client")?),
                None => None,
            };
            let timeout = Duration::from_millis(a.get("timeout-ms", Some(2000))?);
            let target = SocketAddr::new(vip, a.get("port", Some(80))?);
            let spread = http_spread(target, count, timeout);
            print!("{}", spread.render());
            Ok(spread.check(expect_nodes.as_deref(), expect_client))
        }
        "hold" => {
            let a = Args::parse(
                rest,
                &[
                    "vip",
                    "port",
                    "conns",
                    "seconds",
                    "interval-ms",
                    "expect-survivors",
                ],
            )?;
            let vip: IpAddr = a.get("vip", None)?;
            let conns: usize = a.get("conns", None)?;
            ensure!((1..=MAX_CONNS).contains(&conns), "--conns 1..={MAX_CONNS}");
            let seconds: u64 = a.get("seconds", None)?;
            ensure!(
                (1..=MAX_SECONDS).contains(&seconds),
                "--seconds 1..={MAX_SECONDS}"
            );
            let interval = Duration::from_millis(a.get("interval-ms", Some(100))?);
            let expect: usize = a.get("expect-survivors", Some(conns))?;
            let target = SocketAddr::new(vip, a.get("port", Some(7))?);
            let report = hold(target, conns, Duration::from_secs(seconds), interval)?;
            print!("{}", report.render(target, seconds, interval));
            let ok = report.survivors() >= expect;
            if !ok {
                println!("FAILED: expected at least {expect} survivors");
            }
            Ok(ok)
        }
        "udp" => {
            let a = Args::parse(rest, &["vip", "port", "count", "timeout-ms"])?;
            let vip: IpAddr = a.get("vip", None)?;
            let count: usize = a.get("count", None)?;
            ensure!((1..=MAX_COUNT).contains(&count), "--count 1..={MAX_COUNT}");
            let timeout = Duration::from_millis(a.get("timeout-ms", Some(1000))?);
            let target = SocketAddr::new(vip, a.get("port", Some(7))?);
            let failures: Vec<String> = (0..count)
                .filter_map(|i| udp_echo(target, i, timeout).err())
                .map(|e| format!("{e:#}"))
                .collect();
            println!(
                "{count} UDP datagrams to {target}, each from its own port: {} echoed back \
                 from {target}, {} lost",
                count - failures.len(),
                failures.len()
            );
            for f in failures.iter().take(5) {
                println!("  failed: {f}");
            }
            Ok(failures.is_empty())
        }
        _ => bail!("{USAGE}"),
    }
}

/// One datagram from a fresh port; its echo must come back from `target` itself.
fn udp_echo(target: SocketAddr, i: usize, timeout: Duration) -> Result<()> {
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => "0.0.0.0:0".parse()?,
        SocketAddr::V6(_) => "[::]:0".parse()?,
    };
    let s = UdpSocket::bind(any)?;
    s.connect(target)?;
    s.set_read_timeout(Some(timeout))?;
    let msg = format!("datagram {i}");
    s.send(msg.as_bytes())?;
    let mut buf = [0u8; 64];
    let n = s
        .recv(&mut buf)
        .with_context(|| format!("datagram {i}: no echo from {target}"))?;
    ensure!(&buf[..n] == msg.as_bytes(), "datagram {i}: wrong echo");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// http

/// What `count` GETs found.
struct Spread {
    target: SocketAddr,
    count: usize,
    /// Answers per node name.
    nodes: BTreeMap<String, usize>,
    /// Client addresses (without port) the nodes reported, with counts.
    clients: BTreeMap<String, usize>,
    failures: Vec<String>,
}

fn http_spread(target: SocketAddr, count: usize, timeout: Duration) -> Spread {
    let mut s = Spread {
        target,
        count,
        nodes: BTreeMap::new(),
        clients: BTreeMap::new(),
        failures: Vec::new(),
    };
    for i in 0..count {
        match get(target, timeout) {
            Ok(body) => {
                let (node, client) = parse_body(&body);
                *s.nodes.entry(node).or_default() += 1;
                *s.clients.entry(client).or_default() += 1;
            }
            Err(e) => s.failures.push(format!("request {}: {e:#}", i + 1)),
        }
    }
    s
}

/// One connection, `GET /` with `Connection: close`, the body.
fn get(target: SocketAddr, timeout: Duration) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&target, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let host = match target {
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
        SocketAddr::V4(a) => a.ip().to_string(),
    };
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut reply)
        .context("reading the reply")?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("reply without a header end")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "status {:?}",
        head.lines().next()
    );
    Ok(body.trim().to_owned())
}

/// `node=node1 client=203.0.113.10:40000` → (`node1`, `203.0.113.10`); IPv6 clients are
/// printed `[addr]:port`.
fn parse_body(body: &str) -> (String, String) {
    let field = |name: &str| {
        body.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or("?")
            .to_owned()
    };
    let client = field("client=");
    let addr = match client.rsplit_once(':') {
        Some((a, _port)) => a.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => client,
    };
    (field("node="), addr)
}

impl Spread {
    fn render(&self) -> String {
        let ok: usize = self.nodes.values().sum();
        let mut out = format!(
            "{} requests to {}: {} answered, {} failed\n",
            self.count,
            self.target,
            ok,
            self.failures.len()
        );
        for (node, n) in &self.nodes {
            out += &format!("  {node:<8} {n:>4}  {}\n", "#".repeat(*n * 40 / self.count));
        }
        let seen: Vec<String> = self
            .clients
            .iter()
            .map(|(c, n)| format!("{c} ({n})"))
            .collect();
        out += &format!("  client address seen by the nodes: {}\n", seen.join(", "));
        for f in self.failures.iter().take(5) {
            out += &format!("  failed: {f}\n");
        }
        out
    }

    /// Prints each violated expectation; true if there is none.
    fn check(&self, nodes: Option<&[String]>, client: Option<IpAddr>) -> bool {
        let mut problems = Vec::new();
        if !self.failures.is_empty() {
            problems.push(format!("{} requests failed", self.failures.len()));
        }
        if let Some(want) = nodes {
            for n in self.nodes.keys().filter(|n| !want.contains(n)) {
                problems.push(format!("{n} answered but should not have"));
            }
            for n in want.iter().filter(|n| !self.nodes.contains_key(*n)) {
                problems.push(format!("{n} never answered"));
            }
        }
        if let Some(c) = client {
            let want = c.to_string();
            for other in self.clients.keys().filter(|k| **k != want) {
                problems.push(format!("a node saw client address {other}, not {want}"));
            }
        }
        for p in &problems {
            println!("FAILED: {p}");
        }
        problems.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// hold

/// One long-lived connection's record.
struct Held {
    local_port: u16,
    round_trips: u64,
    longest_stall: Duration,
    /// Why it ended early (an error, EOF, or no echo before the end).
    failure: Option<String>,
}

struct HoldReport {
    conns: Vec<Held>,
}

fn hold(
    target: SocketAddr,
    conns: usize,
    duration: Duration,
    interval: Duration,
) -> Result<HoldReport> {
    // Open all first, so they all exist for the whole run.
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let s = TcpStream::connect_timeout(&target, Duration::from_secs(3))
            .with_context(|| format!("opening connection {} to {target}", i + 1))?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let ports: Vec<String> = streams
        .iter()
        .map(|s| {
            s.local_addr()
                .map(|a| a.port().to_string())
                .unwrap_or_default()
        })
        .collect();
    println!(
        "opened {conns} connections to {target} from local ports {}",
        ports.join(" ")
    );
    let end = Instant::now() + duration;
    let handles: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| thread::spawn(move || echo_loop(i, s, end, interval)))
        .collect();
    let conns = handles
        .into_iter()
        .map(|h| h.join().expect("echo thread panicked"))
        .collect();
    Ok(HoldReport { conns })
}

/// How long after the end the last round trip may still complete.
const GRACE: Duration = Duration::from_secs(1);

/// Until `end`: send a numbered line, wait for exactly its echo, sleep the rest of the
/// interval. The stall is the longest time between two completed round trips.
fn echo_loop(i: usize, mut s: TcpStream, end: Instant, interval: Duration) -> Held {
    let local_port = s.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut held = Held {
        local_port,
        round_trips: 0,
        longest_stall: Duration::ZERO,
        failure: None,
    };
    let mut last_ok = Instant::now();
    let mut buf = [0u8; 64];
    let mut seq = 0u64;
    while Instant::now() < end {
        seq += 1;
        let msg = format!("conn {i} seq {seq}\n");
        let result = (|| -> Result<()> {
            s.write_all(msg.as_bytes()).context("write")?;
            let mut got = 0;
            while got < msg.len() {
                let left = (end + GRACE).saturating_duration_since(Instant::now());
                ensure!(!left.is_zero(), "no echo before the end");
                s.set_read_timeout(Some(left))?;
                match s.read(&mut buf[got..msg.len()]) {
                    Ok(0) => bail!("closed by the peer"),
                    Ok(n) => got += n,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                        bail!("no echo before the end")
                    }
                    Err(e) => return Err(e).context("read"),
                }
            }
            ensure!(&buf[..got] == msg.as_bytes(), "echo does not match");
            Ok(())
        })();
        let now = Instant::now();
        held.longest_stall = held.longest_stall.max(now - last_ok);
        if let Err(e) = result {
            held.failure = Some(format!("{e:#}"));
            break;
        }
        held.round_trips += 1;
        last_ok = now;
        thread::sleep(interval.min(end.saturating_duration_since(now)));
    }
    held
}

impl HoldReport {
    fn survivors(&self) -> usize {
        self.conns.iter().filter(|c| c.failure.is_none()).count()
    }

    fn render(&self, target: SocketAddr, seconds: u64, interval: Duration) -> String {
        let mut out = format!(
            "{} connections to {target} for {seconds}s, a message every {} ms on each\n",
            self.conns.len(),
            interval.as_millis()
        );
        out += "  conn  local-port  round-trips  longest-stall  result\n";
        for (i, c) in self.conns.iter().enumerate() {
            out += &format!(
                "  {:>4}  {:>10}  {:>11}  {:>10} ms  {}\n",
                i + 1,
                c.local_port,
                c.round_trips,
                c.longest_stall.as_millis(),
                c.failure.as_deref().unwrap_or("ok")
            );
        }
        let (worst, stall) = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.failure.is_none())
            .map(|(i, c)| (i + 1, c.longest_stall))
            .max_by_key(|(_, s)| *s)
            .unwrap_or((0, Duration::ZERO));
        out += &format!(
            "survived: {} of {}\nlongest stall of a survivor: {} ms (conn {worst})\n",
            self.survivors(),
            self.conns.len(),
            stall.as_millis()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_bodies() {
        assert_eq!(
            parse_body("node=node2 client=203.0.113.10:40001"),
            ("node2".into(), "203.0.113.10".into())
        );
        assert_eq!(
            parse_body("node=node1 client=[2001:db8:c::10]:5"),
            ("node1".into(), "2001:db8:c::10".into())
        );
        assert_eq!(parse_body("garbage"), ("?".into(), "?".into()));
    }

    #[test]
    fn spread_checks_every_expectation() {
        let mut s = Spread {
            target: "192.0.2.10:80".parse().unwrap(),
            count: 3,
            nodes: [("node1".to_owned(), 2), ("node3".to_owned(), 1)].into(),
            clients: [("203.0.113.10".to_owned(), 3)].into(),
            failures: Vec::new(),
        };
        let client = Some("203.0.113.10".parse().unwrap());
        let want = ["node1".to_owned(), "node3".to_owned()];
        assert!(s.check(Some(&want), client));
        assert!(!s.check(Some(&want[..1]), client), "node3 unexpected");
        assert!(
            !s.check(Some(&["node2".to_owned()]), None),
            "node2 never answered"
        );
        assert!(!s.check(None, Some("203.0.113.99".parse().unwrap())));
        s.failures.push("request 1: refused".into());
        assert!(!s.check(None, None));
        assert!(s.render().contains("3 answered, 1 failed"));
    }
}
