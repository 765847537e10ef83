//! etcd's Watch service: the member's hub of recent changes and one session per stream.
//!
//! **Where events come from.** The key-value store captures the events of every write in
//! its write path while any watch stream is open ([`raftkv_kv::KvStore::set_capture`]).
//! After each applied command the state machine hands them to the [`WatchHub`], which
//! keeps the events of the latest revisions in a bounded ring (one entry per revision,
//! so all events of one transaction stay together) and bumps a `tokio::sync::watch`
//! channel. Publishing is O(events) whatever the number of watchers: the apply path never
//! matches keys against watchers and never waits for a client.
//!
//! **Sessions.** Each stream is served by one task ([`Session`]), which pulls from the
//! ring and matches the events against its own watchers. A watcher is *synced* (fed from
//! the ring at the session's cursor) or *unsynced* (catching up from the MVCC history,
//! [`raftkv_kv::KvStore::history_events`], in bounded batches up to the cursor, then
//! joining the synced ones), as etcd's synced and unsynced watcher groups. A stream whose
//! client reads slowly blocks only its own task (waiting for the HTTP/2 flow-control window, or on its bounded output channel); if the ring
//! moves past its cursor meanwhile, its watchers become unsynced and catch up from the
//! history, and one whose next revision was compacted is cancelled with
//! `compact_revision` set. Memory is bounded by the ring, by the output channel and by the
//! watcher limits.
//!
//! **Encoded once.** Responses leave a session already in their protobuf encoding
//! ([`Reply`]): the fields before `events`, then the encoded `events` field. A ring
//! revision encodes its events once (with and without `prev_kv`, on first use) and a
//! session gives the same bytes to every watcher of the same key or range with the same
//! options, so a watcher's response costs its header and id only. A gRPC stream's session
//! runs in the stream's own task and writes each batch of replies to the HTTP/2 stream as
//! one run of length-prefixed messages ([`serve_grpc`], called by the client port); the
//! gateway's `/v3/watch` and the lock and election recipes read a session's replies from a
//! bounded channel instead ([`start`]), in batches, one channel message for many watchers.
//!
//! Every member applies the same log, so a watcher on any member sees the same events;
//! a client that resumes from its last revision + 1 on another member misses nothing.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use raftkv_api::etcdserverpb::watch_create_request::FilterType;
use raftkv_api::etcdserverpb::watch_request::RequestUnion;
use raftkv_api::etcdserverpb::{WatchCreateRequest, WatchRequest, WatchResponse};
use raftkv_api::mvccpb::Event;
use raftkv_api::mvccpb::event::EventType;
use raftkv_api::prost::Message;
use raftkv_kv::{HistoryLimits, KvError, KvStore};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::api::service::Api;
use crate::api::watch_ranges::{Range, Ranges};

/// Watchers one stream may hold.
pub const MAX_WATCHERS_PER_STREAM: usize = 100_000;
/// Watchers one member may hold over all its streams.
pub const MAX_WATCHERS_PER_MEMBER: usize = 1_000_000;
/// Revisions the ring keeps.
const RING_REVISIONS: usize = 8192;
/// Estimated bytes of events the ring keeps.
const RING_BYTES: usize = 32 << 20;
/// Batches of responses queued per stream before its session waits for the client.
const OUT_QUEUE: usize = 16;
/// Responses in one batch of the output channel.
const REPLIES_PER_SEND: usize = 512;
/// Bytes encoded for one batch of the output channel (besides the ring's shared encodings),
/// beyond which it is sent.
const SEND_BYTES: usize = 256 << 10;
/// Ring revisions one session delivers before looking at its requests again.
const REVISIONS_PER_PUMP: i64 = 64;
/// Estimated bytes of ring revisions delivered together to a stream that is behind.
const BATCH_BYTES: usize = 256 << 10;
/// History batches one session reads before looking at its requests again.
const CATCH_UPS_PER_PUMP: usize = 8;
/// One history batch: well within a client's default 4 MiB receive limit.
const CATCH_UP_LIMITS: HistoryLimits = HistoryLimits { max_events: 1000, max_bytes: 2 << 20 };
/// etcd's default progress notification interval (`--experimental-watch-progress-notify-interval`).
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(600);

/// Revisions between what an unsynced watcher reads from the history (through the cursor
/// - 1 - SEAM_GAP) and where it joins the synced ones (the cursor - SEAM_GAP): none.
#[cfg(not(feature = "planted-watch-seam-bug"))]
const SEAM_GAP: i64 = 0;
/// Planted bug (feature `planted-watch-seam-bug`, to measure the black-box watch checker):
/// the history read stops one revision short of the cursor and the join accepts it, so a
/// watcher that catches up never gets the revision at the replay/live seam.
#[cfg(feature = "planted-watch-seam-bug")]
const SEAM_GAP: i64 = 1;

/// etcd's errors, with its texts.
const ERR_DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";
const ERR_EMPTY_RANGE: &str = "mvcc: watcher range is empty";

/// The events of one revision, in sub-revision order.
#[derive(Debug)]
pub struct RevEvents {
    pub rev: i64,
    pub events: Vec<Event>,
    bytes: usize,
    /// The `events` field of a `WatchResponse` holding all of them, without and with
    /// `prev_kv` (made on first use, then shared by every session).
    encoded: [OnceLock<Bytes>; 2],
}

impl RevEvents {
    fn new(rev: i64, events: Vec<Event>) -> RevEvents {
        let bytes = events.iter().map(event_bytes).sum();
        RevEvents { rev, events, bytes, encoded: [OnceLock::new(), OnceLock::new()] }
    }

