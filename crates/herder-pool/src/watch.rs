//! Sources of the caller's in a pool's event loop, kept with their type: the same on
//! every platform.

use std::any::Any;
use std::marker::PhantomData;

use herder_reactor::Key;

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

/// What `remove_source` gives back: the source, boxed (one `add_source` was given
/// comes back in one more box, which reads and watches the same).
pub(crate) fn unboxed(source: Box<dyn UserSource>) -> Box<dyn herder_reactor::Source> {
    source.into_source()
}
