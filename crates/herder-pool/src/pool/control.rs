//! The control requests ([`Command`](crate::Command)) as the pool carries them
//! out, whichever endpoint they came by (`control_socket.rs`, `control_pipe.rs`).

use super::{Pool, PoolEvent};
use crate::state::status_response;

impl crate::control::Controlled for Pool {
    fn status(&self) -> Vec<u8> {
        let mut extra = serde_json::Map::new();
        extra.insert("reloading".into(), self.reloading.into());
        extra.insert(
            "upgrading".into(),
            self.os.upgrade.as_ref().map(|u| u.pid).into(),
        );
        extra.insert(
            "upgrade_failed".into(),
            self.os.upgrade_failed.clone().into(),
        );
        extra.insert("moved".into(), self.os.moves.moved.into());
        extra.insert("moves_kept".into(), self.os.moves.kept.into());
        status_response(self.generation, self.stopping, self.workers(), extra)
    }

    fn reload(&mut self, events: &mut Vec<PoolEvent>) -> u64 {
        self.reload_inner(events);
        self.generation
    }

    fn scale(&mut self, n: usize, events: &mut Vec<PoolEvent>) -> usize {
        self.scale_inner(n, events);
        self.slots.len()
    }

    fn stop(&mut self, events: &mut Vec<PoolEvent>) {
        self.stop_inner(events);
    }

    fn upgrade(&mut self, events: &mut Vec<PoolEvent>) -> Result<u32, String> {
        self.upgrade_inner(events);
        match (&self.os.upgrade, &self.os.upgrade_failed) {
            (Some(u), _) => Ok(u.pid),
            (None, Some(why)) => Err(why.clone()),
            (None, None) => Err("no upgrade started".into()),
        }
    }
}