    /// All the revision's events, encoded as the `events` field of a `WatchResponse`.
    fn encoded(&self, prev_kv: bool) -> &Bytes {
        self.encoded[usize::from(prev_kv)].get_or_init(|| {
            let mut buf = BytesMut::new();
            for ev in &self.events {
                encode_event(ev, prev_kv, &mut buf);
            }
            buf.freeze()
        })
    }
}

/// The key of `WatchResponse.events` (field 11, length-delimited).
const EVENTS_KEY: u8 = (11 << 3) | 2;

/// One event as an element of `WatchResponse.events`, its `prev_kv` left out unless wanted.
fn encode_event(ev: &Event, prev_kv: bool, buf: &mut BytesMut) {
    buf.put_u8(EVENTS_KEY);
    let encoded = if prev_kv || ev.prev_kv.is_none() {
        ev.encode_length_delimited(buf)
    } else {
        Event { prev_kv: None, ..ev.clone() }.encode_length_delimited(buf)
    };
    // Only a full buffer fails; a BytesMut grows.
    debug_assert!(encoded.is_ok());
}

/// One response of a watch stream, in its protobuf encoding: the fields before `events`,
/// then the `events` field, which the responses of every watcher of a stream with the same
/// key or range and options share. A gRPC stream gets the bytes as they are; the gateway
/// and the recipes decode them.
#[derive(Clone, Debug)]
pub struct Reply {
    head: Bytes,
    events: Bytes,
}

impl Reply {
    /// A response encoded whole.
    pub fn new(resp: &WatchResponse) -> Reply {
        Reply { head: Bytes::from(resp.encode_to_vec()), events: Bytes::new() }
    }

    /// A response of `header` (an encoded `WatchResponse` holding only its header), the
    /// watch id and the already encoded `events`; the head is written into `heads`.
    fn compose(heads: &mut BytesMut, header: &[u8], watch_id: i64, events: Bytes) -> Reply {
        let id = WatchResponse { watch_id, ..Default::default() };
        let need = header.len() + id.encoded_len();
        if heads.capacity() - heads.len() < need {
            // One allocation for the heads of many responses.
            *heads = BytesMut::with_capacity(need.max(8 << 10));
        }
        heads.put_slice(header);
        let written = id.encode(heads);
        debug_assert!(written.is_ok());
        Reply { head: heads.split().freeze(), events }
    }

    /// The length of the encoded response.
    pub fn encoded_len(&self) -> usize {
        self.head.len() + self.events.len()
    }

    /// The response as a message.
    pub fn decode(&self) -> Result<WatchResponse, Status> {
        WatchResponse::decode(self.head.clone().chain(self.events.clone()))
            .map_err(|e| Status::internal(format!("cannot decode a watch response: {e}")))
    }

    fn write(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.head);
        buf.put_slice(&self.events);
    }
}

#[derive(Debug)]
struct Ring {
    /// The revision of `revs[0]`, or the next revision to publish when `revs` is empty.
    first: i64,
    revs: VecDeque<Arc<RevEvents>>,
    bytes: usize,
}

/// The member's recent changes, shared by the state machine (which publishes) and the
/// watch sessions (which read).
#[derive(Debug)]
pub struct WatchHub {
    ring: Mutex<Ring>,
    /// The last published revision: a wake-up for sessions.
    published: watch::Sender<i64>,
    /// Open streams: while there is one, the store captures changes.
    streams: AtomicUsize,
    /// Watchers over all streams.
    watchers: AtomicUsize,
    progress_interval: Duration,
}

fn event_bytes(e: &Event) -> usize {
    let kv = e.kv.as_ref().map_or(0, |kv| kv.key.len() + kv.value.len());
    let prev = e.prev_kv.as_ref().map_or(0, |kv| kv.value.len());
    kv + prev + 96
}

impl WatchHub {
    /// A hub for a store at revision `rev`, with progress notifications every
    /// `progress_interval` (etcd's `--experimental-watch-progress-notify-interval`).
    pub fn with_progress_interval(rev: i64, progress_interval: Duration) -> Arc<WatchHub> {
        Arc::new(WatchHub {
            ring: Mutex::new(Ring { first: rev + 1, revs: VecDeque::new(), bytes: 0 }),
            published: watch::channel(rev).0,
            streams: AtomicUsize::new(0),
            watchers: AtomicUsize::new(0),
            progress_interval,
        })
    }

    /// A stream opens (under the state machine's write lock, so that no write falls
    /// between turning capturing on and the ring's start).
    fn open_stream(&self, kv: &mut KvStore) {
        self.streams.fetch_add(1, Ordering::SeqCst);
        if !kv.capturing() {
            kv.set_capture(true);
            self.reset(kv.revision());
        }
    }

    /// The store was replaced by a restored snapshot.
    pub fn restored(&self, kv: &mut KvStore) {
        kv.set_capture(self.streams.load(Ordering::SeqCst) > 0);
        self.reset(kv.revision());
    }

