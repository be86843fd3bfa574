//! The command line both example servers take, on every platform, and what follows
//! from it for the pool and the workers' servers. (Flags that only mean something on
//! Unix are left out elsewhere.)

use crate::protocol::{Echo, Http, MAX_BODY, MAX_HEAD, Protocol};
use herder_reactor::{FirstRead, Server, ServerConfig};
use std::time::Duration;

/// The options both servers take.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Address to bind; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Worker processes (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// `echo` writes back every byte; `http` answers every request with 200 OK.
    #[arg(long, default_value = "echo", value_parser = ["echo", "http"])]
    pub protocol: String,
    /// Answer control requests (line-delimited JSON, `herderctl`) on this Unix
    /// socket; on Windows, on the named pipe `\\.\pipe\NAME`.
    #[arg(long)]
    pub control: Option<std::path::PathBuf>,
    /// How long a graceful stop waits for open connections, in seconds (a reload,
    /// a scale-down and an upgrade move them to the workers that stay; those that
    /// cannot move get this long too).
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// Close a connection that reads and writes nothing for this long, in seconds
    /// (HTTP: `408` if it stopped in the middle of a request).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout: u64,
    /// HTTP: how long a request's head may take to arrive, and its body may pause,
    /// in seconds; a slower request gets `408`.
    #[arg(long, default_value_t = 10)]
    pub request_timeout: u64,
    /// Accept a connection only once its first bytes arrive (Linux; FreeBSD with
    /// `accf_data`): a worker then serves a request in one wake-up instead of two.
    /// For clients that speak first: one that waits for the server is accepted
    /// about a second late, and one that has sent nothing when the server stops is
    /// refused.
    #[arg(long)]
    pub defer_accept: bool,
    /// The most connections one worker holds at once; at the limit it stops
    /// accepting (the hand-off supervisor sheds new connections when every worker is
    /// full, by the counts the workers last reported). 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_connections: usize,
    /// Failures of one slot within 30 s (starts that fail, workers dying before
    /// they are ready or more than 10 times a second) that trip its breaker: the
    /// slot then waits a cool-down (10 s, doubling up to 5 min) before it tries
    /// again. 0: no breaker. A ready worker that dies is restarted at once.
    #[arg(long, default_value_t = 5)]
    pub crash_limit: usize,
    /// The longest wait before restarting a slot that keeps failing, in
    /// milliseconds (the back-off doubles from 100 ms up to this).
    #[arg(long, default_value_t = 10_000)]
    pub backoff_max_ms: u64,
    #[cfg(unix)]
    /// Run the workers as this user (a name or a numeric id); the supervisor keeps
    /// its own. Needs root.
    #[arg(long)]
    pub user: Option<String>,
    #[cfg(unix)]
    /// The group for `--user` (default: the user's primary group).
    #[arg(long, requires = "user")]
    pub group: Option<String>,
    #[cfg(unix)]
    /// The supervisor switches to `--user` too, once it has bound its sockets (not
    /// with `--accept reuseport`, whose replacement listeners need the binding
    /// user).
    #[arg(long, requires = "user")]
    pub unprivileged_supervisor: bool,
    /// Serve the supervisor's figures for Prometheus at `http://ADDR/metrics`.
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// error, warn, info or debug.
    #[arg(long, default_value = "info", value_parser = ["error", "warn", "info", "debug"])]
    pub log_level: String,
    /// `text` lines, or `json` (one object per line).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// Readies a listener the server bound or inherited as the flags ask
/// (`--defer-accept`).
pub fn prepare_listener(c: &Common, l: &std::net::TcpListener) -> anyhow::Result<()> {
    use anyhow::Context;
    if c.defer_accept {
        herder_pool::defer_accept(l).context("--defer-accept")?;
    }
    Ok(())
}

/// The pool settings the flags give.
pub fn pool_config(c: &Common) -> herder_pool::Config {
    let mut config = herder_pool::Config::default();
    if let Some(n) = c.workers {
        config.workers = n.max(1);
    }
    config.drain_timeout = Duration::from_secs(c.drain_timeout);
    config.breaker_failures = match c.crash_limit {
        0 => usize::MAX,
        n => n,
    };
    config.backoff_max = Duration::from_millis(c.backoff_max_ms);
    config.backoff_initial = config.backoff_initial.min(config.backoff_max);
    // The workers' loops heartbeat (the scoreboard on Unix, load reports on Windows).
    config.heartbeat_timeout = Some(Duration::from_secs(10));
    config
}

/// The server a worker of either example runs: the chosen protocol, a 60 s idle
/// timeout, and room for the largest HTTP request.
pub fn server(c: &Common) -> std::io::Result<Server<Protocol>> {
    let mut config = ServerConfig::default();
    config.idle_timeout = Some(Duration::from_secs(c.idle_timeout.max(1)));
    config.max_input = MAX_HEAD + MAX_BODY + 1;
    config.max_connections = (c.max_connections > 0).then_some(c.max_connections);
    if c.defer_accept {
        // Every connection comes with its first bytes.
        config.first_read = FirstRead::AtOnce;
    }
    let c = c.clone();
    Server::new(config, move |_| service(&c))
}

/// A fresh service of the chosen protocol for one connection.
pub fn service(c: &Common) -> Protocol {
    match c.protocol.as_str() {
        "http" => Protocol::Http(Http::with_head_timeout(Duration::from_secs(
            c.request_timeout.max(1),
        ))),
        _ => Protocol::Echo(Echo),
    }
}
