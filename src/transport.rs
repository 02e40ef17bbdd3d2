//! ZeroMQ socket set-up: every socket the grid opens goes through here so
//! that each gets a finite linger, a maximum message size, reconnect back-off,
//! TCP keepalive and the high-water marks its role asks for. And
//! [`Connection`]: a socket with its wire (plain or sealed), its receive
//! buffer and the accounting of what it drops, so that a role never seals,
//! opens, splits or checks a frame by hand.

use crate::protocol::{self, Header, Kind, RunId, MAX_FRAME_BYTES};
use crate::seal::{OpenError, RejectLog, Sealer, OVERHEAD};
use crate::{Error, Result};
use std::sync::Arc;

/// How frames go on the wire: plain, or sealed with the pre-shared key.
/// Every role's sends and receives go through one of these.
#[derive(Clone, Default)]
pub struct Wire {
    sealer: Option<Arc<Sealer>>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.sealer {
            Some(s) => write!(f, "Wire(sealed with key id {})", s.sealing_key_id()),
            None => f.write_str("Wire(plain)"),
        }
    }
}

impl Wire {
    /// Frames as they are (no key).
    pub fn plain() -> Wire {
        Wire::default()
    }

    /// Frames sealed and opened with `sealer`'s keys.
    pub fn sealed(sealer: Sealer) -> Wire {
        Wire {
            sealer: Some(Arc::new(sealer)),
        }
    }

    pub fn is_sealed(&self) -> bool {
        self.sealer.is_some()
    }

    /// The bytes to send for a plain frame: the frame, or its sealed form
    /// built in `buf`.
    pub fn outgoing<'a>(&self, frame: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
        match &self.sealer {
            None => frame,
            Some(s) => {
                s.seal_into(frame, buf);
                buf
            }
        }
    }

    /// The plain frame of a received message, opened where it lies; an
    /// error means the frame must be dropped and counted, never decoded.
    pub fn incoming<'a>(&self, msg: &'a mut [u8]) -> std::result::Result<&'a [u8], OpenError> {
        match &self.sealer {
            None => Ok(msg),
            Some(s) => s.open_in_place(msg),
        }
    }
}

/// Sends a frame (sealed when the wire says so) without blocking; `false`
/// when the socket cannot take it now.
pub fn send_frame(
    socket: &zmq::Socket,
    wire: &Wire,
    frame: &[u8],
    buf: &mut Vec<u8>,
    what: &str,
) -> Result<bool> {
    let bytes = wire.outgoing(frame, buf);
    try_send(socket, bytes, 0, what)
}

/// Per-socket tuning a role chooses.
#[derive(Debug, Clone, Copy)]
pub struct SocketTuning {
    /// ZMQ_SNDHWM, in messages.
    pub send_hwm: i32,
    /// ZMQ_RCVHWM, in messages.
    pub recv_hwm: i32,
}

impl SocketTuning {
    /// ZeroMQ's own defaults.
    pub const DEFAULT: SocketTuning = SocketTuning {
        send_hwm: 1000,
        recv_hwm: 1000,
    };
}

/// The longest pause between two attempts to reach a peer that is not there.
pub const RECONNECT_MAX_MS: i32 = 250;

