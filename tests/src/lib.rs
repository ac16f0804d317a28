//! Shared by the integration tests, the lab and the benchmarks: the network-namespace
//! topology builder (one definition, used everywhere) and test prerequisites.

pub mod bird;
pub mod daemon;
pub mod frames;
pub mod netns;

use std::path::Path;

/// Tools every privileged test needs: namespaces, links and addresses are built with
/// iproute2, offloads are switched with ethtool.
const BASE_TOOLS: &[&str] = &["ip", "ethtool"];

/// Gate for a privileged test (root, network namespaces, BPF): checks that we run as
/// root and that `ip` and `ethtool` are on `PATH`.
///
/// Returns `true` when the test may run. Otherwise, outside CI it prints
/// `skipping <what>: <why>` to stderr and returns `false` (the test returns early);
/// with `CI=true` a missing prerequisite is a failure, so it panics with the reason.
pub fn require_privileges(what: &str) -> bool {
    require_privileges_with(what, &[])
}

/// [`require_privileges`] plus extra tools the caller needs on `PATH`
/// (for example `&["bird", "birdc"]` or `&["clang"]`).
pub fn require_privileges_with(what: &str, tools: &[&str]) -> bool {
    match missing_prerequisite(tools) {
        None => true,
        Some(why) => skip_or_fail(what, &why),
    }
}

fn missing_prerequisite(tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("needs root (euid is {euid})"));
    }
    let missing: Vec<&str> = BASE_TOOLS
        .iter()
        .chain(tools)
        .copied()
        .filter(|t| find_in_path(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing tools on PATH: {}", missing.join(", ")));
    }
    None
}

fn skip_or_fail(what: &str, why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what}: prerequisite missing in CI: {why}");
    }
    eprintln!("skipping {what}: {why}");
    false
}

/// The value `read` gives once two reads `step` apart agree: for counters and states that
/// keep moving for a moment after the event a test waits for. An error after `timeout`.
pub fn settled<T: PartialEq + std::fmt::Debug>(
    what: &str,
    step: std::time::Duration,
    timeout: std::time::Duration,
    mut read: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = read()?;
    loop {
        std::thread::sleep(step);
        let now = read()?;
        if now == last {
            return Ok(now);
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what} still moving after {timeout:?}: {now:?}"
        );
        last = now;
    }
}

/// The full path of `tool` if it is an executable file in a `PATH` directory
/// (or in the sbin directories, which a non-login root shell may lack).
pub fn find_in_path(tool: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into))
        .map(|dir| dir.join(tool))
        .find(|p| {
            Path::new(p)
                .metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_nonsense() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("definitely-not-a-tool-dsrgate").is_none());
    }

    #[test]
    fn names_the_missing_tool() {
        // As root the tool check decides; as non-root the euid check does.
        let why = missing_prerequisite(&["definitely-not-a-tool-dsrgate"]).unwrap();
        assert!(
            why.contains("definitely-not-a-tool-dsrgate") || why.contains("root"),
            "{why}"
        );
    }
}
