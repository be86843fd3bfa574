//! Sources of the caller's in a pool's event loop, kept with their type: the same on
//! every platform.

use std::any::Any;
use std::marker::PhantomData;

use herder_reactor::{Interest, Key, Mode, Reactor};

/// A source of the caller's in a [`Pool`](crate::Pool)'s event loop, with its type:
/// what [`Pool::watch`](crate::Pool::watch) returns, to get the source back as a
/// `&T`, a `&mut T` or a `T` — no duplicated descriptor needed to keep using what the
/// pool watches. Its readiness comes back as
/// [`PoolEvent::Other`](crate::PoolEvent::Other) with [`key`](Self::key).
pub struct Watched<T> {
    key: Key,
    _type: PhantomData<fn() -> T>,
}

impl<T> Watched<T> {
    pub(crate) fn new(key: Key) -> Watched<T> {
        Watched {
            key,
            _type: PhantomData,
        }
    }

    /// Its key: events of the source come back as
    /// [`PoolEvent::Other`](crate::PoolEvent::Other)`(Event::Io { key, .. })`.
    pub fn key(&self) -> Key {
        self.key
    }
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Watched<T> {
        *self
    }
}

impl<T> Copy for Watched<T> {}

impl<T> std::fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Watched").field(&self.key).finish()
    }
}

/// A source of the caller's as the pool keeps it: any source, which can be had back
/// with its type.
pub(crate) trait UserSource: herder_reactor::Source {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
    fn as_source(&self) -> &dyn herder_reactor::Source;
    fn into_source(self: Box<Self>) -> Box<dyn herder_reactor::Source>;
}

impl<T: herder_reactor::Source> UserSource for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
    fn as_source(&self) -> &dyn herder_reactor::Source {
        self
    }
    fn into_source(self: Box<Self>) -> Box<dyn herder_reactor::Source> {
        self
    }
}

/// A source added with `add_source`, in the box it came in.
struct Boxed(Box<dyn herder_reactor::Source>);

#[cfg(unix)]
impl std::os::fd::AsFd for Boxed {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(windows)]
impl std::os::windows::io::AsSocket for Boxed {
    fn as_socket(&self) -> std::os::windows::io::BorrowedSocket<'_> {
        self.0.as_socket()
    }
}

/// A source added with `add_source`: kept in the box it came in.
pub(crate) fn boxed(source: Box<dyn herder_reactor::Source>) -> Box<dyn UserSource> {
    Box::new(Boxed(source))
}

/// A pool's type of source, which holds the caller's among its own: what the shared
/// functions below work on, for both platforms' pools.
pub(crate) trait Holder: herder_reactor::Source + Sized {
    /// A source of the caller's, as this type.
    fn user(source: Box<dyn UserSource>) -> Self;
    /// The caller's source, if this is one.
    fn as_user(&self) -> Option<&dyn UserSource>;
    /// The caller's source, mutably, if this is one.
    fn as_user_mut(&mut self) -> Option<&mut dyn UserSource>;
    /// The caller's source, if this is one.
    fn into_user(self) -> Option<Box<dyn UserSource>>;
}