fn configure(socket: &zmq::Socket, tuning: SocketTuning, what: &str) -> Result<()> {
    let set = |r: zmq::Result<()>, option: &str| {
        r.map_err(|e| Error::zmq(format!("cannot set {option} on the {what} socket"), e))
    };
    // Never hang at exit on unsent messages.
    set(socket.set_linger(200), "ZMQ_LINGER")?;
    // No peer can make this process allocate without bound.
    set(
        // A sealed frame is OVERHEAD bytes longer than its plain form.
        socket.set_maxmsgsize((MAX_FRAME_BYTES + OVERHEAD) as i64),
        "ZMQ_MAXMSGSIZE",
    )?;
    set(socket.set_sndhwm(tuning.send_hwm), "ZMQ_SNDHWM")?;
    set(socket.set_rcvhwm(tuning.recv_hwm), "ZMQ_RCVHWM")?;
    // Quick to find a peer that starts a moment later (roles start in any
    // order), backing off to RECONNECT_MAX_MS for one that stays away: a
    // worker started long before its ventilator (the usual order) connects
    // at most that long after the ventilator binds, and its first orders
    // wait no longer (with a 2 s cap, a stream's first orders waited up to
    // 2 s for a worker that had been up a while).
    set(socket.set_reconnect_ivl(10), "ZMQ_RECONNECT_IVL")?;
    set(
        socket.set_reconnect_ivl_max(RECONNECT_MAX_MS),
        "ZMQ_RECONNECT_IVL_MAX",
    )?;
    // TCP keepalive closes connections to a host that went silent. Not ZMTP
    // heartbeats: with libzmq 4.3.4 they trip assertions in the stream
    // engine when a paused connection times out (libzmq #3937, #4841),
    // which aborted workers. Lost orders are the ventilator's business
    // (acknowledgements and redelivery), not the transport's.
    set(socket.set_tcp_keepalive(1), "ZMQ_TCP_KEEPALIVE")?;
    set(socket.set_tcp_keepalive_idle(2), "ZMQ_TCP_KEEPALIVE_IDLE")?;
    set(socket.set_tcp_keepalive_intvl(1), "ZMQ_TCP_KEEPALIVE_INTVL")?;
    set(socket.set_tcp_keepalive_cnt(3), "ZMQ_TCP_KEEPALIVE_CNT")?;
    Ok(())
}

/// What a socket is: its type, its name in errors ("jobs") and its tuning.
#[derive(Debug, Clone, Copy)]
pub struct SocketSpec<'a> {
    pub kind: zmq::SocketType,
    pub what: &'a str,
    pub tuning: SocketTuning,
}

impl<'a> SocketSpec<'a> {
    /// A `kind` socket named `what`, with the default tuning.
    pub const fn new(kind: zmq::SocketType, what: &'a str) -> SocketSpec<'a> {
        SocketSpec {
            kind,
            what,
            tuning: SocketTuning::DEFAULT,
        }
    }

    /// The same socket with `tuning`.
    pub fn tuned(self, tuning: SocketTuning) -> SocketSpec<'a> {
        SocketSpec { tuning, ..self }
    }

    /// A new socket with every option set.
    fn open(self, ctx: &zmq::Context) -> Result<zmq::Socket> {
        let what = self.what;
        let socket = ctx
            .socket(self.kind)
            .map_err(|e| Error::zmq(format!("cannot create the {what} socket"), e))?;
        configure(&socket, self.tuning, what)?;
        Ok(socket)
    }
}

/// A socket as `spec` says, bound to `endpoint`.
pub fn bind(ctx: &zmq::Context, spec: SocketSpec<'_>, endpoint: &str) -> Result<zmq::Socket> {
    let socket = spec.open(ctx)?;
    socket.bind(&bindable(endpoint)).map_err(|e| {
        let what = spec.what;
        Error::zmq(format!("cannot bind the {what} socket to {endpoint}"), e)
    })?;
    Ok(socket)
}

/// ZeroMQ binds TCP to an interface name or an address, not a host name:
/// `tcp://localhost:P` is bound as `tcp://127.0.0.1:P` (it would otherwise
/// fail with "No such device").
fn bindable(endpoint: &str) -> String {
    match endpoint.strip_prefix("tcp://localhost:") {
        Some(port) => format!("tcp://127.0.0.1:{port}"),
        None => endpoint.to_owned(),
    }
}

/// A socket as `spec` says, connected to `endpoint`. Connecting succeeds
/// before the peer exists; ZeroMQ reconnects by itself.
pub fn connect(ctx: &zmq::Context, spec: SocketSpec<'_>, endpoint: &str) -> Result<zmq::Socket> {
    let socket = spec.open(ctx)?;
    let what = spec.what;
    if spec.kind == zmq::PUSH {
        // Queue only towards completed connections: a PUSH with no peer blocks
        // instead of filling a pipe that may never connect.
        socket
            .set_immediate(true)
            .map_err(|e| Error::zmq(format!("cannot set ZMQ_IMMEDIATE on the {what} socket"), e))?;
    }
    socket
        .connect(endpoint)
        .map_err(|e| Error::zmq(format!("cannot connect the {what} socket to {endpoint}"), e))?;
    Ok(socket)
}

