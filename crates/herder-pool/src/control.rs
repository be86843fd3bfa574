//! The control requests: line-delimited JSON, one request object per line, one
//! response object per line, over a Unix socket (any number of requests per
//! connection) or, on Windows, a named pipe (one request per connection).
//!
//! ```text
//! {"cmd":"status"}              → {"ok":true,"generation":1,"workers":[{"slot":0,"pid":…,…}]}
//! {"cmd":"reload"}              → {"ok":true,"generation":2}  (rolling restart, as SIGHUP)
//! {"cmd":"scale","workers":4}   → {"ok":true,"workers":4}     (as SIGTTIN/SIGTTOU)
//! {"cmd":"stop"}                → {"ok":true}                 (graceful stop, as SIGTERM)
//! {"cmd":"upgrade"}             → {"ok":true,"pid":…}  (binary upgrade, as SIGUSR2; Unix)
//! anything else                 → {"ok":false,"error":"…"}
//! ```

use serde_json::{Value, json};

/// The longest request line accepted; a longer one closes the connection.
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// A request from the control socket, as [`PoolEvent::Command`](crate::PoolEvent::Command)
/// reports it after the pool carried it out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `{"cmd":"status"}`.
    Status,
    /// `{"cmd":"reload"}`: a rolling restart.
    Reload,
    /// `{"cmd":"scale","workers":N}`.
    Scale(usize),
    /// `{"cmd":"stop"}`: a graceful stop.
    Stop,
    /// `{"cmd":"upgrade"}`: a zero-downtime upgrade to the program on disk (as
    /// `SIGUSR2`).
    Upgrade,
}

impl Command {
    /// Parses one request line (with or without its newline), as the pool does with
    /// what a control client sends.
    ///
    /// # Errors
    ///
    /// What is wrong with the line, as the pool sends it back in
    /// `{"ok":false,"error":…}`: not JSON, no `"cmd"`, an unknown command, or a
    /// `scale` count outside 1–4096.
    ///
    /// # Examples
    ///
    /// ```
    /// use herder_pool::Command;
    /// assert_eq!(Command::parse(br#"{"cmd":"scale","workers":4}"#), Ok(Command::Scale(4)));
    /// assert!(Command::parse(b"status").is_err());
    /// assert_eq!(Command::parse(&Command::Reload.to_line()), Ok(Command::Reload));
    /// ```
    pub fn parse(line: &[u8]) -> Result<Command, String> {
        parse(line)
    }

    /// The request line for this command, with its newline: what a control client
    /// writes.
    pub fn to_line(&self) -> Vec<u8> {
        let v = match self {
            Command::Status => json!({ "cmd": "status" }),
            Command::Reload => json!({ "cmd": "reload" }),
            Command::Scale(n) => json!({ "cmd": "scale", "workers": n }),
            Command::Stop => json!({ "cmd": "stop" }),
            Command::Upgrade => json!({ "cmd": "upgrade" }),
        };
        response(v)
    }
}

/// What a pool does for the control requests, on either platform; [`execute`] gives
/// the answers their one shape.
pub(crate) trait Controlled {
    /// The whole `status` answer.
    fn status(&self) -> Vec<u8>;
    /// Starts a rolling restart (or queues it behind the one under way); the newest
    /// generation.
    fn reload(&mut self, events: &mut Vec<crate::PoolEvent>) -> u64;
    /// Scales; the number of slots now.
    fn scale(&mut self, n: usize, events: &mut Vec<crate::PoolEvent>) -> usize;
    /// Starts a graceful stop.
    fn stop(&mut self, events: &mut Vec<crate::PoolEvent>);
    /// Starts a binary upgrade: the new supervisor's pid, or why not.
    fn upgrade(&mut self, events: &mut Vec<crate::PoolEvent>) -> Result<u32, String>;
}

/// Carries out a control request; returns the answer line.
pub(crate) fn execute(
    pool: &mut impl Controlled,
    cmd: &Command,
    events: &mut Vec<crate::PoolEvent>,
) -> Vec<u8> {
    match cmd {
        Command::Status => pool.status(),
        Command::Reload => response(json!({ "ok": true, "generation": pool.reload(events) })),
        Command::Scale(n) => response(json!({ "ok": true, "workers": pool.scale(*n, events) })),
        Command::Stop => {
            pool.stop(events);
            response(json!({ "ok": true }))
        }
        Command::Upgrade => match pool.upgrade(events) {
            Ok(pid) => response(json!({ "ok": true, "pid": pid })),
            Err(why) => error(&why),
        },
    }
}

/// Parses one request line.
fn parse(line: &[u8]) -> Result<Command, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    let cmd = v
        .get("cmd")
        .and_then(Value::as_str)
        .ok_or("no \"cmd\" string")?;
    match cmd {
        "status" => Ok(Command::Status),
        "reload" => Ok(Command::Reload),
        "stop" => Ok(Command::Stop),
        "upgrade" => Ok(Command::Upgrade),
        "scale" => {
            let n = v
                .get("workers")
                .and_then(Value::as_u64)
                .ok_or("scale needs \"workers\": a count")?;
            if n == 0 || n > crate::config::MAX_WORKERS as u64 {
                return Err(format!(
                    "workers must be between 1 and {}",
                    crate::config::MAX_WORKERS
                ));
            }
            Ok(Command::Scale(n as usize))
        }
        other => Err(format!("unknown command {other:?}")),
    }
}

/// A response line (with its newline).
pub(crate) fn response(v: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    out
}

pub(crate) fn error(msg: &str) -> Vec<u8> {
    response(json!({ "ok": false, "error": msg }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_refused() {
        assert_eq!(parse(br#"{"cmd":"status"}"#), Ok(Command::Status));
        assert_eq!(
            parse(br#"{"cmd":"scale","workers":3}"#),
            Ok(Command::Scale(3))
        );
        assert_eq!(parse(br#" {"cmd" : "reload"} "#), Ok(Command::Reload));
        for bad in [
            &b"status"[..],
            b"{}",
            br#"{"cmd":1}"#,
            br#"{"cmd":"scale"}"#,
            br#"{"cmd":"scale","workers":0}"#,
            br#"{"cmd":"rm -rf"}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    proptest::proptest! {
        /// Whatever a client writes, a line parses to a command or an error message.
        #[test]
        fn arbitrary_lines_never_panic(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = parse(&line);
        }

        /// JSON-shaped input with any command name and any count.
        #[test]
        fn json_commands_are_checked(cmd in "[a-z]{0,8}", n in proptest::prelude::any::<i64>()) {
            let line = format!(r#"{{"cmd":"{cmd}","workers":{n}}}"#);
            match parse(line.as_bytes()) {
                Ok(Command::Scale(w)) => proptest::prop_assert!(cmd == "scale" && (1..=4096).contains(&w) && w as i64 == n),
                Ok(_) => proptest::prop_assert!(["status", "reload", "stop", "upgrade"].contains(&cmd.as_str())),
                Err(_) => proptest::prop_assert!(!["status", "reload", "stop", "upgrade"].contains(&cmd.as_str())),
            }
        }
    }
}
