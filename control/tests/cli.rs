//! The `dsrgate` command line, without privileges but for one test: `check` validates a
//! file and names the file and field of a problem (or of a warning), and with `--host` every
//! problem this host has with it (that one test, in a namespace, needs root); `run` refuses
//! a bad config before touching anything; `status` names the address it could not reach.

use std::process::Command;

use dsrgate_tests::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_dsrgate");

fn example() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dsrgate.example.toml"
    ))
    .expect("reading the example config")
}

fn write(dir: &TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn check_accepts_the_example_and_names_the_broken_field() {
    let dir = TempDir::new("cli");
    let good = write(&dir, "good.toml", &example());
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok ("));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");

    // Valid but probably unmeant: accepted, with a warning that names file, line and field.
    let unchecked = write(
        &dir,
        "unchecked.toml",
        "[dataplane]\nupstream_interface = \"eth0\"\n\n[[vips]]\naddress = \"203.0.113.10\"\nport = 80\n\n[[vips.backends]]\naddress = \"10.0.0.1\"\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&unchecked)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("warning: ")
            && err.contains("unchecked.toml:4:1: `vips[0].health`: no health check"),
        "{err}"
    );

    let bad = write(
        &dir,
        "bad.toml",
        &example().replace("tunnel_mtu = 1500", "tunnel_mtu = 99999"),
    );
    for cmd in ["check", "run"] {
        let out = Command::new(BIN)
            .args([cmd, "--config"])
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{cmd}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad.toml") && err.contains("dataplane.tunnel_mtu"),
            "{cmd}: {err}"
        );
    }
}

/// A one-arm config on `uplink` (`extra` lines in `[dataplane]`) that listens at `local`:
/// the API, and a passive BGP peer.
fn one_arm(uplink: &str, extra: &str, local: &str) -> String {
    format!(
        "[dataplane]\nupstream_interface = \"{uplink}\"\nflow_table_size = 4096\n{extra}\n\
         [api]\nlisten = \"{local}:9180\"\n\n\
         [bgp]\nlocal_as = 65001\nrouter_id = \"192.0.2.1\"\n\n\
         [[bgp.peers]]\naddress = \"198.51.100.2\"\nremote_as = 65000\npassive = true\n\
         port = 1179\nlocal_address = \"{local}\"\n"
    )
}

/// `check --host` reports every problem of this host, each naming the file and the field,
/// and exits 1; plain `check` accepts the same file, which may be meant for another host.
/// (The daemon's capabilities are a problem too unless this runs as root.)
#[test]
fn check_host_names_every_problem_this_host_has_with_the_config() {
    let dir = TempDir::new("cli");
    // 1023, the highest core a config may name: a host would need 1024 CPUs to have it.
    let config = write(
        &dir,
        "elsewhere.toml",
        &one_arm("nosuch0", "worker_cores = [1023]", "192.0.2.99").replace(
            "[dataplane]\n",
            "[dataplane]\ntopology = \"two-arm\"\ndownstream_interface = \"nosuch1\"\n",
        ),
    );
    let out = Command::new(BIN)
        .args(["check", "--host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let path = config.display();
    for (field, what) in [
        (
            "dataplane.upstream_interface",
            "no network interface \"nosuch0\"",
        ),
        (
            "dataplane.downstream_interface",
            "no network interface \"nosuch1\"",
        ),
        ("dataplane.worker_cores[0]", "core 1023 is not available"),
        (
            "bgp.peers[0].local_address",
            "cannot listen for BGP on 192.0.2.99:1179: ",
        ),
        ("api.listen", "cannot listen on 192.0.2.99:9180: "),
    ] {
        let line = format!("{path}: `{field}`: {what}");
        assert!(err.contains(&line), "no {line:?} in: {err}");
    }

    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(ok.contains(": ok (") && !ok.contains("this host"), "{ok}");
}

/// A config that fits the host: its uplink a veth in a scratch namespace, where the check
/// runs (as root, with every capability the daemon needs), listening on loopback.
#[test]
fn check_host_accepts_a_config_that_fits_this_host() {
    use dsrgate_tests::netns::{unique_prefix, Port, Topology};
    if !dsrgate_tests::require_privileges("cli::check_host_accepts_a_config_that_fits_this_host") {
        return;
    }
    let mut t = Topology::default();
    t.ns("gw");
    t.ns("peer");
    t.link(Port::new("gw", "up0"), Port::new("peer", "eth0"), None);
    let net = t.build(&unique_prefix()).unwrap();
    let dir = TempDir::new("cli");
    let config = write(&dir, "fits.toml", &one_arm("up0", "", "127.0.0.1"));
    let out = net
        .ns("gw")
        .command(BIN)
        .args(["check", "--host", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ok = String::from_utf8_lossy(&out.stdout);
    assert!(
        ok.contains("fits.toml: ok (") && ok.contains("; this host: ok"),
        "{ok}"
    );
}

#[test]
fn status_names_the_unreachable_api() {
    // A port nothing listens on: the loopback connect is refused at once.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let out = Command::new(BIN)
        .args(["status", "--api", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr.to_string()), "{err}");
}