/// Waits up to `timeout_ms` for any of `items`; a signal (EINTR) counts as
/// "nothing ready" so the caller re-checks its shutdown flag.
pub fn poll(items: &mut [zmq::PollItem<'_>], timeout_ms: i64) -> Result<i32> {
    match zmq::poll(items, timeout_ms) {
        Ok(n) => Ok(n),
        Err(zmq::Error::EINTR) => Ok(0),
        Err(e) => Err(Error::zmq("cannot poll sockets", e)),
    }
}

/// Receives one message without blocking; `None` when nothing is waiting.
pub fn try_recv(socket: &zmq::Socket, msg: &mut zmq::Message, what: &str) -> Result<bool> {
    match socket.recv(msg, zmq::DONTWAIT) {
        Ok(()) => Ok(true),
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(false),
        Err(e) => Err(Error::zmq(
            format!("cannot receive on the {what} socket"),
            e,
        )),
    }
}

/// Sends without blocking; `false` when the socket cannot take it now (no
/// peer, or every peer's high-water mark reached).
pub fn try_send(socket: &zmq::Socket, data: &[u8], flags: i32, what: &str) -> Result<bool> {
    match socket.send(data, flags | zmq::DONTWAIT) {
        Ok(()) => Ok(true),
        Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) => Ok(false),
        Err(e) => Err(Error::zmq(format!("cannot send on the {what} socket"), e)),
    }
}

/// A socket that sends and receives whole frames: sealed or plain as its
/// [`Wire`] says, split and checked on the way in. Frames that fail to
/// open or to split are dropped, counted in `bad_frames` and logged at most
/// once every few seconds; [`Connection::recv`] only returns good ones.
/// For sockets that carry one part per message (DEALER, PUSH, PULL, SUB).
pub struct Connection {
    socket: zmq::Socket,
    wire: Wire,
    /// Names the socket in errors and logs ("acks").
    what: &'static str,
    msg: zmq::Message,
    frame: Vec<u8>,
    seal_buf: Vec<u8>,
    rejected: RejectLog,
    bad_frames: prometheus_client::metrics::counter::Counter,
    /// Frames dropped on this connection (also added to `bad_frames`).
    dropped: Dropped,
    last_bad_log: Option<std::time::Instant>,
}

/// Frames a [`Connection`] dropped, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Failed to open: forged, damaged, or sealed with another key.
    pub unopened: u64,
    /// Opened (or plain) but not a frame, or not one message of one part.
    pub malformed: u64,
}

impl Dropped {
    pub fn total(&self) -> u64 {
        self.unopened + self.malformed
    }
}

/// The last summary of frames that failed to open, so none goes unsaid.
impl Drop for Connection {
    fn drop(&mut self) {
        if let Some(summary) = self.rejected.flush() {
            tracing::warn!("{} frames: {summary}", self.what);
        }
    }
}