    /// Called after every applied command, under the state machine's write lock: takes
    /// the store's captured events into the ring, and turns capturing on or off as
    /// streams come and go.
    pub fn after_apply(&self, kv: &mut KvStore) {
        let active = self.streams.load(Ordering::SeqCst) > 0;
        if active != kv.capturing() {
            kv.set_capture(active);
            // What this command changed was not captured (or is no longer wanted).
            self.reset(kv.revision());
            return;
        }
        if !active {
            return;
        }
        let events = kv.take_changes();
        if events.is_empty() {
            return;
        }
        let rev = kv.revision();
        let entry = Arc::new(RevEvents::new(rev, events));
        {
            let mut ring = self.ring.lock();
            if ring.first + ring.revs.len() as i64 != rev {
                // Not contiguous (cannot happen while capturing; be safe): start over.
                ring.revs.clear();
                ring.bytes = 0;
                ring.first = rev;
            }
            ring.bytes += entry.bytes;
            ring.revs.push_back(entry);
            while ring.revs.len() > 1 && (ring.revs.len() > RING_REVISIONS || ring.bytes > RING_BYTES) {
                if let Some(old) = ring.revs.pop_front() {
                    ring.bytes -= old.bytes;
                    ring.first += 1;
                }
            }
        }
        self.published.send_replace(rev);
    }

    /// The store was replaced (a snapshot restored) or capturing restarted at revision
    /// `rev`: the ring starts empty after it; sessions catch up from the history.
    pub fn reset(&self, rev: i64) {
        {
            let mut ring = self.ring.lock();
            ring.revs.clear();
            ring.bytes = 0;
            ring.first = rev + 1;
        }
        self.published.send_replace(rev);
    }

    /// The revisions the ring holds: `first..=last` (empty when `last < first`).
    fn bounds(&self) -> (i64, i64) {
        let ring = self.ring.lock();
        (ring.first, ring.first + ring.revs.len() as i64 - 1)
    }

    fn get(&self, rev: i64) -> Option<Arc<RevEvents>> {
        let ring = self.ring.lock();
        let i = usize::try_from(rev - ring.first).ok()?;
        ring.revs.get(i).cloned()
    }
}

