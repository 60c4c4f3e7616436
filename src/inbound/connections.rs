//! The gateway's client connections, before and between calls: admitted under caps (in total
//! and per peer address), given a deadline for their handshake (TLS, then the HTTP/2 preface
//! and the first frame), closed once idle (no call in flight) for too long, and closed at once
//! at shutdown while no call runs on them, so a silent or half-open peer never holds a replica.
//! HTTP/2 keep-alive pings (set on the server) close dead peers that do have calls.
//!
//! Each connection is known by its peer address (unique while it is open); the
//! [`ConnectionCallsLayer`] counts its calls in flight, a stream until its last frame.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::task::AtomicWaker;
use pin_project_lite::pin_project;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::{InboundMetrics, guarded::GuardedFuture};
pub use crate::security::ConnectionLimits;

/// The HTTP/2 client preface (24 bytes) and one frame header (9): a peer that sent these has
/// begun to speak HTTP/2.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// The replica's connections. Cheap to clone.
#[derive(Clone)]
pub struct Connections(Arc<Shared>);

struct Shared {
    limits: ConnectionLimits,
    metrics: InboundMetrics,
    draining: AtomicBool,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    per_peer: HashMap<IpAddr, usize>,
    by_addr: HashMap<SocketAddr, Arc<Activity>>,
}

/// One connection's calls in flight, and the reader to wake when they change.
#[derive(Default)]
struct Activity {
    calls: AtomicUsize,
    idle_since: Mutex<Option<Instant>>,
    reader: AtomicWaker,
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: InboundMetrics) -> Self {
        Self(Arc::new(Shared {
            limits,
            metrics,
            draining: AtomicBool::new(false),
            open: Mutex::new(Open::default()),
        }))
    }

    /// Shutdown: every connection still in its handshake closes now (the server's GOAWAY
    /// closes the others once their last call is answered).
    pub fn drain(&self) {
        self.0.draining.store(true, Ordering::SeqCst);
        for activity in self.lock().by_addr.values() {
            activity.reader.wake();
        }
    }

    /// Counts a call on the connection from `peer` until the guard is dropped.
    pub fn call_began(&self, peer: SocketAddr) -> Option<CallGuard> {
        let activity = self.lock().by_addr.get(&peer)?.clone();
        activity.calls.fetch_add(1, Ordering::SeqCst);
        activity.reader.wake();
        Some(CallGuard(activity))
    }

    /// The connections accepted on `listener`, each admitted under the caps and upgraded by
    /// `upgrade` (TLS, or nothing) within its handshake deadline; refusals and failed upgrades
    /// are counted and dropped. The accept loop stops when the stream is dropped.
    pub fn incoming<IO, U, F>(
        &self,
        listener: TcpListener,
        upgrade: U,
    ) -> ReceiverStream<io::Result<Admitted<IO>>>
    where
        IO: Send + 'static,
        U: Fn(TcpStream) -> F + Send + 'static,
        F: Future<Output = io::Result<IO>> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(64);
        let connections = self.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            tracing::warn!(error = %err, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Some(slot) = connections.admit(peer) else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let deadline = Instant::now() + connections.0.limits.handshake;
                let (upgrading, tx) = (upgrade(tcp), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout_at(deadline, upgrading).await {
                        Ok(Ok(io)) => {
                            let _ = tx.send(Ok(Admitted::new(io, slot, deadline))).await;
                        }
                        Ok(Err(err)) => tracing::info!(%peer, error = %err, "handshake failed"),
                        Err(_) => slot.closed("handshake_timeout"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }

    /// A slot for a connection from `peer`, or `None` (counted) when a cap is reached.
    fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        let limits = self.0.limits;
        let mut open = self.lock();
        let refused = if open.by_addr.len() >= limits.max_total {
            Some("connection_limit")
        } else if open.per_peer.get(&peer.ip()).copied().unwrap_or(0) >= limits.max_per_peer {
            Some("peer_connection_limit")
        } else {
            None
        };
        if let Some(reason) = refused {
            drop(open);
            self.0.metrics.record_refused(reason);
            tracing::info!(%peer, reason, "connection refused");
            return None;
        }
        let activity = Arc::new(Activity::default());
        *lock(&activity.idle_since) = Some(Instant::now());
        open.by_addr.insert(peer, activity.clone());
        *open.per_peer.entry(peer.ip()).or_default() += 1;
        self.0.metrics.set_connections(open.by_addr.len());
        Some(Slot {
            connections: self.clone(),
            peer,
            activity,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        lock(&self.0.open)
    }
}

/// An admitted connection's place under the caps, given back when it closes.
struct Slot {
    connections: Connections,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Slot {
    /// The gateway closes the connection, for `reason`.
    fn closed(&self, reason: &'static str) {
        self.connections.0.metrics.record_connection_closed(reason);
        tracing::debug!(peer = %self.peer, reason, "closing a connection");
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        open.by_addr.remove(&self.peer);
        let ip = self.peer.ip();
        if let Some(count) = open.per_peer.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.per_peer.remove(&ip);
            }
        }
        self.connections
            .0
            .metrics
            .set_connections(open.by_addr.len());
    }
}

/// A call in flight on a connection.
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.0.calls.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&self.0.idle_since) = Some(Instant::now());
            // The reader arms the idle timer (or closes, when draining).
            self.0.reader.wake();
        }
    }
}

