//! The control socket's request lines (`herder_pool::Command::parse`), split at
//! newlines as the pool splits them.
//!
//! Checks: no panic; an error always says what is wrong; a parsed command is within
//! its limits and reads back the same from its own request line.
#![no_main]

use herder::pool::Command;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        match Command::parse(line) {
            Ok(cmd) => {
                if let Command::Scale(n) = cmd {
                    assert!((1..=4096).contains(&n), "scale {n} accepted");
                }
                assert_eq!(Command::parse(&cmd.to_line()), Ok(cmd.clone()));
            }
            Err(why) => assert!(!why.is_empty(), "an error without a reason"),
        }
    }
});
