//! A TCP proxy for real-client tests: it keeps one address across broker restarts, cuts
//! connections on a schedule, holds responses back, and counts Produce requests left unanswered.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Kafka's Produce API key.
pub const PRODUCE: i16 = 0;

/// A TCP proxy in front of the broker. The broker advertises the proxy's address, so every
/// client connection (bootstrap and broker) goes through it; the upstream can be switched, so
/// clients survive a broker restart on a new port.
///
/// Connection `k` is cut (both sockets shut down) right after the read that took its
/// client-to-broker bytes past `budgets[k % len]` was forwarded: the broker usually got a whole
/// request whose response is then lost, and the client must retry it (an empty schedule never
/// cuts). The proxy follows the Kafka framing to count the Produce requests whose connection
/// closed before their response reached the client: the retries the test provoked.
pub struct Proxy {
    address: SocketAddr,
    state: Arc<ProxyState>,
}

pub struct ProxyState {
    upstream: Mutex<Option<String>>,
    budgets: Vec<usize>,
    accepted: AtomicUsize,
    cuts: AtomicUsize,
    produce_unanswered: AtomicUsize,
    /// While set, responses are held back (not forwarded to clients).
    hold_responses: AtomicBool,
    stopping: AtomicBool,
    open: Mutex<HashMap<usize, Arc<Connection>>>,
}

/// One proxied connection.
pub struct Connection {
    client: TcpStream,
    server: TcpStream,
    /// Requests forwarded to the broker whose response has not reached the client: correlation
    /// id → API key. Locked while a response is forwarded and while the connection is closed, so
    /// that every request is either answered or counted as unanswered.
    in_flight: Mutex<HashMap<i32, i16>>,
    closed: AtomicBool,
}

impl Connection {
    pub fn close(&self, state: &ProxyState) {
        let in_flight = self.in_flight.lock().unwrap();
        if !self.closed.swap(true, Ordering::SeqCst) {
            let _ = self.client.shutdown(Shutdown::Both);
            let _ = self.server.shutdown(Shutdown::Both);
            let unanswered = in_flight.values().filter(|&&api_key| api_key == PRODUCE).count();
            state.produce_unanswered.fetch_add(unanswered, Ordering::SeqCst);
        }
    }

    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Proxy {
    pub fn start(budgets: Vec<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let state = Arc::new(ProxyState {
            upstream: Mutex::new(None),
            budgets,
            accepted: AtomicUsize::new(0),
            cuts: AtomicUsize::new(0),
            produce_unanswered: AtomicUsize::new(0),
            hold_responses: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
        });
        let accepting = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let number = accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = accepting.upstream.lock().unwrap().clone();
                // No broker (it is down): dropping the client's socket closes it.
                let Some(server) = upstream.and_then(|upstream| TcpStream::connect(upstream).ok()) else { continue };
                proxy_connection(&accepting, number, client, server);
            }
        });
        Self { address, state }
    }

    pub fn address(&self) -> String {
        self.address.to_string()
    }

    pub fn set_upstream(&self, upstream: Option<&str>) {
        *self.state.upstream.lock().unwrap() = upstream.map(str::to_string);
    }

    pub fn hold_responses(&self, hold: bool) {
        self.state.hold_responses.store(hold, Ordering::SeqCst);
    }

    /// Produce requests forwarded on open connections and not answered yet.
    pub fn produce_in_flight(&self) -> usize {
        let open = self.state.open.lock().unwrap();
        open.values().map(|c| c.in_flight.lock().unwrap().values().filter(|&&k| k == PRODUCE).count()).sum()
    }

    pub fn close_all(&self) {
        let open: Vec<_> = self.state.open.lock().unwrap().values().cloned().collect();
        for connection in open {
            connection.close(&self.state);
        }
    }

    pub fn cuts(&self) -> usize {
        self.state.cuts.load(Ordering::SeqCst)
    }

    pub fn produce_unanswered(&self) -> usize {
        self.state.produce_unanswered.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address); // wakes the accepting thread
        self.close_all();
    }
}

