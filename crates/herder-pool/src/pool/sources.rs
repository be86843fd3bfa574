//! What the caller adds to the pool's loop: sources of its own (typed with
//! [`Pool::watch`](crate::Pool::watch), or boxed with `add_source`) and timers; the
//! text is `crate::watch`'s, shared with the Windows pool.

use super::{Pool, Source};

crate::watch::caller_sources!(Source);