/// Why a key names no source of the caller's.
pub(crate) fn not_found(what: &'static str) -> crate::Error {
    crate::Error::Io {
        what,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "not a source of the caller's, or no longer watched",
        ),
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> crate::Error {
    move |source| crate::Error::Io { what, source }
}

/// `Pool::watch`.
pub(crate) fn watch<S: Holder, T: herder_reactor::Source>(
    reactor: &mut Reactor<S>,
    source: T,
    interest: Interest,
    mode: Mode,
) -> Result<Watched<T>, crate::Error> {
    reactor
        .register(S::user(Box::new(source)), interest, mode)
        .map(Watched::new)
        .map_err(io("watching a source"))
}

/// `Pool::watched`.
pub(crate) fn watched<S: Holder, T: herder_reactor::Source>(
    reactor: &Reactor<S>,
    watched: Watched<T>,
) -> Option<&T> {
    reactor
        .get(watched.key())?
        .as_user()?
        .as_any()
        .downcast_ref()
}

/// `Pool::watched_mut`.
pub(crate) fn watched_mut<S: Holder, T: herder_reactor::Source>(
    reactor: &mut Reactor<S>,
    watched: Watched<T>,
) -> Option<&mut T> {
    // SAFETY: the pool replaces no source; the caller gets a `&mut T`, not the slot,
    // and cannot close what the reactor watches without giving the `T` up.
    let entry = unsafe { reactor.get_mut(watched.key()) }?;
    entry.as_user_mut()?.as_any_mut().downcast_mut()
}

/// `Pool::unwatch`.
pub(crate) fn unwatch<S: Holder, T: herder_reactor::Source>(
    reactor: &mut Reactor<S>,
    w: Watched<T>,
) -> Result<T, crate::Error> {
    let what = "unwatching a source";
    if watched(reactor, w).is_none() {
        return Err(not_found(what));
    }
    let user = reactor.deregister(w.key()).map_err(io(what))?.into_user();
    match user.map(|u| u.into_any().downcast::<T>()) {
        Some(Ok(t)) => Ok(*t),
        _ => Err(not_found(what)),
    }
}

/// `Pool::add_source`.
pub(crate) fn add<S: Holder>(
    reactor: &mut Reactor<S>,
    source: Box<dyn herder_reactor::Source>,
    interest: Interest,
    mode: Mode,
) -> Result<Key, crate::Error> {
    reactor
        .register(S::user(boxed(source)), interest, mode)
        .map_err(io("watching a source"))
}

/// `Pool::modify_source`.
pub(crate) fn modify<S: Holder>(
    reactor: &mut Reactor<S>,
    key: Key,
    interest: Interest,
    mode: Mode,
) -> Result<(), crate::Error> {
    let what = "changing a source";
    if source(reactor, key).is_none() {
        return Err(not_found(what));
    }
    reactor.modify(key, interest, mode).map_err(io(what))
}

/// `Pool::remove_source`.
pub(crate) fn remove<S: Holder>(
    reactor: &mut Reactor<S>,
    key: Key,
) -> Result<Box<dyn herder_reactor::Source>, crate::Error> {
    let what = "removing a source";
    if source(reactor, key).is_none() {
        return Err(not_found(what));
    }
    let user = reactor.deregister(key).map_err(io(what))?.into_user();
    // A source `add_source` was given comes back in one more box, which reads and
    // watches the same.
    user.map(UserSource::into_source)
        .ok_or_else(|| not_found(what))
}

/// `Pool::source`.
pub(crate) fn source<S: Holder>(
    reactor: &Reactor<S>,
    key: Key,
) -> Option<&dyn herder_reactor::Source> {
    Some(reactor.get(key)?.as_user()?.as_source())
}

/// The caller's sources and timers on a pool: one text for both platforms' pools,
/// over the functions above. `$entry` is the pool's own type of source, which holds
/// the caller's in its `User` variant.
macro_rules! caller_sources {
    ($entry:ident) => {
        impl Pool {
            /// Watches `source` in the pool's event loop, keeping its type: the handle gets
            /// it back as a `&T` ([`watched`](Self::watched)), a `&mut T`
            /// ([`watched_mut`](Self::watched_mut)) or a `T` ([`unwatch`](Self::unwatch)),
            /// and names its readiness in
            /// [`PoolEvent::Other`]($crate::PoolEvent::Other)
            /// ([`Watched::key`]($crate::Watched::key)).
            ///
            /// # Errors
            ///
            /// [`Error::Io`]($crate::Error::Io) if registering fails.
            pub fn watch<T: herder_reactor::Source>(
                &mut self,
                source: T,
                interest: herder_reactor::Interest,
                mode: herder_reactor::Mode,
            ) -> Result<$crate::Watched<T>, $crate::Error> {
                $crate::watch::watch(&mut self.reactor, source, interest, mode)
            }

            /// The source `watched` names, if it is still watched.
            pub fn watched<T: herder_reactor::Source>(
                &self,
                watched: $crate::Watched<T>,
            ) -> Option<&T> {
                $crate::watch::watched(&self.reactor, watched)
            }

            /// The source `watched` names, mutably, if it is still watched.
            pub fn watched_mut<T: herder_reactor::Source>(
                &mut self,
                watched: $crate::Watched<T>,
            ) -> Option<&mut T> {
                $crate::watch::watched_mut(&mut self.reactor, watched)
            }

            /// Stops watching the source `watched` names and gives it back.
            ///
            /// # Errors
            ///
            /// [`Error::Io`]($crate::Error::Io): `NotFound` if it is no longer watched.
            pub fn unwatch<T: herder_reactor::Source>(
                &mut self,
                watched: $crate::Watched<T>,
            ) -> Result<T, $crate::Error> {
                $crate::watch::unwatch(&mut self.reactor, watched)
            }

            /// Watches a source of the caller's in the pool's event loop, boxed; its
            /// readiness comes back as
            /// [`PoolEvent::Other`]($crate::PoolEvent::Other). ([`watch`](Self::watch)
            /// keeps its type.)
            ///
            /// # Errors
            ///
            /// [`Error::Io`]($crate::Error::Io) if registering fails.
            pub fn add_source(
                &mut self,
                source: Box<dyn herder_reactor::Source>,
                interest: herder_reactor::Interest,
                mode: herder_reactor::Mode,
            ) -> Result<herder_reactor::Key, $crate::Error> {
                $crate::watch::add(&mut self.reactor, source, interest, mode)
            }

            /// Changes what a source of the caller's (added with
            /// [`add_source`](Self::add_source) or [`watch`](Self::watch)) is watched
            /// for.
            ///
            /// # Errors
            ///
            /// [`Error::Io`]($crate::Error::Io): `NotFound` if `key` is not a source of
            /// the caller's.
            pub fn modify_source(
                &mut self,
                key: herder_reactor::Key,
                interest: herder_reactor::Interest,
                mode: herder_reactor::Mode,
            ) -> Result<(), $crate::Error> {
                $crate::watch::modify(&mut self.reactor, key, interest, mode)
            }

            /// Stops watching a source of the caller's and gives it back, boxed.
            ///
            /// # Errors
            ///
            /// [`Error::Io`]($crate::Error::Io): `NotFound` if `key` is not a source of
            /// the caller's.
            pub fn remove_source(
                &mut self,
                key: herder_reactor::Key,
            ) -> Result<Box<dyn herder_reactor::Source>, $crate::Error> {
                $crate::watch::remove(&mut self.reactor, key)
            }

            /// A source of the caller's.
            pub fn source(&self, key: herder_reactor::Key) -> Option<&dyn herder_reactor::Source> {
                $crate::watch::source(&self.reactor, key)
            }

            /// Starts a timer of the caller's; it comes back as
            /// [`PoolEvent::Other`]($crate::PoolEvent::Other).
            pub fn add_timer(
                &mut self,
                deadline: std::time::Instant,
                repeat: Option<std::time::Duration>,
            ) -> herder_reactor::TimerId {
                self.reactor.add_timer(deadline, repeat)
            }
        }

        impl $crate::watch::Holder for $entry {
            fn user(source: Box<dyn $crate::watch::UserSource>) -> Self {
                $entry::User(source)
            }
            fn as_user(&self) -> Option<&dyn $crate::watch::UserSource> {
                match self {
                    $entry::User(u) => Some(&**u),
                    _ => None,
                }
            }
            fn as_user_mut(&mut self) -> Option<&mut dyn $crate::watch::UserSource> {
                match self {
                    $entry::User(u) => Some(&mut **u),
                    _ => None,
                }
            }
            fn into_user(self) -> Option<Box<dyn $crate::watch::UserSource>> {
                match self {
                    $entry::User(u) => Some(u),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use caller_sources;