pub fn proxy_connection(state: &Arc<ProxyState>, number: usize, client: TcpStream, server: TcpStream) {
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    let budget = (!state.budgets.is_empty()).then(|| state.budgets[number % state.budgets.len()]);
    let connection = Arc::new(Connection {
        client: client.try_clone().unwrap(),
        server: server.try_clone().unwrap(),
        in_flight: Mutex::new(HashMap::new()),
        closed: AtomicBool::new(false),
    });
    state.open.lock().unwrap().insert(number, connection.clone());
    let (upstream_state, upstream_connection) = (state.clone(), connection.clone());
    let (to_server, to_client) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        forward_requests(&upstream_state, &upstream_connection, client, to_server, budget);
        upstream_state.open.lock().unwrap().remove(&number);
    });
    let downstream_state = state.clone();
    std::thread::spawn(move || forward_responses(&downstream_state, &connection, server, to_client));
}

/// Client to broker: notes every request, and cuts the connection once `budget` bytes passed.
pub fn forward_requests(
    state: &ProxyState,
    connection: &Connection,
    mut client: TcpStream,
    mut server: TcpStream,
    budget: Option<usize>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut frames = FrameHeads::new(8); // api key, api version, correlation id
    let mut forwarded = 0usize;
    loop {
        let read = match client.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        frames.feed(&buffer[..read], |head| {
            let api_key = i16::from_be_bytes([head[0], head[1]]);
            let correlation_id = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            connection.in_flight.lock().unwrap().insert(correlation_id, api_key);
        });
        if server.write_all(&buffer[..read]).is_err() {
            break;
        }
        forwarded += read;
        if budget.is_some_and(|budget| forwarded >= budget) {
            state.cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
    }
    connection.close(state);
}

/// Broker to client: forgets every answered request; holds responses back while asked to.
pub fn forward_responses(state: &ProxyState, connection: &Connection, mut server: TcpStream, mut client: TcpStream) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut frames = FrameHeads::new(4); // correlation id
    loop {
        let read = match server.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        while state.hold_responses.load(Ordering::SeqCst) && !connection.closed() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut in_flight = connection.in_flight.lock().unwrap();
        if connection.closed() || client.write_all(&buffer[..read]).is_err() {
            break;
        }
        frames.feed(&buffer[..read], |head| {
            in_flight.remove(&i32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        });
    }
    connection.close(state);
}

/// Follows the frames of one direction of a Kafka connection (a 4-byte big-endian size, then
/// the frame) across reads, and hands the first `head_bytes` of every frame to a callback.
pub struct FrameHeads {
    head_bytes: usize,
    size: Vec<u8>,
    head: Vec<u8>,
    frame_left: usize,
}

impl FrameHeads {
    pub fn new(head_bytes: usize) -> Self {
        Self { head_bytes, size: Vec::with_capacity(4), head: Vec::with_capacity(head_bytes), frame_left: 0 }
    }

    pub fn feed(&mut self, mut data: &[u8], mut on_head: impl FnMut(&[u8])) {
        while !data.is_empty() {
            if self.frame_left == 0 {
                let take = (4 - self.size.len()).min(data.len());
                self.size.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.size.len() == 4 {
                    self.frame_left = u32::from_be_bytes(self.size[..].try_into().unwrap()) as usize;
                    self.size.clear();
                    self.head.clear();
                }
                continue;
            }
            let take = self.frame_left.min(data.len());
            let head_missing = (self.head_bytes - self.head.len()).min(take);
            if head_missing > 0 {
                self.head.extend_from_slice(&data[..head_missing]);
                if self.head.len() == self.head_bytes {
                    on_head(&self.head);
                }
            }
            self.frame_left -= take;
            data = &data[take..];
        }
    }
}
