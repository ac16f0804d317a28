//! The `dsrgate` daemon and CLI.

mod decap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use control::{config, daemon, status};

#[derive(Parser)]
#[command(
    name = "dsrgate",
    version,
    about = "Kernel-bypass L4 load balancer with Direct Server Return"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One human-readable line per event.
    Human,
    /// One JSON object per event.
    Json,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Run the gateway: dataplane, health checks, BGP, API.
    Run {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Validate a config file without running anything.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// Also check this host, as `run` does before it starts anything: the interfaces
        /// exist in this network namespace, the uplink's MTU fits the AF_XDP workers, the
        /// worker cores are CPUs this process may run on, the BGP and API listening
        /// addresses are this host's (not whether their ports are free: the running
        /// daemon holds them), and this process has the capabilities the daemon needs;
        /// every problem is reported. Run it on the gateway as the daemon runs (its user
        /// or capabilities, network namespace, CPU affinity). Without it only the file is
        /// checked, as on a machine that is not the gateway.
        #[arg(long)]
        host: bool,
    },
    /// Print a running daemon's VIPs, backends, BGP peers and workers.
    Status {
        /// The daemon's API address.
        #[arg(long, default_value_t = config::DEFAULT_API_LISTEN)]
        api: SocketAddr,
    },
    /// Node side: the XDP decapsulator for nodes without an ipip module.
    #[command(subcommand)]
    Decap(decap::DecapCmd),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { config, log_format } => {
            init_logging(log_format);
            // Test builds only: fail points named in `FAILPOINTS`, until the daemon ends.
            #[cfg(feature = "failpoints")]
            let _failpoints = fail::FailScenario::setup();
            return match daemon::run(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "dsrgate failed");
                    ExitCode::FAILURE
                }
            };
        }
        Cmd::Check { config, host } => check(&config, host),
        Cmd::Status { api } => status::fetch(api, Duration::from_secs(5)).map(|s| {
            print!("{}", status::render(&s));
        }),
        Cmd::Decap(cmd) => decap::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dsrgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `dsrgate check`: the file, then with `host` what the daemon's start checks of this host
/// ([`daemon::host_problems`]), one line each.
fn check(path: &std::path::Path, host: bool) -> anyhow::Result<()> {
    let c = config::load(path)?;
    for w in &c.warnings {
        eprintln!(
            "warning: {}",
            config::Problems(path, std::slice::from_ref(w))
        );
    }
    if host {
        let problems = daemon::host_problems(path, &c);
        if !problems.is_empty() {
            anyhow::bail!("{}", problems.join("\n"));
        }
    }
    let peers = c.bgp.as_ref().map_or(0, |b| b.peers.len());
    println!(
        "{}: ok ({} static VIPs, {} BGP peers, Kubernetes {}){}",
        path.display(),
        c.vips.len(),
        peers,
        if c.kubernetes.is_some() { "on" } else { "off" },
        if host { "; this host: ok" } else { "" }
    );
    Ok(())
}

/// tracing to stderr: human-readable lines, or JSON objects. `RUST_LOG` overrides the
/// default level (info).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: journald and log files get plain `key=value` text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // The thread names which worker (`xsk-IFACE-qN`) or part of the daemon it was.
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), panic = %info, "panic");
        default_hook(info);
    }));
}
