//! The HTTP/1.1 parser behind `herder_demo::protocol::Http`, fed arbitrary bytes in
//! arbitrary pieces as a connection would deliver them.
//!
//! Input: the first byte is the size of the pieces (1–256), the rest is what the
//! client sends. Checks: no panic; nothing consumed beyond what arrived; every
//! response is a whole HTTP/1.1 response; the unconsumed input stays within the
//! server's input limit; and the answers do not depend on how the bytes were cut
//! (the whole input at once gives the same output).
#![no_main]

use herder_demo::protocol::{Http, MAX_BODY, MAX_HEAD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let pieces = serve(input, usize::from(piece) + 1);
    let whole = serve(input, input.len().max(1));
    assert_eq!(pieces, whole, "the answers depend on how the input was cut");
});

/// Serves `input` arriving `piece` bytes at a time: the responses, and whether the
/// connection was closed.
fn serve(input: &[u8], piece: usize) -> (Vec<u8>, usize, bool) {
    let mut http = Http::default();
    let (mut unconsumed, mut out, mut responses) = (Vec::new(), Vec::new(), 0);
    for chunk in input.chunks(piece) {
        unconsumed.extend_from_slice(chunk);
        let before = out.len();
        let (parsed, close) = http.respond(&unconsumed, &mut out);
        assert!(
            parsed.consumed <= unconsumed.len(),
            "consumed what never arrived"
        );
        let written = &out[before..];
        assert_eq!(
            count(written, b"HTTP/1.1 "),
            parsed.responses,
            "responses written and counted differ"
        );
        assert!(parsed.responses == 0 || written.starts_with(b"HTTP/1.1 "));
        responses += parsed.responses;
        unconsumed.drain(..parsed.consumed);
        if close {
            return (out, responses, true);
        }
        // What the parser leaves waiting fits the server's input limit, so a server
        // configured with it never cuts a request the parser would accept.
        assert!(
            unconsumed.len() <= MAX_HEAD + MAX_BODY,
            "{} bytes left waiting",
            unconsumed.len()
        );
    }
    (out, responses, false)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}
