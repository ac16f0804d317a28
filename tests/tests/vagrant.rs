//! `vagrant validate` of `vagrant/Vagrantfile` in both modes (one VM running the netns lab,
//! and `DSRGATE_MULTI_VM=1` with one VM per role), without a hypervisor: Debian's vagrant
//! validates the configuration with `--ignore-provider`. Also checks that the multi-VM
//! provisioning scripts are valid shell and use only options the role scripts accept.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dsrgate_tests::{require_privileges_with, TempDir};

fn vagrant_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../vagrant")
}

/// Runs `vagrant ARGS` on the Vagrantfile in `dir` with its state (`.vagrant`, the vagrant
/// home) in a temporary directory, so the test leaves nothing in the repository or in
/// root's home, and never phones home.
fn vagrant(dir: &Path, multi_vm: bool, args: &[&str]) -> (Output, String) {
    let scratch = TempDir::new("vagrant");
    let mut cmd = Command::new("vagrant");
    cmd.args(args)
        .current_dir(dir)
        .env("VAGRANT_CWD", dir)
        .env("VAGRANT_HOME", scratch.join("home"))
        .env("VAGRANT_DOTFILE_PATH", scratch.join("dotfile"))
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .env("VAGRANT_NO_COLOR", "1")
        .env_remove("DSRGATE_MULTI_VM");
    if multi_vm {
        cmd.env("DSRGATE_MULTI_VM", "1");
    }
    let out = cmd.output().expect("running vagrant");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn have_vagrant(what: &str) -> bool {
    require_privileges_with(what, &["vagrant"])
}

#[test]
fn single_vm_mode_validates() {
    if !have_vagrant("vagrant validate (single VM)") {
        return;
    }
    let (out, text) = vagrant(&vagrant_dir(), false, &["validate", "--ignore-provider"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Vagrantfile validated successfully"),
        "{text}"
    );
    assert!(text.contains("==> lab:"), "one machine named lab: {text}");
    assert!(!text.contains("==> router:"), "{text}");
}

#[test]
fn multi_vm_mode_validates_every_role() {
    if !have_vagrant("vagrant validate (multi-VM)") {
        return;
    }
    let (out, text) = vagrant(&vagrant_dir(), true, &["validate", "--ignore-provider"]);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Vagrantfile validated successfully"),
        "{text}"
    );
    for m in ["client", "router", "gw1", "gw2", "node1", "node2", "node3"] {
        assert!(
            text.contains(&format!("==> {m}:")),
            "no machine {m}: {text}"
        );
    }
    assert!(!text.contains("==> lab:"), "{text}");
}

/// The check can fail: a Vagrantfile with an unknown setting is rejected, naming it.
#[test]
fn a_broken_vagrantfile_is_rejected() {
    if !have_vagrant("vagrant validate (broken file)") {
        return;
    }
    let dir = TempDir::new("vagrant-broken");
    let text = std::fs::read_to_string(vagrant_dir().join("Vagrantfile")).unwrap();
    let broken = text.replacen(
        "config.vm.box = BOX",
        "config.vm.box = BOX\n  config.vm.boxx = 1",
        1,
    );
    assert_ne!(broken, text);
    std::fs::write(dir.join("Vagrantfile"), broken).unwrap();
    std::fs::copy(vagrant_dir().join("lab.env"), dir.join("lab.env")).unwrap();
    for multi in [false, true] {
        let (out, text) = vagrant(dir.path(), multi, &["validate", "--ignore-provider"]);
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("boxx"), "{text}");
    }
}

/// Loads the Vagrantfile in Ruby (vagrant's own interpreter) with `Vagrant.configure`
/// stubbed, writes each multi-VM machine's provisioning script, and checks that it is valid
/// bash that passes only options its role script handles.
#[test]
fn multi_vm_provisioning_matches_the_role_scripts() {
    if !have_vagrant("Vagrantfile role scripts") || !require_privileges_with("ruby", &["ruby"]) {
        return;
    }
    let out_dir = TempDir::new("vagrant-roles");
    let script = format!(
        r#"module Vagrant; def self.configure(_version); end; end
ENV["DSRGATE_MULTI_VM"] = "1"
load "{vf}"
ROLE_SCRIPTS.each {{ |name, sh| File.write(File.join("{out}", name + ".sh"), sh) }}
"#,
        vf = vagrant_dir().join("Vagrantfile").display(),
        out = out_dir.path().display()
    );
    let out = Command::new("ruby").args(["-e", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let roles = [
        ("client", None),
        ("router", Some("router.sh")),
        ("gw1", Some("gateway.sh")),
        ("gw2", Some("gateway.sh")),
        ("node1", Some("node.sh")),
        ("node2", Some("node.sh")),
        ("node3", Some("node.sh")),
    ];
    for (name, role) in roles {
        let path = out_dir.join(format!("{name}.sh"));
        let sh = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(
            check.status.success(),
            "{name}: {}\n{sh}",
            String::from_utf8_lossy(&check.stderr)
        );
        let Some(role) = role else { continue };
        assert!(sh.contains(&format!("$ROLES/{role} start")), "{name}: {sh}");
        let accepted = std::fs::read_to_string(vagrant_dir().join("roles").join(role)).unwrap();
        let options: Vec<&str> = sh
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .collect();
        assert!(options.len() > 5, "{name}: {sh}");
        for opt in options {
            assert!(
                accepted.contains(&format!("  {opt}) ")),
                "{name} passes {opt}, which {role} does not accept"
            );
        }
    }
}