/// How often dropped frames are logged at most.
const DROP_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Connection {
    pub fn new(
        socket: zmq::Socket,
        wire: Wire,
        what: &'static str,
        metrics: &crate::metrics::Metrics,
    ) -> Connection {
        Connection {
            socket,
            wire,
            what,
            msg: zmq::Message::new(),
            frame: Vec::new(),
            seal_buf: Vec::new(),
            rejected: RejectLog::new(DROP_LOG_EVERY),
            bad_frames: metrics.bad_frames.clone(),
            dropped: Dropped::default(),
            last_bad_log: None,
        }
    }

    /// The socket, to poll it.
    pub fn socket(&self) -> &zmq::Socket {
        &self.socket
    }

    /// What this connection has dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.dropped
    }

    /// Counts one frame that is not a frame of ours.
    fn drop_malformed(&mut self) {
        self.dropped.malformed += 1;
        self.bad_frames.inc();
    }

    /// Encodes and sends one message without blocking; false when the
    /// socket cannot take it now.
    pub fn send<T: serde::Serialize>(&mut self, kind: Kind, run: RunId, body: &T) -> Result<bool> {
        protocol::begin_frame(&mut self.frame, kind, run);
        protocol::encode_into(&mut self.frame, body);
        let bytes = self.wire.outgoing(&self.frame, &mut self.seal_buf);
        try_send(&self.socket, bytes, 0, self.what)
    }

    /// Sends a frame already encoded (header included), sealing it if need be.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<bool> {
        send_frame(
            &self.socket,
            &self.wire,
            frame,
            &mut self.seal_buf,
            self.what,
        )
    }

    /// The next good frame waiting, without blocking: its header and body.
    pub fn recv(&mut self) -> Result<Option<(Header, &[u8])>> {
        loop {
            if !try_recv(&self.socket, &mut self.msg, self.what)? {
                return Ok(None);
            }
            if let Some((header, start, end)) = self.check() {
                return Ok(Some((header, &self.msg[start..end])));
            }
        }
    }

    /// For a ROUTER: the next good frame and, in `identity`, its sender.
    /// Messages that are not exactly `[identity, frame]` are dropped and counted.
    pub fn recv_routed(&mut self, identity: &mut zmq::Message) -> Result<Option<(Header, &[u8])>> {
        loop {
            if !try_recv(&self.socket, identity, self.what)? {
                return Ok(None);
            }
            if !identity.get_more() || !try_recv(&self.socket, &mut self.msg, self.what)? {
                self.drop_malformed();
                continue;
            }
            if self.msg.get_more() {
                let mut rest = zmq::Message::new();
                while try_recv(&self.socket, &mut rest, self.what)? && rest.get_more() {}
                self.drop_malformed();
                continue;
            }
            if let Some((header, start, end)) = self.check() {
                return Ok(Some((header, &self.msg[start..end])));
            }
        }
    }

    /// For a ROUTER: sends `frame` to the peer named `identity`, waiting
    /// for room (for a message that must arrive whole).
    pub fn send_routed_whole(&mut self, identity: &[u8], frame: &[u8]) -> Result<()> {
        let bytes = self.wire.outgoing(frame, &mut self.seal_buf);
        self.socket
            .send(identity, zmq::SNDMORE)
            .and_then(|()| self.socket.send(bytes, 0))
            .map_err(|e| Error::zmq(format!("cannot send on {}", self.what), e))
    }

    /// For a ROUTER: sends `frame` (sealed if need be) to the peer named
    /// `identity`, without blocking. The error is ZeroMQ's own, for the
    /// caller to tell "gone" (EHOSTUNREACH) from "full" (EAGAIN).
    pub fn send_routed(
        &mut self,
        identity: &[u8],
        frame: &[u8],
    ) -> std::result::Result<(), zmq::Error> {
        let bytes = self.wire.outgoing(frame, &mut self.seal_buf);
        self.socket
            .send(identity, zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|()| self.socket.send(bytes, zmq::DONTWAIT))
    }

    /// Opens (in place) and splits the message just received: its header
    /// and where its body lies in it, or none when it is bad (counted and
    /// logged).
    fn check(&mut self) -> Option<(Header, usize, usize)> {
        let base = self.msg.as_ptr() as usize;
        let plain = match self.wire.incoming(&mut self.msg) {
            Ok(plain) => plain,
            Err(e) => {
                self.dropped.unopened += 1;
                self.bad_frames.inc();
                if let Some(summary) = self.rejected.record(e) {
                    tracing::warn!("{} frames: {summary}", self.what);
                }
                return None;
            }
        };
        match protocol::split_frame(plain) {
            Ok((header, body)) => {
                let start = body.as_ptr() as usize - base;
                Some((header, start, start + body.len()))
            }
            Err(e) => {
                self.drop_malformed();
                let due = self
                    .last_bad_log
                    .is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY);
                if due {
                    self.last_bad_log = Some(std::time::Instant::now());
                    tracing::warn!(error = %e, "dropped a frame on the {} socket", self.what);
                }
                None
            }
        }
    }
}

