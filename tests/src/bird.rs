//! BIRD 2 as the upstream router of a test topology: started in the `router` namespace
//! (AS 65000) with lowered timers so tests run fast, queried with `birdc`, stopped and its
//! files removed on drop. Shared by the BGP interop tests and the daemon's end-to-end tests.
//!
//! Recipe (see `shared/notes/platform-facts.md`): BIRD needs `router id` and `protocol
//! device`; ECMP into the kernel needs `merge paths on` with the export limited to BGP
//! routes; `error wait time` and `connect retry time` are lowered; BIRD runs in the
//! foreground with its own control socket.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::netns::{fabric4, gateway_host, Netns, Proc};

/// BIRD's AS.
pub const ROUTER_AS: u32 = 65000;
/// The hold time BIRD proposes (keepalives every 2 s).
pub const HOLD: u16 = 6;

/// A session toward gateway `gw` (its IPv4 fabric address) expected to have AS `asn`.
pub fn neighbor(gw: u8, asn: u32) -> (u8, u32, String) {
    (gw, asn, fabric4(gateway_host(gw)))
}

/// BIRD in the router namespace, with its files in a directory removed on drop.
pub struct Bird<'a> {
    ns: &'a Netns,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl<'a> Bird<'a> {
    /// Starts BIRD (AS [`ROUTER_AS`]) in `ns` with one session per `neighbors` entry:
    /// (gateway number, the AS BIRD expects it to have, its address; see [`neighbor`]).
    /// `extra` goes into the sessions' template (e.g. `password "x";`).
    pub fn start(ns: &'a Netns, neighbors: &[(u8, u32, String)], extra: &str) -> Result<Bird<'a>> {
        let protocols: String = neighbors
            .iter()
            .map(|(gw, asn, addr)| {
                format!("protocol bgp gw{gw} from speakers {{ neighbor {addr} as {asn}; }}\n")
            })
            .collect();
        Bird::with_protocols(ns, &protocols, extra)
    }

    /// [`Bird::start`] with the BGP sessions written out: `protocols` is config text whose
    /// `protocol bgp NAME from speakers { ... }` blocks use the shared template.
    pub fn with_protocols(ns: &'a Netns, protocols: &str, extra: &str) -> Result<Bird<'a>> {
        let dir = std::env::temp_dir().join(format!("dsrgate-bird-{}", ns.name()));
        std::fs::create_dir_all(&dir)?;
        let mut conf = format!(
            r#"log "{log}" all;
router id {id};
protocol device {{ scan time 1; }}
protocol kernel {{ ipv4 {{ export where source = RTS_BGP; }}; merge paths on; }}
protocol kernel {{ ipv6 {{ export where source = RTS_BGP; }}; merge paths on; }}
template bgp speakers {{
  local as {ROUTER_AS};
  hold time {HOLD};
  connect retry time 1;
  error wait time 1, 2;
  ipv4 {{ import all; export none; }};
  ipv6 {{ import all; export none; }};
  {extra}
}}
"#,
            log = dir.join("bird.log").display(),
            id = fabric4(1),
        );
        conf += protocols;
        std::fs::write(dir.join("bird.conf"), conf)?;
        let mut bird = Bird {
            ns,
            dir,
            proc: None,
        };
        bird.run()?;
        Ok(bird)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// (Re)starts the BIRD process and waits until its control socket answers.
    pub fn run(&mut self) -> Result<()> {
        let (conf, sock, pid) = (
            self.path("bird.conf"),
            self.path("bird.ctl"),
            self.path("bird.pid"),
        );
        let mut cmd = self.ns.command("bird");
        cmd.args(["-f", "-c", &conf, "-s", &sock, "-P", &pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        self.proc = Some(self.ns.spawn_command(cmd)?);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.birdc(&["show", "status"]).is_err() {
            let exited = !self.proc.as_mut().is_some_and(Proc::is_running);
            if exited || Instant::now() > deadline {
                bail!("BIRD did not start; log: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM and wait: BIRD closes its sessions with Cease.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(p) = self.proc.take() {
            p.terminate(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// `birdc ARGS` on this BIRD's control socket.
    pub fn birdc(&self, args: &[&str]) -> Result<String> {
        let sock = self.path("bird.ctl");
        let mut full = vec!["birdc", "-s", sock.as_str()];
        full.extend_from_slice(args);
        let out = self.ns.output(&full)?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // birdc also exits non-zero on negative replies such as "Network not found";
        // only a reply that never came is a failure.
        if !text.contains(" ready.") {
            bail!(
                "birdc {args:?} failed: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(text)
    }

    /// Protocol `name`'s line in `show protocols`: name, protocol, table, state, since
    /// (the time of its last state change) and info (the BGP state).
    pub fn protocol(&self, name: &str) -> Result<String> {
        let out = self.birdc(&["show", "protocols", name])?;
        out.lines()
            .map(|l| l.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-' || c == ' '))
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .with_context(|| format!("no protocol {name} in BIRD: {out}"))
    }

    /// The withdrawals BIRD has received on protocol `name`, over its channels (the
    /// `Import withdraws:` rows of `show protocols all`, first column): a withdrawal shows
    /// here even when the route came back before a look at the table could see it gone.
    pub fn withdrawals_received(&self, name: &str) -> Result<u64> {
        let out = self.birdc(&["show", "protocols", "all", name])?;
        let rows: Vec<u64> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Import withdraws:"))
            .map(|r| {
                let n = r.split_whitespace().next().unwrap_or_default();
                n.parse()
                    .with_context(|| format!("withdrawals {n:?} in BIRD's {out}"))
            })
            .collect::<Result<_>>()?;
        ensure!(
            !rows.is_empty(),
            "no route change stats for {name} in BIRD: {out}"
        );
        Ok(rows.iter().sum())
    }

    /// Everything BIRD logged so far (state changes, NOTIFICATIONs sent and received).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("bird.log")).unwrap_or_default()
    }

    /// Whether BIRD has `prefix` from protocol `name` (one of the paths it may hold).
    pub fn has_route_from(&self, prefix: &str, name: &str) -> Result<bool> {
        let out = self.birdc(&["show", "route", prefix, "protocol", name])?;
        Ok(out.contains(prefix))
    }

    /// `show route for PREFIX all` when BIRD has it, `None` otherwise.
    pub fn route(&self, prefix: &str) -> Result<Option<String>> {
        let out = self.birdc(&["show", "route", prefix, "all"])?;
        Ok(out.contains(prefix).then_some(out))
    }

    /// Waits until `prefix` is present (or absent); returns how long that took.
    pub fn wait_route(&self, prefix: &str, present: bool, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.route(prefix)?.is_some() == present {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{prefix} still {} in BIRD after {timeout:?}:\n{}",
                    if present { "absent" } else { "present" },
                    self.birdc(&["show", "protocols", "all"])?
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Bird<'_> {
    fn drop(&mut self) {
        drop(self.proc.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether two `show protocols` lines show one session: every field equal, and the "since"
/// times within 100 ms. BIRD keeps "since" on its monotonic clock and prints it as wall
/// time, so a session that never changed can print a millisecond later once the VM's two
/// clocks drift apart (seen in CI). So a session that went down and came back must be
/// compared across a pause of well over 100 ms (the reload tests wait 1.1 s).
pub fn same_session(a: &str, b: &str) -> bool {
    // "NAME PROTO TABLE STATE HH:MM:SS.mmm INFO...": the other fields, and "since" in ms.
    fn split(l: &str) -> (Vec<&str>, Option<u64>) {
        let mut f: Vec<&str> = l.split_whitespace().collect();
        let since = (f.len() > 4).then(|| f.remove(4));
        let ms = since.and_then(|t| {
            let (hms, ms) = t.split_once('.').unwrap_or((t, "0"));
            let mut secs = 0u64;
            for part in hms.split(':') {
                secs = secs * 60 + part.parse::<u64>().ok()?;
            }
            Some(secs * 1000 + ms.parse::<u64>().ok()?)
        });
        (f, ms)
    }
    let ((fa, ta), (fb, tb)) = (split(a), split(b));
    fa == fb
        && match (ta, tb) {
            (Some(x), Some(y)) => x.abs_diff(y) <= 100,
            (x, y) => x == y,
        }
}

/// The kernel route for `dst` in `ns`, as `ip route show` prints it (empty if none).
pub fn kernel_route(ns: &Netns, dst: &str) -> Result<String> {
    let family = if dst.contains(':') { "-6" } else { "-4" };
    ns.ip(&[family, "route", "show", dst])
}

#[cfg(test)]
mod tests {
    use super::same_session;

    #[test]
    fn same_session_allows_the_display_drift_of_since_only() {
        let up = "a BGP --- up 23:12:22.574 Established";
        assert!(same_session(up, up));
        assert!(same_session(up, "a BGP --- up 23:12:22.575 Established"));
        // Re-established after a pause, or another state: not the same session.
        assert!(!same_session(up, "a BGP --- up 23:12:23.700 Established"));
        assert!(!same_session(up, "a BGP --- start 23:12:22.574 Active"));
        assert!(!same_session(up, "b BGP --- up 23:12:22.574 Established"));
    }
}
