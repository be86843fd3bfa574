//! A client for the example servers' control socket.
//!
//! ```text
//! herderctl --control /tmp/herder.sock status          # a table
//! herderctl --control /tmp/herder.sock status --json   # the raw answer
//! herderctl --control /tmp/herder.sock reload | stop | scale 4 | upgrade
//! herderctl --control herder status                    # Windows: \\.\pipe\herder
//! ```

use anyhow::bail;
use clap::{Parser, Subcommand};
use herder::pool::Command;
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(about = "Control a running herder server")]
struct Args {
    /// The server's control socket (its --control PATH); on Windows, the name of its
    /// control pipe.
    #[arg(long)]
    control: std::path::PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// The pool and one line per worker.
    Status {
        /// Print the server's JSON answer as it is.
        #[arg(long)]
        json: bool,
    },
    /// A rolling restart of every worker.
    Reload,
    /// Run N workers.
    Scale {
        /// How many.
        workers: usize,
    },
    /// A graceful stop.
    Stop,
    /// A zero-downtime upgrade to the program now on disk.
    Upgrade,
}

fn main() -> anyhow::Result<()> {
    // Like other command-line tools, end quietly when the reader of our output goes
    // away (`herderctl status | head -2`) instead of failing on EPIPE.
    #[cfg(unix)]
    // SAFETY: sets the disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
    let request = match &args.cmd {
        Cmd::Status { .. } => Command::Status,
        Cmd::Reload => Command::Reload,
        Cmd::Scale { workers } => Command::Scale(*workers),
        Cmd::Stop => Command::Stop,
        Cmd::Upgrade => Command::Upgrade,
    };
    let answer = ask(&args.control, &request)?;
    if answer["ok"] != true {
        bail!(
            "the server refused: {}",
            answer["error"].as_str().unwrap_or("no reason given")
        );
    }
    match args.cmd {
        Cmd::Status { json: true } => println!("{answer}"),
        Cmd::Status { json: false } => print_status(&answer),
        _ => println!("ok"),
    }
    Ok(())
}

#[cfg(unix)]
fn ask(path: &std::path::Path, request: &Command) -> anyhow::Result<Value> {
    use anyhow::Context;
    use std::io::{BufRead, BufReader, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(path)
        .with_context(|| format!("connecting to {}", path.display()))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    conn.write_all(&request.to_line())?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("not a JSON answer: {line:?}"))
}

/// On Windows the control "socket" is a named pipe: `--control NAME` is
/// `\\.\pipe\NAME`.
#[cfg(windows)]
fn ask(name: &std::path::Path, request: &Command) -> anyhow::Result<Value> {
    use anyhow::Context;
    use std::io::{BufRead, BufReader, Write};
    let path = herder::pool::control_pipe_path(&name.to_string_lossy());
    // Every instance busy (ERROR_PIPE_BUSY): the server makes another at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut conn = loop {
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            Err(e) if e.raw_os_error() == Some(231) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.with_context(|| format!("connecting to {path}"))?,
        }
    };
    conn.write_all(&request.to_line())?;
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| format!("not a JSON answer: {line:?}"))
}

#[cfg(not(any(unix, windows)))]
fn ask(_: &std::path::Path, _: &Command) -> anyhow::Result<Value> {
    bail!("no control channel on this platform")
}

fn print_status(s: &Value) {
    println!(
        "supervisor {}  generation {}{}",
        s["pid"],
        s["generation"],
        if s["stopping"] == true {
            "  (stopping)"
        } else {
            ""
        }
    );
    println!(
        "{:>4}  {:>8}  {:>3}  {:<9}  {:>9}  {:>7}  {:>8}  last exit",
        "slot", "pid", "gen", "state", "accepted", "active", "restarts"
    );
    // serde_json's Display ignores widths: format plain strings.
    let text = |v: &Value| {
        v.as_str().map_or_else(
            || {
                if v.is_null() {
                    "-".to_string()
                } else {
                    v.to_string()
                }
            },
            str::to_string,
        )
    };
    for w in s["workers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        println!(
            "{:>4}  {:>8}  {:>3}  {:<9}  {:>9}  {:>7}  {:>8}  {}",
            text(&w["slot"]),
            text(&w["pid"]),
            text(&w["generation"]),
            text(&w["state"]),
            text(&w["accepted"]),
            text(&w["active"]),
            text(&w["restarts"]),
            text(&w["last_exit"]),
        );
    }
}