/// True when the endpoint names a loopback or in-process address.
pub fn is_local_endpoint(endpoint: &str) -> bool {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return false;
    };
    match scheme {
        "inproc" | "ipc" => true,
        "tcp" => {
            let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.starts_with("127.") || host == "::1"
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_endpoints() {
        for ep in [
            "tcp://127.0.0.1:5557",
            "tcp://localhost:1",
            "ipc:///tmp/x",
            "inproc://a",
            "tcp://[::1]:9",
        ] {
            assert!(is_local_endpoint(ep), "{ep}");
        }
        for ep in [
            "tcp://0.0.0.0:5557",
            "tcp://10.0.0.2:1",
            "tcp://*:5",
            "tcp://host-a:5558",
            "bogus",
        ] {
            assert!(!is_local_endpoint(ep), "{ep}");
        }
    }

    /// A DEALER and a ROUTER over inproc, each a [`Connection`].
    fn pair(wire: Wire, name: &str) -> (zmq::Context, Connection, Connection) {
        let ctx = zmq::Context::new();
        let ep = format!("inproc://connection-test-{name}");
        let metrics = crate::metrics::Metrics::default();
        let router = bind(&ctx, SocketSpec::new(zmq::ROUTER, "jobs"), &ep).unwrap();
        let dealer = connect(&ctx, SocketSpec::new(zmq::DEALER, "credit"), &ep).unwrap();
        let router = Connection::new(router, wire.clone(), "jobs", &metrics);
        let dealer = Connection::new(dealer, wire, "credit", &metrics);
        (ctx, router, dealer)
    }

    fn wait(c: &Connection) {
        let mut items = [c.socket().as_poll_item(zmq::POLLIN)];
        poll(&mut items, 5000).unwrap();
    }

    #[test]
    fn a_connection_drops_and_counts_bad_frames_and_returns_good_ones() {
        for (name, wire) in [("plain", Wire::plain()), ("sealed", sealed_wire())] {
            let (_ctx, mut router, mut dealer) = pair(wire, name);
            // Garbage straight on the socket, then a good frame.
            dealer.socket().send(&b"garbage"[..], 0).unwrap();
            let body = protocol::Empty;
            assert!(dealer.send(Kind::Credit, RunId(7), &body).unwrap());
            wait(&router);
            let mut identity = zmq::Message::new();
            let mut got = None;
            for _ in 0..100 {
                if let Some((h, _)) = router.recv_routed(&mut identity).unwrap() {
                    got = Some(h);
                    break;
                }
                wait(&router);
            }
            let h = got.expect("the good frame");
            assert_eq!((h.kind, h.run), (Kind::Credit, RunId(7)), "{name}");
            assert_eq!(router.bad_frames.get(), 1, "{name}: the garbage is counted");
            // And back, routed to the sender.
            protocol::begin_frame(&mut router.frame, Kind::Jobs, RunId(7));
            let frame = router.frame.clone();
            router.send_routed(&identity, &frame).unwrap();
            wait(&dealer);
            let (h, body) = dealer.recv().unwrap().expect("routed back");
            assert_eq!(h.kind, Kind::Jobs, "{name}");
            assert!(body.is_empty());
        }
    }

    fn sealed_wire() -> Wire {
        let key = crate::seal::Key::generate().unwrap();
        Wire::sealed(Sealer::new(vec![key]).unwrap())
    }

    #[test]
    fn endpoint_in_use_is_a_clear_error() {
        let ctx = zmq::Context::new();
        let results = SocketSpec::new(zmq::PULL, "results");
        let first = bind(&ctx, results, "tcp://127.0.0.1:*").unwrap();
        let ep = first.get_last_endpoint().unwrap().unwrap();
        let Err(err) = bind(&ctx, results, &ep) else {
            panic!("second bind to {ep} succeeded")
        };
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot bind the results socket to {ep}: ")),
            "{text}"
        );
        assert!(text.contains("in use"), "{text}");
    }
}
