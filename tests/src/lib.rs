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

/// The environment variable naming a file to which every skipped test appends one line
/// (`skipping <what>: <why>`). `scripts/test.sh` sets it and lists the skips at the end:
/// libtest shows the stderr of a passing test only with `--nocapture`.
pub const SKIP_LOG_ENV: &str = "DSRGATE_TEST_SKIP_LOG";

/// Gate for a privileged test (root, network namespaces, BPF): checks that we run as
/// root and that `ip` and `ethtool` are on `PATH`.
///
/// Returns `true` when the test may run. Otherwise, outside CI it prints
/// `skipping <what>: <why>` to stderr, appends that line to the file named by
/// [`SKIP_LOG_ENV`] (if set), and returns `false` (the test returns early); with
/// `CI=true` a missing prerequisite is a failure, so it panics with the reason.
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
    let missing: Vec<String> = BASE_TOOLS
        .iter()
        .chain(tools)
        .filter(|t| find_in_path(t).is_none())
        .map(|t| match find_in_sbin(t) {
            // The tests run tools by name, through PATH (execvp), so one outside PATH is
            // missing even if it is installed.
            Some(p) => format!(
                "{t} (installed as {}, add its directory to PATH)",
                p.display()
            ),
            None => (*t).to_owned(),
        })
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
    let line = format!("skipping {what}: {why}");
    eprintln!("{line}");
    if let Some(file) = std::env::var_os(SKIP_LOG_ENV).filter(|f| !f.is_empty()) {
        log_skip(Path::new(&file), &line);
    }
    false
}

/// Appends `line` to `file` in one write (O_APPEND), so the lines of tests skipping at
/// the same time do not interleave.
fn log_skip(file: &Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(file)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        eprintln!("cannot record the skip in {}: {e}", file.display());
    }
}

/// A fresh directory under the system's temp dir, removed with everything in it when the
/// guard is dropped, also when the test panics. Its name has `tag`, the pid and a counter.
#[derive(Debug)]
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        // Relaxed is enough: the counter only has to hand out distinct values.
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dsrgate-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of a killed process with the same pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: impl AsRef<Path>) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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

/// Reads with `read` until `done` holds for what it read, and returns that. A failed read
/// is tried again (what it reads may not be up yet). After `timeout`, an error naming
/// `what` with the last read as `show` renders it, or the last read's error.
pub fn poll<T>(
    what: &str,
    timeout: std::time::Duration,
    mut read: impl FnMut() -> anyhow::Result<T>,
    done: impl Fn(&T) -> bool,
    show: impl Fn(&T) -> String,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = read();
        if let Ok(t) = &last {
            if done(t) {
                return last;
            }
        }
        if std::time::Instant::now() > deadline {
            return match last {
                Ok(t) => Err(anyhow::anyhow!(
                    "timed out waiting for {what}:\n{}",
                    show(&t)
                )),
                Err(e) => Err(e.context(format!("timed out waiting for {what}"))),
            };
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// The full path of `tool` if it is an executable file in a `PATH` directory: where
/// `Command::new(tool)` finds it. (`scripts/test.sh` and `vagrant/lab.sh` put the sbin
/// directories on PATH, which a non-login root shell such as Debian's `su` may lack.)
pub fn find_in_path(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(std::env::split_paths(&path), tool)
}

/// `tool` in the sbin and bin directories, whether or not they are on `PATH`.
fn find_in_sbin(tool: &str) -> Option<std::path::PathBuf> {
    find_in(
        ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(Into::into),
        tool,
    )
}

fn find_in(
    dirs: impl IntoIterator<Item = std::path::PathBuf>,
    tool: &str,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dirs.into_iter().map(|dir| dir.join(tool)).find(|p| {
        p.metadata()
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

    /// A skip is appended to the file named by [`SKIP_LOG_ENV`], one line each.
    #[test]
    fn skips_are_logged_one_line_each() {
        let file = std::env::temp_dir().join(format!("dsrgate-skiplog-{}", std::process::id()));
        let _ = std::fs::remove_file(&file);
        log_skip(&file, "skipping a: why");
        log_skip(&file, "skipping b: why not");
        let text = std::fs::read_to_string(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        assert_eq!(text, "skipping a: why\nskipping b: why not\n");
    }

    #[test]
    fn temp_dirs_are_removed_on_drop_and_on_panic() {
        let d = TempDir::new("selftest");
        std::fs::write(d.join("f"), "x").unwrap();
        let path = d.path().to_owned();
        assert_ne!(path, TempDir::new("selftest").path());
        drop(d);
        assert!(!path.exists());
        let path = std::panic::catch_unwind(|| {
            let d = TempDir::new("selftest");
            let p = d.path().to_owned();
            std::fs::write(d.join("f"), "x").unwrap();
            std::panic::panic_any(p);
        })
        .unwrap_err()
        .downcast::<std::path::PathBuf>()
        .unwrap();
        assert!(!path.exists(), "{} left behind", path.display());
    }

    /// The gate looks where `Command::new` does: PATH only.
    #[test]
    fn finds_only_on_path() {
        assert!(find_in(["/bin".into()], "sh").is_some());
        assert!(find_in(Vec::new(), "sh").is_none());
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