/// Counts an open stream for as long as it lives.
struct StreamGuard {
    hub: Arc<WatchHub>,
    watchers: usize,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.hub.streams.fetch_sub(1, Ordering::SeqCst);
        self.hub.watchers.fetch_sub(self.watchers, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Watcher {
    key: Bytes,
    end: Bytes,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_notify: bool,
    fragment: bool,
    synced: bool,
    /// Unsynced: the next revision to read from the history. Synced: the first revision
    /// to deliver (a watcher created for a future revision skips those before it).
    next_rev: i64,
    /// Something was sent since the last progress tick.
    sent: bool,
}

/// What ends a session.
#[derive(Debug)]
enum End {
    /// The client went away.
    Closed,
    /// The stream ends with this status (a bad request message, or the leader lost by a
    /// caller that required one).
    Failed(Status),
}

/// Where a session's responses go.
enum Sink {
    /// A channel that an [`Output`] reads (the gateway's `/v3/watch` and the lock and
    /// election recipes decode the replies).
    Channel(mpsc::Sender<Vec<Reply>>),
    /// The gRPC stream itself, written by the session's own task ([`serve_grpc`]).
    Grpc(GrpcSink),
}

impl Sink {
    /// Sends a batch, waiting while the client does not read.
    async fn send(&mut self, replies: Vec<Reply>) -> Result<(), End> {
        match self {
            Sink::Channel(tx) => tx.send(replies).await.map_err(|_| End::Closed),
            Sink::Grpc(grpc) => grpc.send(replies).await,
        }
    }

    /// Resolves when the stream is over for the sink's side: the client went away, or (on
    /// the gRPC stream of a caller that required a leader) the member lost its leader.
    async fn closed(&mut self) -> End {
        match self {
            Sink::Channel(tx) => {
                tx.closed().await;
                End::Closed
            }
            Sink::Grpc(grpc) => grpc.closed().await,
        }
    }
}

/// A watch stream's HTTP/2 response, written as gRPC messages.
struct GrpcSink {
    stream: h2::SendStream<Bytes>,
    /// Resolves once the member has had no leader for a while, when the caller asked
    /// for one (`hasleader` metadata, [`crate::api::require_leader`]).
    leader_lost: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    /// Where batches are encoded. Each batch is split off and handed to h2; once h2 has
    /// written and dropped it, `reserve` takes the same allocation back for the next batch
    /// instead of a fresh one (which for a large batch would be fresh pages to fault in).
    buf: BytesMut,
}

impl GrpcSink {
    /// The batch as consecutive length-prefixed messages, written in as few DATA frames as
    /// the client's flow-control window allows.
    async fn send(&mut self, replies: Vec<Reply>) -> Result<(), End> {
        let len: usize = replies.iter().map(|r| 5 + r.encoded_len()).sum();
        let buf = &mut self.buf;
        buf.reserve(len);
        for reply in &replies {
            // Replies are bounded well below 4 GiB (max_request_bytes and the batch limits).
            let prefix = u32::try_from(reply.encoded_len()).unwrap_or(u32::MAX);
            buf.put_u8(0);
            buf.put_u32(prefix);
            reply.write(buf);
        }
        let data = buf.split().freeze();
        crate::metrics::get().grpc_sent_bytes((len - 5 * replies.len()) as u64);
        crate::api::client_port::send_when_window(&mut self.stream, data).await.map_err(|_| End::Closed)
    }

    async fn closed(&mut self) -> End {
        let stream = &mut self.stream;
        let reset = std::future::poll_fn(|cx| stream.poll_reset(cx));
        match self.leader_lost.as_mut() {
            None => {
                let _ = reset.await;
                End::Closed
            }
            Some(lost) => tokio::select! {
                _ = reset => End::Closed,
                _ = lost => End::Failed(crate::api::require_leader::no_leader()),
            },
        }
    }
}

type Input = Pin<Box<dyn Stream<Item = Result<WatchRequest, Status>> + Send>>;

/// The responses of one session, in order (a stream of them; dropping it ends the session).
pub struct Output {
    rx: mpsc::Receiver<Vec<Reply>>,
    ready: std::vec::IntoIter<Reply>,
}

impl Output {
    /// The next response; None once the session ended.
    pub async fn recv(&mut self) -> Option<Reply> {
        std::future::poll_fn(|cx| self.poll_reply(cx)).await
    }

    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<Option<Reply>> {
        loop {
            if let Some(reply) = self.ready.next() {
                return Poll::Ready(Some(reply));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.ready = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Stream for Output {
    type Item = Result<Reply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_reply(cx).map(|r| r.map(Ok))
    }
}

/// Starts a session for one watch stream; its responses come out of the returned stream.
pub fn start(api: Api, input: Input) -> Output {
    let (tx, rx) = mpsc::channel(OUT_QUEUE);
    let session = Session::new(api, Sink::Channel(tx));
    // The session checks each watch it creates as the stream's caller.
    tokio::spawn(crate::api::auth::inherit(session.run(input)));
    Output { rx, ready: Vec::new().into_iter() }
}

/// Serves one gRPC Watch call in the calling task: requests from `input`, responses
/// written to `stream` as the session makes them (no task or channel between them), and
/// the trailers. Returns the status code the stream ended with; None when the client went
/// away.
pub(crate) async fn serve_grpc(
    api: Api,
    input: Input,
    stream: h2::SendStream<Bytes>,
    require_leader: bool,
) -> Option<tonic::Code> {
    let leader_lost = require_leader.then(|| crate::api::require_leader::lost(&api));
    let mut session = Session::new(api, Sink::Grpc(GrpcSink { stream, leader_lost, buf: BytesMut::new() }));
    let End::Failed(status) = session.serve(input).await else { return None };
    if let Sink::Grpc(grpc) = &mut session.out {
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert(tonic::Status::GRPC_STATUS, (status.code() as i32).into());
        }
        let _ = grpc.stream.send_trailers(trailers);
    }
    Some(status.code())
}

struct Session {
    guard: StreamGuard,
    hub: Arc<WatchHub>,
    api: Api,
    out: Sink,
    watchers: HashMap<i64, Watcher>,
    /// Single-key watchers by key.
    exact: HashMap<Bytes, Vec<i64>>,
    /// Range and prefix watchers by key and range end.
    ranges: Ranges,
    unsynced: VecDeque<i64>,
    synced_count: usize,
    /// The next ring revision for the synced watchers.
    cursor: i64,
    next_id: i64,
    /// A ProgressRequest waits for every watcher to be synced.
    progress_pending: bool,
}

impl Session {
    fn new(api: Api, out: Sink) -> Session {
        let hub = {
            let mut sm = api.node.shared.sm.write();
            let hub = sm.hooks.watch.clone();
            hub.open_stream(&mut sm.kv);
            hub
        };
        let cursor = hub.bounds().1 + 1;
        Session {
            guard: StreamGuard { hub: hub.clone(), watchers: 0 },
            hub,
            api,
            out,
            watchers: HashMap::new(),
            exact: HashMap::new(),
            ranges: Ranges::default(),
            unsynced: VecDeque::new(),
            synced_count: 0,
            cursor,
            next_id: 0,
            progress_pending: false,
        }
    }

    async fn run(mut self, input: Input) {
        self.serve(input).await;
    }

    /// Serves the stream until it ends; returns why.
    async fn serve(&mut self, mut input: Input) -> End {
        let mut published = self.hub.published.subscribe();
        let mut ticker = tokio::time::interval(self.hub.progress_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut input_open = true;
        loop {
            let busy = match self.pump().await {
                Ok(busy) => busy,
                Err(end) => return end,
            };
            let step = tokio::select! {
                biased;
                end = self.out.closed() => Err(end),
                req = input.next(), if input_open => match req {
                    Some(Ok(req)) => self.request(req).await,
                    // The client half-closed: etcd 3.4 keeps sending.
                    None => {
                        input_open = false;
                        Ok(())
                    }
                    Some(Err(status)) => Err(End::Failed(status)),
                },
                _ = published.changed() => Ok(()),
                _ = ticker.tick() => self.progress_tick().await,
                _ = std::future::ready(()), if busy => Ok(()),
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    fn header(&self, revision: i64) -> Option<raftkv_api::etcdserverpb::ResponseHeader> {
        Some(self.api.header(revision))
    }

    async fn send(&mut self, resp: WatchResponse) -> Result<(), End> {
        self.send_replies(vec![Reply::new(&resp)]).await
    }

    async fn send_replies(&mut self, replies: Vec<Reply>) -> Result<(), End> {
        if replies.is_empty() {
            return Ok(());
        }
        self.out.send(replies).await
    }

    async fn request(&mut self, req: WatchRequest) -> Result<(), End> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                // etcd answers only the cancellation of a watcher that exists.
                if self.remove(c.watch_id) {
                    let rev = self.api.node.shared.sm.read().kv.revision();
                    let resp = WatchResponse {
                        header: self.header(rev),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(resp).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest) -> Result<(), End> {
        let permitted = self.api.authorize(|sm, user| sm.auth.check_range(user, &c.key, &c.range_end, false));
        let key = if c.key.is_empty() { Bytes::from_static(&[0]) } else { c.key };
        let end = c.range_end;
        let refuse = |reason: String| WatchResponse {
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        };
        let current = self.api.node.shared.sm.read().kv.revision();
        let refused = if let Err(status) = permitted {
            // etcd answers a refused watch as created and canceled, the reason its error text.
            Some(status.message().to_string())
        } else if !end.is_empty() && end[..] != [0] && end <= key {
            Some(ERR_EMPTY_RANGE.to_string())
        } else if c.watch_id != 0 && self.watchers.contains_key(&c.watch_id) {
            Some(ERR_DUPLICATE_ID.to_string())
        } else if self.watchers.len() >= MAX_WATCHERS_PER_STREAM {
            Some(format!("raftkv: too many watchers on this stream (limit {MAX_WATCHERS_PER_STREAM})"))
        } else if self.hub.watchers.fetch_add(1, Ordering::Relaxed) >= MAX_WATCHERS_PER_MEMBER {
            self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
            Some(format!("raftkv: too many watchers on this member (limit {MAX_WATCHERS_PER_MEMBER})"))
        } else {
            None
        };
        if let Some(reason) = refused {
            let resp = WatchResponse { header: self.header(current), ..refuse(reason) };
            return self.send(resp).await;
        }
        self.guard.watchers += 1;
        let id = if c.watch_id != 0 {
            c.watch_id
        } else {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let start = if c.start_revision == 0 { current + 1 } else { c.start_revision };
        let w = Watcher {
            key: key.clone(),
            end: end.clone(),
            prev_kv: c.prev_kv,
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            progress_notify: c.progress_notify,
            fragment: c.fragment,
            synced: false,
            next_rev: start,
            sent: false,
        };
        if end.is_empty() {
            self.exact.entry(key).or_default().push(id);
        } else {
            self.ranges.add((key, end), id);
        }
        self.watchers.insert(id, w);
        self.unsynced.push_back(id);
        let resp =
            WatchResponse { header: self.header(current), watch_id: id, created: true, ..Default::default() };
        self.send(resp).await
    }

    /// Forgets a watcher; false if there was none.
    fn remove(&mut self, id: i64) -> bool {
        let Some(w) = self.watchers.remove(&id) else { return false };
        if w.end.is_empty() {
            if let Some(ids) = self.exact.get_mut(&w.key) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.exact.remove(&w.key);
                }
            }
        } else {
            self.ranges.remove(&(w.key, w.end), id);
        }
        if w.synced {
            self.synced_count -= 1;
        } else {
            self.unsynced.retain(|&i| i != id);
        }
        self.guard.watchers -= 1;
        self.hub.watchers.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Delivers what is due, a bounded amount of work at a time. Returns whether there
    /// may be more to do right away.
    async fn pump(&mut self) -> Result<bool, End> {
        let (first, last) = self.hub.bounds();
        if self.synced_count == 0 {
            self.cursor = last + 1;
        } else if self.cursor < first {
            self.demote();
        }
        let mut busy = false;
        // Unsynced watchers that are at (or past) the cursor join the synced ones.
        self.join_synced();
        // The ring, for the synced watchers.
        // A stream that is behind gets consecutive revisions together: one response per
        // watcher for the whole batch (as etcd batches a lagging watcher's revisions).
        let upto = last.min(self.cursor + REVISIONS_PER_PUMP - 1);
        let mut batch: Vec<Arc<RevEvents>> = Vec::new();
        let mut batch_bytes = 0;
        while self.synced_count > 0 && self.cursor + (batch.len() as i64) <= upto && batch_bytes < BATCH_BYTES
        {
            let Some(rev) = self.hub.get(self.cursor + batch.len() as i64) else {
                if batch.is_empty() {
                    // The ring moved on while this stream was slow: catch up from the history.
                    self.demote();
                }
                break;
            };
            batch_bytes += rev.bytes;
            batch.push(rev);
        }
        if !batch.is_empty() {
            self.deliver(&batch).await?;
            self.cursor += batch.len() as i64;
            self.join_synced();
        }
        if self.synced_count == 0 {
            self.cursor = self.hub.bounds().1 + 1;
        }
        busy |= self.synced_count > 0 && self.cursor <= self.hub.bounds().1;
        // Unsynced watchers read a batch each from the history, up to the cursor.
        for _ in 0..CATCH_UPS_PER_PUMP.min(self.unsynced.len()) {
            let Some(id) = self.unsynced.pop_front() else { break };
            self.catch_up(id).await?;
            busy = true;
        }
        self.join_synced();
        if self.progress_pending && self.unsynced.is_empty() && self.cursor > self.hub.bounds().1 {
            self.progress_pending = false;
            let resp =
                WatchResponse { header: self.header(self.cursor - 1), watch_id: -1, ..Default::default() };
            self.send(resp).await?;
        }
        Ok(busy || !self.unsynced.is_empty())
    }

    /// Every synced watcher goes back to reading the history from the cursor.
    fn demote(&mut self) {
        for (&id, w) in self.watchers.iter_mut() {
            if w.synced {
                w.synced = false;
                w.next_rev = w.next_rev.max(self.cursor);
                self.unsynced.push_back(id);
            }
        }
        self.synced_count = 0;
    }

    fn join_synced(&mut self) {
        let cursor = self.cursor;
        let watchers = &mut self.watchers;
        let mut joined = 0;
        self.unsynced.retain(|id| match watchers.get_mut(id) {
            Some(w) if w.next_rev >= cursor - SEAM_GAP => {
                w.synced = true;
                joined += 1;
                false
            }
            Some(_) => true,
            None => false,
        });
        self.synced_count += joined;
    }

    /// Consecutive revisions from the ring to the synced watchers they concern: one
    /// response per watcher, every revision whole, in order. The watchers of one key or
    /// range with the same options share one encoding of their events.
    async fn deliver(&mut self, batch: &[Arc<RevEvents>]) -> Result<(), End> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else { return Ok(()) };
        let first_rev = first.rev;
        let header = encoded_header(self.header(last.rev));
        let limit = self.api.max_request_bytes();
        // The batch's events (revision index, event index) per group of watchers: single
        // keys by hash, ranges by their index.
        let mut hits: Vec<(Group, Vec<Pos>)> = Vec::new();
        if !self.exact.is_empty() {
            let mut at: HashMap<&Bytes, usize> = HashMap::new();
            for (b, rev) in batch.iter().enumerate() {
                for (j, ev) in rev.events.iter().enumerate() {
                    let Some(kv) = &ev.kv else { continue };
                    let Some((key, _)) = self.exact.get_key_value(&kv.key) else { continue };
                    let i = *at.entry(key).or_insert_with(|| {
                        hits.push((Group::Exact(key.clone()), Vec::new()));
                        hits.len() - 1
                    });
                    hits[i].1.push((b, j));
                }
            }
        }
        if !self.ranges.is_empty() {
            self.ranges.index();
            let mut at: HashMap<Range, usize> = HashMap::new();
            for (b, rev) in batch.iter().enumerate() {
                for (j, ev) in rev.events.iter().enumerate() {
                    let Some(kv) = &ev.kv else { continue };
                    self.ranges.holding(&kv.key, |range, _| {
                        let i = *at.entry(range.clone()).or_insert_with(|| {
                            hits.push((Group::Range(range.clone()), Vec::new()));
                            hits.len() - 1
                        });
                        hits[i].1.push((b, j));
                    });
                }
            }
        }
        let mut out: Vec<Reply> = Vec::new();
        let mut out_bytes = 0;
        let mut heads = BytesMut::new();
        for (group, pos) in hits {
            let ids = match &group {
                Group::Exact(key) => self.exact.get(key).cloned().unwrap_or_default(),
                Group::Range(range) => self.ranges.watchers(range).to_vec(),
            };
            // The events of this group per options, encoded once.
            let mut shared: Vec<(Options, Option<Bytes>)> = Vec::new();
            for id in ids {
                let Some(w) = self.watchers.get_mut(&id) else { continue };
                if !w.synced {
                    continue;
                }
                let options = Options {
                    prev_kv: w.prev_kv,
                    no_put: w.no_put,
                    no_delete: w.no_delete,
                    from: w.next_rev.max(first_rev),
                };
                let events = match shared.iter().find(|(o, _)| *o == options) {
                    Some((_, events)) => events.clone(),
                    None => {
                        let events = select(batch, &pos, options);
                        if let Some((events, fresh)) = &events
                            && *fresh
                        {
                            out_bytes += events.len();
                        }
                        let events = events.map(|(events, _)| events);
                        shared.push((options, events.clone()));
                        events
                    }
                };
                let Some(events) = events else { continue };
                w.sent = true;
                let fragment = w.fragment;
                let reply = Reply::compose(&mut heads, &header, id, events);
                out_bytes += reply.head.len();
                match (fragment && reply.encoded_len() >= limit).then(|| reply.decode()) {
                    Some(Ok(resp)) => {
                        for part in fragments(resp, limit) {
                            out_bytes += part.encoded_len();
                            out.push(Reply::new(&part));
                        }
                    }
                    _ => out.push(reply),
                }
                if out.len() >= REPLIES_PER_SEND || out_bytes >= SEND_BYTES {
                    self.send_replies(std::mem::take(&mut out)).await?;
                    out_bytes = 0;
                }
            }
        }
        self.send_replies(out).await
    }

    /// One history batch for an unsynced watcher (which is not in `unsynced` meanwhile).
    async fn catch_up(&mut self, id: i64) -> Result<(), End> {
        let Some(w) = self.watchers.get(&id) else { return Ok(()) };
        let to = self.cursor - 1 - SEAM_GAP;
        let (key, end, from) = (w.key.clone(), w.end.clone(), w.next_rev);
        let read = {
            let sm = self.api.node.shared.sm.read();
            let batch = sm.kv.history_events(&key, &end, from, to, CATCH_UP_LIMITS);
            (batch, sm.kv.revision(), sm.kv.compact_revision())
        };
        match read {
            (Ok(batch), current, _) => {
                let Some(w) = self.watchers.get_mut(&id) else { return Ok(()) };
                w.next_rev = batch.through + 1;
                let events: Vec<Event> =
                    batch.events.iter().filter(|e| wanted(w, e)).map(|e| shape(w, e)).collect();
                self.unsynced.push_back(id);
                if !events.is_empty() {
                    let resp = WatchResponse {
                        header: self.header(current),
                        watch_id: id,
                        events,
                        ..Default::default()
                    };
                    self.send_events(id, resp).await?;
                }
                Ok(())
            }
            (Err(KvError::Compacted), _, compacted) => {
                // As etcd: the header carries no revision, the compacted revision is set.
                self.remove(id);
                let resp = WatchResponse {
                    header: self.header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: compacted,
                    ..Default::default()
                };
                self.send(resp).await
            }
            (Err(e), current, _) => {
                self.remove(id);
                let resp = WatchResponse {
                    header: self.header(current),
                    watch_id: id,
                    canceled: true,
                    cancel_reason: e.message().to_string(),
                    ..Default::default()
                };
                self.send(resp).await
            }
        }
    }

    /// Sends a watcher's events, in fragments if it asked for them and they are large.
    async fn send_events(&mut self, id: i64, resp: WatchResponse) -> Result<(), End> {
        let fragment = match self.watchers.get_mut(&id) {
            Some(w) => {
                w.sent = true;
                w.fragment
            }
            None => false,
        };
        let limit = self.api.max_request_bytes();
        if !fragment || resp.events.len() < 2 || resp.encoded_len() < limit {
            return self.send(resp).await;
        }
        self.send_replies(fragments(resp, limit).iter().map(Reply::new).collect()).await
    }

    /// etcd's progress notification: to every synced watcher that asked for it and was
    /// sent nothing since the last tick, an empty response at the current revision.
    async fn progress_tick(&mut self) -> Result<(), End> {
        let rev = self.cursor - 1;
        let header = self.header(rev);
        let mut due = Vec::new();
        for (&id, w) in self.watchers.iter_mut() {
            if w.progress_notify && w.synced && !w.sent {
                due.push(Reply::new(&WatchResponse { header, watch_id: id, ..Default::default() }));
            }
            w.sent = false;
        }
        for replies in due.chunks(REPLIES_PER_SEND) {
            self.send_replies(replies.to_vec()).await?;
        }
        Ok(())
    }
}

fn wanted(w: &Watcher, ev: &Event) -> bool {
    passes(w.no_put, w.no_delete, ev)
}

fn passes(no_put: bool, no_delete: bool, ev: &Event) -> bool {
    let delete = ev.r#type == EventType::Delete as i32;
    !(delete && no_delete || !delete && no_put)
}

/// An event of a ring batch: the index of its revision in the batch, its index there.
type Pos = (usize, usize);

/// The watchers of one stream that see the same events: those of one key, or of one range.
enum Group {
    Exact(Bytes),
    Range(Range),
}

/// What makes the events of a group's watchers differ: whether they want `prev_kv`, their
/// filters, and the first revision of the batch they take.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Options {
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    from: i64,
}

/// The `events` field for the events at `pos` that pass `options`, in order; None if
/// there are none. A revision taken whole is its shared encoding; the bool tells whether
/// new bytes were encoded or copied for the result.
fn select(batch: &[Arc<RevEvents>], pos: &[Pos], options: Options) -> Option<(Bytes, bool)> {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut fresh = false;
    for same_rev in pos.chunk_by(|a, b| a.0 == b.0) {
        let Some(rev) = same_rev.first().and_then(|&(b, _)| batch.get(b)) else { continue };
        if rev.rev < options.from {
            continue;
        }
        let taken: Vec<&Event> = same_rev
            .iter()
            .filter_map(|&(_, j)| rev.events.get(j))
            .filter(|ev| passes(options.no_put, options.no_delete, ev))
            .collect();
        if taken.len() == rev.events.len() {
            parts.push(rev.encoded(options.prev_kv).clone());
        } else if !taken.is_empty() {
            let mut buf = BytesMut::new();
            for ev in taken {
                encode_event(ev, options.prev_kv, &mut buf);
            }
            parts.push(buf.freeze());
            fresh = true;
        }
    }
    match parts.len() {
        0 => None,
        1 => parts.pop().map(|part| (part, fresh)),
        _ => {
            let mut buf = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for part in &parts {
                buf.put_slice(part);
            }
            Some((buf.freeze(), true))
        }
    }
}

/// A `WatchResponse` holding only `header`, encoded: the first field of every response.
fn encoded_header(header: Option<raftkv_api::etcdserverpb::ResponseHeader>) -> Bytes {
    Bytes::from(WatchResponse { header, ..Default::default() }.encode_to_vec())
}

fn shape(w: &Watcher, ev: &Event) -> Event {
    if w.prev_kv { ev.clone() } else { Event { prev_kv: None, ..ev.clone() } }
}

/// etcd's `sendFragments`: responses of at most `limit` bytes each (at least one event),
/// `fragment` set on all but the last.
fn fragments(resp: WatchResponse, limit: usize) -> Vec<WatchResponse> {
    let mut out = Vec::new();
    let mut events = resp.events.into_iter().peekable();
    let base = WatchResponse { events: Vec::new(), fragment: true, ..resp };
    while events.peek().is_some() {
        let mut cur = base.clone();
        while let Some(ev) = events.peek() {
            cur.events.push(ev.clone());
            if cur.events.len() > 1 && cur.encoded_len() >= limit {
                cur.events.pop();
                break;
            }
            events.next();
        }
        if events.peek().is_none() {
            cur.fragment = false;
        }
        out.push(cur);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use raftkv_api::mvccpb::KeyValue;

    fn ev(key: &str, value_len: usize) -> Event {
        Event {
            r#type: 0,
            kv: Some(KeyValue {
                key: key.to_string().into(),
                value: vec![b'x'; value_len].into(),
                ..Default::default()
            }),
            prev_kv: None,
        }
    }

    #[test]
    fn fragments_split_at_the_limit_like_etcd() {
        let resp = WatchResponse {
            watch_id: 3,
            events: (0..10).map(|i| ev(&format!("k{i}"), 100)).collect(),
            ..Default::default()
        };
        let parts = fragments(resp.clone(), 350);
        assert!(parts.len() > 1);
        assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
        assert!(!parts[parts.len() - 1].fragment);
        assert!(parts.iter().all(|p| p.encoded_len() < 350 || p.events.len() == 1));
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, resp.events);
        // One huge event goes alone.
        let parts =
            fragments(WatchResponse { events: vec![ev("a", 1000), ev("b", 1)], ..Default::default() }, 100);
        assert_eq!(parts.iter().map(|p| p.events.len()).collect::<Vec<_>>(), [1, 1]);
    }

    fn with_prev(key: &str, value_len: usize, delete: bool) -> Event {
        Event {
            r#type: if delete { EventType::Delete as i32 } else { EventType::Put as i32 },
            prev_kv: Some(KeyValue {
                key: key.to_string().into(),
                value: "old".into(),
                ..Default::default()
            }),
            ..ev(key, value_len)
        }
    }

    fn without_prev(e: &Event) -> Event {
        Event { prev_kv: None, ..e.clone() }
    }

    fn bytes_of(reply: &Reply) -> Vec<u8> {
        let mut out = Vec::new();
        reply.write(&mut out);
        out
    }

    #[test]
    fn composed_replies_are_the_prost_encoding() {
        let events = vec![with_prev("a", 10, false), with_prev("b", 0, true), ev("c", 300)];
        let rev = RevEvents::new(7, events.clone());
        let header = Some(raftkv_api::etcdserverpb::ResponseHeader {
            cluster_id: 1,
            member_id: 2,
            revision: 7,
            raft_term: 3,
        });
        let mut heads = BytesMut::new();
        for prev_kv in [false, true] {
            for id in [0, 5, 1 << 40, -1] {
                let reply =
                    Reply::compose(&mut heads, &encoded_header(header), id, rev.encoded(prev_kv).clone());
                let want = WatchResponse {
                    header,
                    watch_id: id,
                    events: events
                        .iter()
                        .map(|e| if prev_kv { e.clone() } else { without_prev(e) })
                        .collect(),
                    ..Default::default()
                };
                assert_eq!(bytes_of(&reply), want.encode_to_vec());
                assert_eq!(reply.encoded_len(), want.encoded_len());
                assert_eq!(reply.decode().unwrap(), want);
            }
        }
        let plain = WatchResponse { watch_id: -1, created: true, canceled: true, ..Default::default() };
        assert_eq!(Reply::new(&plain).decode().unwrap(), plain);
    }

    #[test]
    fn select_takes_whole_revisions_shared_and_filters_the_rest() {
        let batch = vec![
            Arc::new(RevEvents::new(10, vec![with_prev("a", 1, false), with_prev("b", 1, true)])),
            Arc::new(RevEvents::new(11, vec![with_prev("a", 2, false)])),
            Arc::new(RevEvents::new(12, vec![with_prev("x", 3, false), with_prev("a", 3, true)])),
        ];
        // The events on key "a" and on "b".
        let pos: Vec<Pos> = vec![(0, 0), (0, 1), (1, 0), (2, 1)];
        let events_of = |bytes: Bytes| Reply { head: Bytes::new(), events: bytes }.decode().unwrap().events;
        let all = Options { prev_kv: true, no_put: false, no_delete: false, from: 10 };
        let (bytes, fresh) = select(&batch, &pos, all).unwrap();
        assert!(fresh);
        let want: Vec<Event> = vec![
            batch[0].events[0].clone(),
            batch[0].events[1].clone(),
            batch[1].events[0].clone(),
            batch[2].events[1].clone(),
        ];
        assert_eq!(events_of(bytes), want);
        // One whole revision: its shared encoding, nothing new.
        let (bytes, fresh) = select(&batch, &pos[2..3], all).unwrap();
        assert!(!fresh);
        assert_eq!(bytes.as_ptr(), batch[1].encoded(true).as_ptr());
        // Filters, prev_kv left out, and a first revision.
        let no_delete = Options { prev_kv: false, no_delete: true, from: 11, ..all };
        let (bytes, _) = select(&batch, &pos, no_delete).unwrap();
        assert_eq!(events_of(bytes), vec![without_prev(&batch[1].events[0])]);
        let no_put = Options { no_put: true, ..all };
        let (bytes, _) = select(&batch, &pos, no_put).unwrap();
        assert_eq!(events_of(bytes), vec![batch[0].events[1].clone(), batch[2].events[1].clone()]);
        assert!(select(&batch, &pos, Options { from: 13, ..all }).is_none());
        assert!(select(&batch, &pos[2..3], Options { no_put: true, ..all }).is_none());
    }

    #[test]
    fn ring_keeps_contiguous_revisions_and_bounds_itself() {
        let hub = WatchHub::with_progress_interval(1, PROGRESS_INTERVAL);
        let mut kv = KvStore::new();
        hub.open_stream(&mut kv);
        let put = |kv: &mut KvStore, k: &str| {
            kv.put(raftkv_api::etcdserverpb::PutRequest {
                key: k.to_string().into(),
                value: "v".into(),
                ..Default::default()
            })
            .unwrap();
        };
        assert!(kv.capturing());
        put(&mut kv, "a");
        hub.after_apply(&mut kv);
        assert_eq!(hub.bounds(), (2, 2));
        for i in 0..(RING_REVISIONS + 10) {
            put(&mut kv, &format!("k{i}"));
            hub.after_apply(&mut kv);
        }
        let (first, last) = hub.bounds();
        assert_eq!(last, kv.revision());
        assert_eq!((last - first + 1) as usize, RING_REVISIONS);
        let r = hub.get(last).unwrap();
        assert_eq!((r.rev, r.events.len()), (last, 1));
        assert!(hub.get(first - 1).is_none());
        // No stream: capturing stops and the ring empties.
        hub.streams.fetch_sub(1, Ordering::SeqCst);
        put(&mut kv, "z");
        hub.after_apply(&mut kv);
        assert!(!kv.capturing());
        assert_eq!(hub.bounds(), (kv.revision() + 1, kv.revision()));
    }
}
