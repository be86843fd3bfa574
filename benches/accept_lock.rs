//! Accept-lock cost: one uncontended [`AcceptLock::try_lock`] and
//! [`AcceptLock::unlock`] per iteration, for each [`AcceptLockKind`] this platform
//! has (Linux: `flock`, `fcntl` open-file-description locks, a robust `pthread`
//! mutex; elsewhere: `fcntl` POSIX record locks).
//!
//! The lock object is made by a [`Pool`] and a handle on it exists only in a worker,
//! so for each kind the bench starts a pool of one worker by re-executing itself,
//! with the same arguments; the worker takes its handle the way a shared-listener
//! worker does ([`Worker::accept_lock`]), runs the measurement and exits, and the
//! results are the worker's. Run with
//! `cargo bench --bench accept_lock -- --warm-up-time 1 --measurement-time 3`.
//!
//! [`AcceptLock::try_lock`]: herder::pool::AcceptLock::try_lock
//! [`AcceptLock::unlock`]: herder::pool::AcceptLock::unlock
//! [`AcceptLockKind`]: herder::pool::AcceptLockKind
//! [`Pool`]: herder::pool::Pool
//! [`Worker::accept_lock`]: herder::pool::Worker::accept_lock

// As in the other benches; nothing here is public API.
#![allow(missing_docs)]

#[cfg(unix)]
mod unix {
    use criterion::Criterion;
    use herder::pool::{AcceptLockKind, Config, Pool, PoolEvent, Worker};

    /// The kinds this platform has.
    #[cfg(target_os = "linux")]
    const KINDS: &[AcceptLockKind] = &[
        AcceptLockKind::Flock,
        AcceptLockKind::Fcntl,
        AcceptLockKind::Pthread,
    ];
    #[cfg(not(target_os = "linux"))]
    const KINDS: &[AcceptLockKind] = &[AcceptLockKind::Fcntl];

    /// The worker's side: measure the inherited lock, then exit 0.
    fn measure(mut worker: Worker) {
        let mut lock = worker
            .accept_lock()
            .expect("opening the accept lock")
            .expect("no accept lock inherited");
        // Ready first: the measurement may outlast the pool's ready timeout.
        worker.ready().expect("reporting ready");
        let mut c = Criterion::default().configure_from_args();
        let mut group = c.benchmark_group("accept-lock");
        group.bench_function(lock.kind().name(), |b| {
            b.iter(|| {
                assert!(lock.try_lock().unwrap(), "an uncontended lock was busy");
                lock.unlock().unwrap();
            })
        });
        group.finish();
        c.final_summary();
    }

    /// The supervisor's side: a pool of one worker with an accept lock of `kind`, run
    /// until that worker has exited.
    fn run_worker(kind: AcceptLockKind) {
        let mut config = Config::default();
        config.workers = 1;
        config.accept_lock = Some(kind);
        // The worker exits 0 when it is done: not a crash to restart.
        config.fatal_exit_code = Some(0);
        let mut pool = Pool::new(config, Vec::new()).expect("creating the pool");
        let mut events = Vec::new();
        pool.start(&mut events);
        let mut status = None;
        while !pool.is_stopped() {
            for ev in events.drain(..) {
                match ev {
                    PoolEvent::Exited { status: s, .. } => status = Some(s),
                    PoolEvent::SpawnFailed { error, .. } => panic!("{kind}: spawning: {error}"),
                    _ => {}
                }
            }
            if status.is_some() {
                pool.stop(&mut events);
            }
            if !pool.is_stopped() {
                pool.poll(&mut events, None).expect("polling the pool");
            }
        }
        let status = status.expect("the worker's exit");
        assert!(
            status.success(),
            "{kind}: the measuring worker failed: {status}"
        );
    }

    pub(crate) fn main() {
        if let Some(worker) = Worker::from_env().expect("reading the worker environment") {
            measure(worker);
            return;
        }
        for &kind in KINDS {
            run_worker(kind);
        }
    }
}

#[cfg(unix)]
fn main() {
    unix::main();
}

#[cfg(not(unix))]
fn main() {}
