//! What both servers share: an echo service, and the supervisor's announcement.

use herder_pool::{Pool, State};
use herder_reactor::{Flow, Input, Output, Service};

/// Writes back every byte.
pub struct Echo;

impl Service for Echo {
    fn on_data(&mut self, input: &mut Input<'_>, out: &mut Output<'_>) -> Flow {
        out.write(input.data());
        input.consume(input.len());
        Flow::Continue
    }
}

/// Whether every slot of `pool` has a ready worker.
pub fn all_ready(pool: &Pool) -> bool {
    let workers = pool.workers();
    !workers.is_empty() && workers.iter().all(|w| w.state == State::Ready)
}
