//! The `dsrgate` command line without privileges: `check` validates a file and names the
//! file and field of a problem (or of a warning); `run` refuses a bad config before touching
//! anything; `status` names the address it could not reach.

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