pin_project! {
    /// A connection under its deadlines: reads fail once the handshake deadline passes before
    /// the peer spoke HTTP/2, and end (EOF, so the server closes it) once it has had no call in
    /// flight for the idle time, or at shutdown while it is still in its handshake.
    pub struct Admitted<IO> {
        #[pin]
        inner: IO,
        slot: Slot,
        handshake: Option<Pin<Box<Sleep>>>,
        handshake_left: usize,
        idle: Option<(Instant, Pin<Box<Sleep>>)>,
    }
}

impl<IO> Admitted<IO> {
    fn new(inner: IO, slot: Slot, deadline: Instant) -> Self {
        Self {
            inner,
            slot,
            handshake: Some(Box::pin(tokio::time::sleep_until(deadline))),
            handshake_left: HANDSHAKE_BYTES,
            idle: None,
        }
    }
}

impl<IO: AsyncRead> AsyncRead for Admitted<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let shared = &this.slot.connections.0;
        if let Some(deadline) = this.handshake.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            this.slot.closed("handshake_timeout");
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        let activity = &this.slot.activity;
        activity.reader.register(cx.waker());
        if activity.calls.load(Ordering::SeqCst) == 0 {
            // Shutdown: the server's GOAWAY closes a connection that spoke HTTP/2 once its
            // last answer is out; one still in its handshake would hold the server forever.
            if this.handshake.is_some() && shared.draining.load(Ordering::SeqCst) {
                this.slot.closed("shutdown");
                return Poll::Ready(Ok(()));
            }
            let since = lock(&activity.idle_since).unwrap_or_else(Instant::now);
            let closes_at = since + shared.limits.idle;
            if !matches!(this.idle, Some((at, _)) if *at == closes_at) {
                *this.idle = Some((closes_at, Box::pin(tokio::time::sleep_until(closes_at))));
            }
            if let Some((_, timer)) = this.idle.as_mut()
                && timer.as_mut().poll(cx).is_ready()
            {
                this.slot.closed("idle");
                return Poll::Ready(Ok(()));
            }
        } else {
            *this.idle = None;
        }
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read
            && this.handshake.is_some()
        {
            let got = buf.filled().len() - before;
            *this.handshake_left = this.handshake_left.saturating_sub(got);
            if *this.handshake_left == 0 {
                *this.handshake = None;
            }
        }
        read
    }
}

impl<IO: AsyncWrite> AsyncWrite for Admitted<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Counters and maps stay consistent across a panic elsewhere.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts each call on its connection ([`Connections::call_began`]) until its response's last
/// frame: a connection with a call in flight is never idle.
#[derive(Clone)]
pub struct ConnectionCallsLayer(Connections);

impl ConnectionCallsLayer {
    pub fn new(connections: Connections) -> Self {
        Self(connections)
    }
}

impl<S> tower::Layer<S> for ConnectionCallsLayer {
    type Service = ConnectionCalls<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ConnectionCalls {
            inner,
            connections: self.0.clone(),
        }
    }
}

/// See [`ConnectionCallsLayer`].
#[derive(Clone)]
pub struct ConnectionCalls<S> {
    inner: S,
    connections: Connections,
}

impl<S, B> tower::Service<http::Request<B>> for ConnectionCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, CallGuard>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = super::peer_of(&request).and_then(|peer| self.connections.call_began(peer));
        GuardedFuture::new(self.inner.call(request), guard)
    }
}
