//! Durable log of the broker's state in SQLite (`queue.db`).
//!
//! The in-memory state is authoritative for reads; every change is also sent, in order, to one
//! writer thread that applies a batch of changes per transaction (group commit). Requests that
//! need durability wait until the ticket of their change has been committed.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::QueueError;

/// One stored message (a row of `messages`).
#[derive(Debug, Clone)]
pub struct MsgRow {
    pub seq: u64,
    pub queue: Arc<str>,
    /// The message id's UUID (stored as its hyphenated text).
    pub id: [u8; 16],
    pub body: String,
    pub attrs: Option<String>,
    pub sys_attrs: Option<String>,
    pub sent_ms: u64,
    pub visible_at: u64,
    pub recv_count: u32,
    pub first_recv_ms: u64,
    pub nonce: u32,
    pub sender: Arc<str>,
    pub receiver: Option<Arc<str>>,
    pub received_at: u64,
    pub group_id: Option<String>,
    pub dedup_id: Option<String>,
    pub seqnum: u64,
    pub dl_source: Option<String>,
    pub dl_moved_at: u64,
}

#[derive(Debug, Clone)]
pub struct QueueRow {
    pub name: String,
    pub created_s: u64,
    pub modified_s: u64,
    pub attrs: String,
    pub tags: String,
    pub last_purge_ms: u64,
}

#[derive(Debug, Clone)]
pub struct TelemetryRow {
    pub queue: String,
    pub key: String,
    pub second: u64,
    pub data: String,
}

#[derive(Debug)]
pub enum Op {
    /// A message new to the store (its sequence number was never stored before).
    Insert(Box<MsgRow>),
    /// A message's whole row, new or replacing the stored one.
    Put(Box<MsgRow>),
    State { seq: u64, visible_at: u64, recv_count: u32, first_recv_ms: u64, nonce: u32, receiver: Option<std::sync::Arc<str>>, received_at: u64 },
    Del(u64),
    Purge { queue: String, max_seq: u64 },
    Queue(QueueRow),
    DropQueue(String),
    Telemetry(Vec<TelemetryRow>),
    TrimTelemetry(u64),
}

struct Progress {
    /// Highest ticket the writer has dealt with (committed or refused).
    done: u64,
    /// Refused tickets not yet older than `done - KEEP_REFUSED`, with why.
    refused: std::collections::BTreeMap<u64, String>,
    /// A write failed and the in-memory state may hold changes that are not on disk: every
    /// change is refused until the broker reloads its state ([`Store::reload`]).
    broken: bool,
}

const KEEP_REFUSED: u64 = 1 << 20;

pub struct Store {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    /// Commits to fail on purpose (tests of recovery), as a full disk would.
    fail_next: Arc<std::sync::atomic::AtomicU32>,
    next_ticket: Mutex<u64>,
    /// The last ticket issued (what `next_ticket` holds), readable without its lock.
    issued: Arc<std::sync::atomic::AtomicU64>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<std::thread::JoinHandle<()>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Held while the store is open: one broker per data directory.
    dir_lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

pub type Done = tokio::sync::oneshot::Sender<Result<(), String>>;
type Batch = (u64, Vec<Op>, Option<Done>);

enum Msg {
    Batch(Batch),
    /// Reopen the database and read it back (after a failed write).
    Reload(mpsc::Sender<Result<Loaded, String>>),
}

pub struct Loaded {
    pub queues: Vec<QueueRow>,
    pub messages: Vec<MsgRow>,
    pub telemetry: Vec<TelemetryRow>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queues (
  name TEXT PRIMARY KEY, created_s INTEGER NOT NULL, modified_s INTEGER NOT NULL,
  attrs TEXT NOT NULL, tags TEXT NOT NULL, last_purge_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS messages (
  seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
  attrs TEXT, sys_attrs TEXT, sent_ms INTEGER NOT NULL, visible_at INTEGER NOT NULL,
  recv_count INTEGER NOT NULL, first_recv_ms INTEGER NOT NULL, nonce INTEGER NOT NULL,
  sender TEXT NOT NULL, receiver TEXT, received_at INTEGER NOT NULL,
  group_id TEXT, dedup_id TEXT, seqnum INTEGER NOT NULL,
  dl_source TEXT, dl_moved_at INTEGER NOT NULL);
DROP INDEX IF EXISTS messages_queue;
CREATE TABLE IF NOT EXISTS oplog (id INTEGER PRIMARY KEY, ops BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS telemetry (
  queue TEXT NOT NULL, key TEXT NOT NULL, second INTEGER NOT NULL, data TEXT NOT NULL,
  PRIMARY KEY (queue, key, second));
";

fn open_conn(path: &Path) -> Result<Connection, QueueError> {
    let err = |source| QueueError::Store { path: path.to_path_buf(), source };
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
    conn.pragma_update(None, "cache_size", -2_048).map_err(err)?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(err)?;
    conn.pragma_update(None, "journal_size_limit", WAL_RESTART_BYTES as i64).map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    Ok(conn)
}

impl Store {
    pub fn open(dir: &Path) -> Result<(Store, Loaded), QueueError> {
        std::fs::create_dir_all(dir).map_err(|source| QueueError::Io { path: dir.to_path_buf(), source })?;
        let lock_path = dir.join("queue.lock");
        let lock_file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| QueueError::Io { path: lock_path.clone(), source })?;
        let dir_lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| QueueError::Locked { path: dir.to_path_buf() })?;
        let path = dir.join("queue.db");
        let conn = open_conn(&path)?;
        let journal = Journal::open(&conn, dir)?;
        let loaded = load(&conn).map_err(|source| QueueError::Store { path: path.clone(), source })?;
        let (tx, rx) = mpsc::channel::<Msg>();
        let progress = Arc::new((Mutex::new(Progress { done: 0, refused: Default::default(), broken: false }), Condvar::new()));
        let fail_next = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let fail2 = fail_next.clone();
        let p2 = progress.clone();
        // Checkpoints (which sync the database file) run on their own connection and thread,
        // so that commits never wait for them.
        conn.pragma_update(None, "wal_autocheckpoint", 0).map_err(|source| QueueError::Store { path: path.clone(), source })?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ck_conn = open_conn(&path)?;
        let (ck_stop, ck_path) = (stop.clone(), path.clone());
        let checkpointer = std::thread::Builder::new()
            .name("queue-checkpoint".into())
            .spawn(move || {
                let wal = ck_path.with_extension("db-wal");
                let mut n = 0u32;
                while !ck_stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::park_timeout(std::time::Duration::from_millis(100));
                    n += 1;
                    // Under steady writes a passive checkpoint never catches up with the end of
                    // the log, and the log is written from its start again only once one has:
                    // past WAL_RESTART_BYTES the checkpoint waits for a pause between commits
                    // and finishes (the writer waits meanwhile), so the log stays that size
                    // instead of growing by every change for as long as the load lasts.
                    let long = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_RESTART_BYTES);
                    if n.is_multiple_of(10) || long {
                        let res = ck_conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())).and_then(|_| {
                            if long {
                                ck_conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))?;
                            }
                            Ok(())
                        });
                        if let Err(e) = res {
                            tracing::warn!(path = %ck_path.display(), error = %e, "queue store checkpoint failed; will retry");
                        }
                    }
                }
            })
            .map_err(|source| QueueError::Io { path: dir.to_path_buf(), source })?;
        let thread = std::thread::Builder::new()
            .name("queue-store".into())
            .spawn(move || writer(conn, journal, rx, p2, fail2))
            .map_err(|source| QueueError::Io { path: dir.to_path_buf(), source })?;
        Ok((
            Store {
                tx: Mutex::new(Some(tx)),
                fail_next,
                next_ticket: Mutex::new(0),
                issued: Default::default(),
                progress,
                thread: Mutex::new(Some(thread)),
                checkpointer: Mutex::new(Some(checkpointer)),
                stop,
                dir_lock: Mutex::new(Some(dir_lock)),
            },
            loaded,
        ))
    }

    /// Queue changes for the writer; returns the ticket to wait for. Call with the state lock
    /// held so that tickets follow the order of the changes.
    pub fn submit(&self, ops: Vec<Op>) -> u64 {
        self.submit_with(ops, None)
    }

    /// Like `submit`; `done` is answered once the changes are committed (or failed).
    pub fn submit_with(&self, ops: Vec<Op>, done: Option<Done>) -> u64 {
        if ops.is_empty() {
            if let Some(d) = done {
                let _ = d.send(Ok(()));
            }
            return 0;
        }
        let mut t = self.next_ticket.lock().unwrap();
        *t += 1;
        let ticket = *t;
        self.issued.store(ticket, std::sync::atomic::Ordering::SeqCst);
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(Msg::Batch((ticket, ops, done)));
        }
        ticket
    }

    /// The last ticket issued; with the state lock held, the next change submitted gets this
    /// plus one.
    pub fn issued(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.issued.clone()
    }

    /// Call `f` with the highest ticket dealt with and whether a ticket up to it was refused.
    pub fn settled<R>(&self, f: impl FnOnce(u64, &dyn Fn(u64) -> bool) -> R) -> R {
        let p = self.progress.0.lock().unwrap();
        f(p.done, &|t| p.refused.contains_key(&t))
    }

    /// Whether a write failed since the last successful [`Store::reload`].
    pub fn is_broken(&self) -> bool {
        self.progress.0.lock().unwrap().broken
    }

    /// After a failed write: once every change submitted before has been dealt with, reopen
    /// the database and read back what it holds, so that the caller can replace its state
    /// with it (call with the state lock held, so that no change is submitted meanwhile).
    /// Changes are accepted again once this succeeds.
    pub fn reload(&self) -> Result<Loaded, String> {
        let (tx, rx) = mpsc::channel();
        match self.tx.lock().unwrap().as_ref() {
            Some(w) => w.send(Msg::Reload(tx)).map_err(|_| "the queue store's writer stopped".to_string())?,
            None => return Err("the queue store is closed".into()),
        }
        rx.recv().map_err(|_| "the queue store's writer stopped".to_string())?
    }

    /// Make the next `n` commits fail as a full disk would (for tests of recovery).
    pub fn fail_next_commits(&self, n: u32) {
        self.fail_next.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Wait (blocking) until `ticket` is committed.
    pub fn wait_blocking(&self, ticket: u64) -> Result<(), String> {
        if ticket == 0 {
            return Ok(());
        }
        let (lock, cv) = &*self.progress;
        let mut p = lock.lock().unwrap();
        loop {
            if p.done >= ticket {
                return match p.refused.get(&ticket) {
                    Some(why) => Err(why.clone()),
                    None => Ok(()),
                };
            }
            p = cv.wait(p).unwrap();
        }
    }

    /// Flush everything and stop the writer thread.
    pub fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.checkpointer.lock().unwrap().take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.tx.lock().unwrap().take();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
        self.dir_lock.lock().unwrap().take();
    }
}

/// A stored message id's UUID (a fresh one for text that is none, which no version wrote).
fn parse_id(text: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(text).map(|u| *u.as_bytes()).unwrap_or_else(|_| rand::random())
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut queues = Vec::new();
    let mut st = conn.prepare("SELECT name, created_s, modified_s, attrs, tags, last_purge_ms FROM queues")?;
    let rows = st.query_map([], |r| {
        Ok(QueueRow {
            name: r.get(0)?,
            created_s: r.get::<_, i64>(1)? as u64,
            modified_s: r.get::<_, i64>(2)? as u64,
            attrs: r.get(3)?,
            tags: r.get(4)?,
            last_purge_ms: r.get::<_, i64>(5)? as u64,
        })
    })?;
    for q in rows {
        queues.push(q?);
    }
    let mut messages = Vec::new();
    let mut st = conn.prepare(
        "SELECT seq, queue, id, body, attrs, sys_attrs, sent_ms, visible_at, recv_count, first_recv_ms, nonce,
                sender, receiver, received_at, group_id, dedup_id, seqnum, dl_source, dl_moved_at
         FROM messages ORDER BY seq",
    )?;
    let rows = st.query_map([], |r| {
        Ok(MsgRow {
            seq: r.get::<_, i64>(0)? as u64,
            queue: Arc::from(r.get::<_, String>(1)?),
            id: parse_id(&r.get::<_, String>(2)?),
            body: r.get(3)?,
            attrs: r.get(4)?,
            sys_attrs: r.get(5)?,
            sent_ms: r.get::<_, i64>(6)? as u64,
            visible_at: r.get::<_, i64>(7)? as u64,
            recv_count: r.get::<_, i64>(8)? as u32,
            first_recv_ms: r.get::<_, i64>(9)? as u64,
            nonce: r.get::<_, i64>(10)? as u32,
            sender: Arc::from(r.get::<_, String>(11)?),
            receiver: r.get::<_, Option<String>>(12)?.map(Arc::from),
            received_at: r.get::<_, i64>(13)? as u64,
            group_id: r.get(14)?,
            dedup_id: r.get(15)?,
            seqnum: r.get::<_, i64>(16)? as u64,
            dl_source: r.get(17)?,
            dl_moved_at: r.get::<_, i64>(18)? as u64,
        })
    })?;
    for m in rows {
        messages.push(m?);
    }
    let mut telemetry = Vec::new();
    let mut st = conn.prepare("SELECT queue, key, second, data FROM telemetry ORDER BY second")?;
    let rows = st.query_map([], |r| {
        Ok(TelemetryRow { queue: r.get(0)?, key: r.get(1)?, second: r.get::<_, i64>(2)? as u64, data: r.get(3)? })
    })?;
    for t in rows {
        telemetry.push(t?);
    }
    let _ = conn.query_row("SELECT 1", [], |_| Ok(())).optional()?;
    Ok(Loaded { queues, messages, telemetry })
}

/// The statements the writer runs for nearly every change, prepared once per connection (the
/// rest go through the connection's statement cache).
struct Stmts<'c> {
    begin: rusqlite::Statement<'c>,
    commit: rusqlite::Statement<'c>,
    put: rusqlite::Statement<'c>,
    state: rusqlite::Statement<'c>,
    del: rusqlite::Statement<'c>,
    folded: rusqlite::Statement<'c>,
}

impl<'c> Stmts<'c> {
    fn prepare(conn: &'c Connection) -> rusqlite::Result<Stmts<'c>> {
        Ok(Stmts {
            begin: conn.prepare("BEGIN IMMEDIATE")?,
            commit: conn.prepare("COMMIT")?,
            put: conn.prepare(
                "INSERT OR REPLACE INTO messages (seq, queue, id, body, attrs, sys_attrs, sent_ms, visible_at, recv_count,
                   first_recv_ms, nonce, sender, receiver, received_at, group_id, dedup_id, seqnum, dl_source, dl_moved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?,
            state: conn.prepare(
                "UPDATE messages SET visible_at = ?2, recv_count = ?3, first_recv_ms = ?4, nonce = ?5, receiver = ?6,
                   received_at = ?7 WHERE seq = ?1",
            )?,
            del: conn.prepare("DELETE FROM messages WHERE seq = ?1")?,
            folded: conn.prepare("INSERT OR REPLACE INTO meta (key, value) VALUES ('folded_log', ?1)")?,
        })
    }
}

fn apply(conn: &Connection, s: &mut Stmts<'_>, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Insert(m) | Op::Put(m) => {
            s.put.execute(params![
                m.seq as i64,
                &*m.queue,
                crate::digest::message_id(m.id).as_str(),
                m.body,
                m.attrs,
                m.sys_attrs,
                m.sent_ms as i64,
                m.visible_at as i64,
                m.recv_count as i64,
                m.first_recv_ms as i64,
                m.nonce as i64,
                &*m.sender,
                m.receiver.as_deref(),
                m.received_at as i64,
                m.group_id,
                m.dedup_id,
                m.seqnum as i64,
                m.dl_source,
                m.dl_moved_at as i64
            ])?;
        }
        Op::State { seq, visible_at, recv_count, first_recv_ms, nonce, receiver, received_at } => {
            s.state.execute(params![
                *seq as i64,
                *visible_at as i64,
                *recv_count as i64,
                *first_recv_ms as i64,
                *nonce as i64,
                receiver.as_deref(),
                *received_at as i64
            ])?;
        }
        Op::Del(seq) => {
            s.del.execute(params![*seq as i64])?;
        }
        Op::Purge { queue, max_seq } => {
            conn.prepare_cached("DELETE FROM messages WHERE queue = ?1 AND seq <= ?2")?
                .execute(params![queue, *max_seq as i64])?;
        }
        Op::Queue(q) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO queues (name, created_s, modified_s, attrs, tags, last_purge_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![q.name, q.created_s as i64, q.modified_s as i64, q.attrs, q.tags, q.last_purge_ms as i64])?;
        }
        Op::DropQueue(name) => {
            conn.prepare_cached("DELETE FROM queues WHERE name = ?1")?.execute(params![name])?;
            conn.prepare_cached("DELETE FROM messages WHERE queue = ?1")?.execute(params![name])?;
            conn.prepare_cached("DELETE FROM telemetry WHERE queue = ?1")?.execute(params![name])?;
        }
        Op::Telemetry(rows) => {
            for t in rows {
                conn.prepare_cached("INSERT OR REPLACE INTO telemetry (queue, key, second, data) VALUES (?1, ?2, ?3, ?4)")?
                    .execute(params![t.queue, t.key, t.second as i64, t.data])?;
            }
        }
        Op::TrimTelemetry(before) => {
            conn.prepare_cached("DELETE FROM telemetry WHERE second < ?1")?.execute(params![*before as i64])?;
        }
    }
    Ok(())
}

/// Changes with the same net effect as `ops` applied in order, and fewer statements: see
/// [`Folder`].
fn coalesce(ops: impl IntoIterator<Item = Op>) -> Vec<Op> {
    let mut f = Folder::default();
    for op in ops {
        f.push(op);
    }
    f.plan.into_iter().flatten().collect()
}

/// Changes folded as they come, keeping the net effect of applying them in order with fewer
/// statements: a message's later state is folded into its row written earlier, a state change
/// superseded by a later one is dropped, and so are the writes of a message deleted later (its
/// delete stays, as the row may have been stored before, unless the row was inserted among
/// these changes). A purge or a dropped queue ends the folding, so that nothing moves across
/// them.
#[derive(Default)]
struct Folder {
    plan: Vec<Option<Op>>,
    /// seq -> index in `plan` of the message's latest write
    last: foldhash::HashMap<u64, usize>,
}

impl Folder {
    fn push(&mut self, op: Op) {
        let Folder { plan, last } = self;
        match op {
            Op::Insert(m) => {
                if let Some(i) = last.insert(m.seq, plan.len()) {
                    plan[i] = None;
                }
                plan.push(Some(Op::Insert(m)));
            }
            Op::Put(m) => {
                // a row written whole: what was written to it before no longer counts (INSERT OR
                // REPLACE does not depend on it), but a row inserted here is still new
                let new = match last.insert(m.seq, plan.len()) {
                    Some(i) => matches!(plan[i].take(), Some(Op::Insert(_))),
                    None => false,
                };
                plan.push(Some(if new { Op::Insert(m) } else { Op::Put(m) }));
            }
            Op::State { seq, visible_at, recv_count, first_recv_ms, nonce, receiver, received_at } => {
                if let Some(&i) = last.get(&seq) {
                    match &mut plan[i] {
                        Some(Op::Insert(m) | Op::Put(m)) => {
                            m.visible_at = visible_at;
                            m.recv_count = recv_count;
                            m.first_recv_ms = first_recv_ms;
                            m.nonce = nonce;
                            m.receiver = receiver;
                            m.received_at = received_at;
                            return;
                        }
                        // updates nothing: the row is gone
                        Some(Op::Del(_)) => return,
                        slot => *slot = None,
                    }
                }
                last.insert(seq, plan.len());
                plan.push(Some(Op::State { seq, visible_at, recv_count, first_recv_ms, nonce, receiver, received_at }));
            }
            Op::Del(seq) => {
                let inserted = match last.insert(seq, plan.len()) {
                    Some(i) => matches!(plan[i].take(), Some(Op::Insert(_))),
                    None => false,
                };
                if inserted {
                    // never stored, nothing to delete (and a later state change updates nothing)
                    last.remove(&seq);
                } else {
                    plan.push(Some(Op::Del(seq)));
                }
            }
            op @ (Op::Purge { .. } | Op::DropQueue(_)) => {
                last.clear();
                plan.push(Some(op));
            }
            op => plan.push(Some(op)),
        }
    }

    fn ops(&self) -> impl Iterator<Item = &Op> {
        self.plan.iter().flatten()
    }

    fn is_empty(&self) -> bool {
        self.plan.is_empty()
    }

    fn clear(&mut self) {
        self.plan.clear();
        self.last.clear();
    }
}

/// Whether an op changes only one message's row (and can wait in the operation log).
fn logged(op: &Op) -> bool {
    matches!(op, Op::Insert(_) | Op::Put(_) | Op::State { .. } | Op::Del(_))
}

/// How a message's changes are written in the operation log (see [`Journal`]).
mod oplog {
    use super::{MsgRow, Op};

    fn u64_(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    fn str_(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    fn opt(out: &mut Vec<u8>, v: Option<&str>) {
        match v {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                str_(out, v);
            }
        }
    }

    /// Append `op` (one [`super::logged`]) to `out`.
    pub(super) fn encode(op: &Op, out: &mut Vec<u8>) {
        match op {
            Op::Insert(m) | Op::Put(m) => {
                out.push(if matches!(op, Op::Insert(_)) { 1 } else { 2 });
                u64_(out, m.seq);
                str_(out, &m.queue);
                str_(out, crate::digest::message_id(m.id).as_str());
                str_(out, &m.body);
                opt(out, m.attrs.as_deref());
                opt(out, m.sys_attrs.as_deref());
                u64_(out, m.sent_ms);
                u64_(out, m.visible_at);
                u64_(out, m.recv_count as u64);
                u64_(out, m.first_recv_ms);
                u64_(out, m.nonce as u64);
                str_(out, &m.sender);
                opt(out, m.receiver.as_deref());
                u64_(out, m.received_at);
                opt(out, m.group_id.as_deref());
                opt(out, m.dedup_id.as_deref());
                u64_(out, m.seqnum);
                opt(out, m.dl_source.as_deref());
                u64_(out, m.dl_moved_at);
            }
            Op::State { seq, visible_at, recv_count, first_recv_ms, nonce, receiver, received_at } => {
                out.push(3);
                u64_(out, *seq);
                u64_(out, *visible_at);
                u64_(out, *recv_count as u64);
                u64_(out, *first_recv_ms);
                u64_(out, *nonce as u64);
                opt(out, receiver.as_deref());
                u64_(out, *received_at);
            }
            Op::Del(seq) => {
                out.push(4);
                u64_(out, *seq);
            }
            _ => unreachable!("only a message's changes are logged"),
        }
    }

    struct Reader<'a>(&'a [u8]);

    impl Reader<'_> {
        fn take(&mut self, n: usize) -> Result<&[u8], String> {
            if self.0.len() < n {
                return Err("the operation log is cut short".into());
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u8_(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        fn u64_(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
        }
        fn u32_(&mut self) -> Result<u32, String> {
            u32::try_from(self.u64_()?).map_err(|_| "the operation log holds a count out of range".to_string())
        }
        fn str_(&mut self) -> Result<String, String> {
            let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
            String::from_utf8(self.take(n)?.to_vec()).map_err(|_| "the operation log holds text that is not UTF-8".to_string())
        }
        fn opt(&mut self) -> Result<Option<String>, String> {
            match self.u8_()? {
                0 => Ok(None),
                1 => self.str_().map(Some),
                t => Err(format!("the operation log holds an unknown option tag {t}")),
            }
        }
    }

    impl Reader<'_> {
        fn skip_str(&mut self) -> Result<(), String> {
            let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
            self.take(n).map(|_| ())
        }
        fn skip_opt(&mut self) -> Result<(), String> {
            match self.u8_()? {
                0 => Ok(()),
                1 => self.skip_str(),
                t => Err(format!("the operation log holds an unknown option tag {t}")),
            }
        }
        /// Past the rest of a change whose tag and sequence number were read.
        fn skip_rest(&mut self, tag: u8) -> Result<(), String> {
            match tag {
                1 | 2 => {
                    for _ in 0..3 {
                        self.skip_str()?;
                    }
                    self.skip_opt()?;
                    self.skip_opt()?;
                    self.take(5 * 8)?;
                    self.skip_str()?;
                    self.skip_opt()?;
                    self.take(8)?;
                    self.skip_opt()?;
                    self.skip_opt()?;
                    self.take(8)?;
                    self.skip_opt()?;
                    self.take(8).map(|_| ())
                }
                3 => {
                    self.take(4 * 8)?;
                    self.skip_opt()?;
                    self.take(8).map(|_| ())
                }
                4 => Ok(()),
                t => Err(format!("the operation log holds an unknown change tag {t}")),
            }
        }
    }

    /// Each change of one log row, in order: its tag (1 insert, 2 put, 3 state, 4 delete) and
    /// sequence number, without reading the rest.
    pub(super) fn scan(mut data: &[u8], mut f: impl FnMut(u8, u64)) -> Result<(), String> {
        while !data.is_empty() {
            let mut r = Reader(data);
            let (tag, seq) = (r.u8_()?, r.u64_()?);
            r.skip_rest(tag)?;
            f(tag, seq);
            data = r.0;
        }
        Ok(())
    }

    /// The changes of one log row, in order, but for those of the messages `skip` names.
    pub(super) fn decode(mut data: &[u8], out: &mut Vec<Op>, skip: impl Fn(u64) -> bool) -> Result<(), String> {
        while !data.is_empty() {
            let mut r = Reader(data);
            let tag = r.u8_()?;
            let seq = r.u64_()?;
            if skip(seq) {
                r.skip_rest(tag)?;
                data = r.0;
                continue;
            }
            let op = match tag {
                tag @ (1 | 2) => {
                    let m = Box::new(MsgRow {
                        seq,
                        queue: std::sync::Arc::from(r.str_()?),
                        id: super::parse_id(&r.str_()?),
                        body: r.str_()?,
                        attrs: r.opt()?,
                        sys_attrs: r.opt()?,
                        sent_ms: r.u64_()?,
                        visible_at: r.u64_()?,
                        recv_count: r.u32_()?,
                        first_recv_ms: r.u64_()?,
                        nonce: r.u32_()?,
                        sender: std::sync::Arc::from(r.str_()?),
                        receiver: r.opt()?.map(std::sync::Arc::from),
                        received_at: r.u64_()?,
                        group_id: r.opt()?,
                        dedup_id: r.opt()?,
                        seqnum: r.u64_()?,
                        dl_source: r.opt()?,
                        dl_moved_at: r.u64_()?,
                    });
                    if tag == 1 {
                        Op::Insert(m)
                    } else {
                        Op::Put(m)
                    }
                }
                3 => Op::State {
                    seq,
                    visible_at: r.u64_()?,
                    recv_count: r.u32_()?,
                    first_recv_ms: r.u64_()?,
                    nonce: r.u32_()?,
                    receiver: r.opt()?.map(|s| std::sync::Arc::from(s.as_str())),
                    received_at: r.u64_()?,
                },
                4 => Op::Del(seq),
                t => return Err(format!("the operation log holds an unknown change tag {t}")),
            };
            out.push(op);
            data = r.0;
        }
        Ok(())
    }
}

/// Apply the net effect of log payloads (in order) within the caller's transaction. Messages
/// inserted and deleted within them, with nothing after the delete, leave no trace (as
/// `coalesce` would find), so their changes are not even decoded.
fn replay(conn: &Connection, s: &mut Stmts<'_>, payloads: &[&[u8]]) -> Result<(), String> {
    let mut state: foldhash::HashMap<u64, bool> = foldhash::HashMapExt::new(); // seq -> gone
    for b in payloads {
        oplog::scan(b, |tag, seq| match tag {
            1 => {
                state.insert(seq, false);
            }
            4 => {
                if let Some(gone) = state.get_mut(&seq) {
                    *gone = true;
                }
            }
            _ => {
                // written again after its delete: read it all
                if state.get(&seq) == Some(&true) {
                    state.remove(&seq);
                }
            }
        })?;
    }
    let mut ops = Vec::new();
    for b in payloads {
        oplog::decode(b, &mut ops, |seq| state.get(&seq) == Some(&true))?;
    }
    for op in &coalesce(ops) {
        apply(conn, s, op).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Frames appended since the last fold, bytes of the current log file, or time since the last
/// fold, that call for the next one.
const FOLD_FRAMES: u64 = 1024;
const FOLD_BYTES: u64 = 16 << 20;
const FOLD_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A log file's first bytes: this tag and its generation.
const LOG_MAGIC: &[u8; 8] = b"cmoplog1";
const LOG_HEADER: u64 = 16;
/// A frame's length (8 bytes) and CRC-32 of what follows (4).
const FRAME_HEADER: usize = 12;

fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("queue.oplog.{generation}"))
}

/// The generations of the log files in `dir`, ascending.
fn log_generations(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut gens = Vec::new();
    for e in std::fs::read_dir(dir)? {
        if let Some(g) = e?.file_name().to_str().and_then(|n| n.strip_prefix("queue.oplog.")).and_then(|g| g.parse().ok()) {
            gens.push(g);
        }
    }
    gens.sort_unstable();
    Ok(gens)
}

/// The payloads of a log file's whole frames, up to the first one cut short or failing its
/// checksum: a write that a full disk or a power loss interrupted, never acknowledged, and
/// nothing was appended after it.
fn frames(file: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = file.get(LOG_HEADER as usize..).unwrap_or_default();
    while rest.len() >= FRAME_HEADER {
        let len = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(FRAME_HEADER)) else { break };
        let Some(payload) = rest.get(FRAME_HEADER..end) else { break };
        if crc32fast::hash(payload) != crc {
            break;
        }
        out.push(payload);
        rest = &rest[end..];
    }
    out
}

/// Create the log file of `generation` (mode 0600), its header written.
fn start_log(dir: &Path, generation: u64) -> Result<std::fs::File, QueueError> {
    use std::io::Write as _;
    let path = log_path(dir, generation);
    let io = |source| QueueError::Io { path: path.clone(), source };
    // (message bodies: for its owner only, as `queue.db`)
    let mut f = std::os::unix::fs::OpenOptionsExt::mode(std::fs::OpenOptions::new().write(true).create(true).truncate(true), 0o600).open(&path).map_err(io)?;
    let mut head = LOG_MAGIC.to_vec();
    head.extend_from_slice(&generation.to_le_bytes());
    f.write_all(&head).map_err(io)?;
    Ok(f)
}

/// Whether a commit is to fail on purpose (see [`Store::fail_next_commits`]).
fn injected(fail_next: &std::sync::atomic::AtomicU32) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    fail_next.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok()
}

fn injected_failure() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), Some("database or disk is full (injected)".into()))
}

/// The operation log: each group commit appends its messages' changes (folded per message) as
/// one frame of a plain file, `queue.oplog.<generation>` next to `queue.db` — one write, no
/// database page touched. The same changes stay in memory, folded as they come; every 250 ms
/// (and before any other kind of change) they are applied to `messages` in one transaction,
/// which also records the file's generation as folded (`meta.folded_log`), and appends go on
/// in the next file. Most messages are sent, received and deleted between two folds, and then
/// cost nothing in the database. Opening the store replays the files not yet folded.
struct Journal {
    dir: PathBuf,
    db: PathBuf,
    generation: u64,
    file: std::fs::File,
    /// Bytes of the current file: where the next frame goes.
    len: u64,
    /// The changes appended since the last fold.
    pending: Folder,
    frames: u64,
    folded_at: std::time::Instant,
    buf: Vec<u8>,
}

impl Journal {
    /// Fold what earlier runs left in the log (and in the `oplog` table, where versions before
    /// the log files kept it) into `messages`, remove the spent files and start the next one.
    fn open(conn: &Connection, dir: &Path) -> Result<Journal, QueueError> {
        let db = dir.join("queue.db");
        let sql = |source| QueueError::Store { path: db.clone(), source };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| QueueError::Io { path, source }
        };
        let folded = conn
            .query_row("SELECT value FROM meta WHERE key = 'folded_log'", [], |r| r.get::<_, i64>(0))
            .optional()
            .map_err(sql)?
            .unwrap_or(0) as u64;
        let gens = log_generations(dir).map_err(io(dir))?;
        let mut files = Vec::new();
        for &g in gens.iter().filter(|&&g| g > folded) {
            let path = log_path(dir, g);
            let data = std::fs::read(&path).map_err(io(&path))?;
            // (shorter than its header: created, and the process stopped before it was written)
            if data.len() >= LOG_MAGIC.len() && &data[..LOG_MAGIC.len()] != LOG_MAGIC {
                return Err(QueueError::Corrupt {
                    path,
                    message: "this file is not an operation log of the queue (its header is wrong); move it out of the data directory".into(),
                });
            }
            files.push(data);
        }
        let newest = gens.last().copied().unwrap_or(0).max(folded);
        let legacy: Vec<Vec<u8>> = conn
            .prepare("SELECT ops FROM oplog ORDER BY id")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(sql)?;
        let mut payloads: Vec<&[u8]> = legacy.iter().map(Vec::as_slice).collect();
        for f in &files {
            payloads.extend(frames(f));
        }
        let mut s = Stmts::prepare(conn).map_err(sql)?;
        s.begin.execute([]).map_err(sql)?;
        let res = replay(conn, &mut s, &payloads)
            .map_err(|message| QueueError::Corrupt { path: db.clone(), message })
            .and_then(|_| conn.execute("DELETE FROM oplog", []).map_err(sql))
            .and_then(|_| s.folded.execute(params![newest as i64]).map_err(sql))
            .and_then(|_| s.commit.execute([]).map_err(sql));
        if let Err(e) = res {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            return Err(e);
        }
        drop(s);
        for g in gens {
            let path = log_path(dir, g);
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
        let generation = newest + 1;
        Ok(Journal {
            dir: dir.to_path_buf(),
            db,
            generation,
            file: start_log(dir, generation)?,
            len: LOG_HEADER,
            pending: Folder::default(),
            frames: 0,
            folded_at: std::time::Instant::now(),
            buf: Vec::with_capacity(64 << 10),
        })
    }

    /// Append the changes of one group (each one [`logged`]) as one frame; they stay pending
    /// until the next fold.
    fn append(&mut self, ops: Vec<Op>) -> Result<(), QueueError> {
        use std::io::{Seek as _, Write as _};
        self.buf.clear();
        self.buf.resize(FRAME_HEADER, 0);
        for op in &ops {
            oplog::encode(op, &mut self.buf);
        }
        let crc = crc32fast::hash(&self.buf[FRAME_HEADER..]);
        let len = (self.buf.len() - FRAME_HEADER) as u64;
        self.buf[..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        if let Err(source) = self.file.write_all(&self.buf) {
            // Take back what part of the frame was written (reading the file, a torn frame
            // ends it anyway): the changes are refused, so they must not come back.
            let _ = self.file.set_len(self.len).and_then(|_| self.file.seek(std::io::SeekFrom::Start(self.len)));
            return Err(QueueError::Io { path: log_path(&self.dir, self.generation), source });
        }
        self.len += self.buf.len() as u64;
        self.frames += 1;
        if self.buf.capacity() > 4 << 20 {
            // (a group of large messages: do not keep its buffer)
            self.buf = Vec::with_capacity(64 << 10);
        }
        for op in ops {
            self.pending.push(op);
        }
        Ok(())
    }

    /// Whether the pending changes are to be folded now.
    fn due(&self) -> bool {
        !self.pending.is_empty() && (self.frames >= FOLD_FRAMES || self.len >= FOLD_BYTES || self.folded_at.elapsed() >= FOLD_EVERY)
    }

    /// Apply the pending changes and then `then` to the database in one transaction, which
    /// records the current file as folded; appends go on in the next file.
    fn fold(&mut self, conn: &Connection, s: &mut Stmts<'_>, then: &[Op], fail_next: &std::sync::atomic::AtomicU32) -> Result<(), QueueError> {
        let sql = |source| QueueError::Store { path: self.db.clone(), source };
        self.folded_at = std::time::Instant::now();
        // The next file first: once the database names this one folded, nothing may be
        // appended to it.
        let next = self.generation + 1;
        let file = start_log(&self.dir, next)?;
        let res = s.begin.execute([]).map_err(sql).and_then(|_| {
            for op in self.pending.ops().chain(then) {
                apply(conn, s, op).map_err(sql)?;
            }
            s.folded.execute(params![self.generation as i64]).map_err(sql)?;
            if injected(fail_next) {
                // rolled back below, as a failed commit leaves it
                return Err(sql(injected_failure()));
            }
            s.commit.execute([]).map_err(sql)
        });
        if let Err(e) = res {
            if !conn.is_autocommit() {
                if let Err(e) = conn.execute_batch("ROLLBACK") {
                    tracing::warn!(error = %e, "queue store: rolling back a failed write failed");
                }
            }
            let _ = std::fs::remove_file(log_path(&self.dir, next));
            return Err(e);
        }
        let spent = std::mem::replace(&mut self.generation, next);
        (self.file, self.len, self.frames) = (file, LOG_HEADER, 0);
        self.pending.clear();
        if let Err(e) = std::fs::remove_file(log_path(&self.dir, spent)) {
            // (it is removed when the store opens next)
            tracing::warn!(path = %log_path(&self.dir, spent).display(), error = %e, "queue store: removing a folded log file failed");
        }
        Ok(())
    }

    /// Commit one group of changes: the messages' changes appended to the log, or, when the
    /// group holds any other kind (a queue, telemetry, a purge), everything folded into the
    /// database in one transaction with them.
    fn commit(&mut self, conn: &Connection, s: &mut Stmts<'_>, batch: &mut [Batch], fail_next: &std::sync::atomic::AtomicU32) -> Result<(), QueueError> {
        let ops = coalesce(batch.iter_mut().flat_map(|b| std::mem::take(&mut b.1)));
        if !ops.iter().all(logged) {
            return self.fold(conn, s, &ops, fail_next);
        }
        if ops.is_empty() {
            return Ok(());
        }
        if injected(fail_next) {
            return Err(QueueError::Store { path: self.db.clone(), source: injected_failure() });
        }
        self.append(ops)
    }
}

/// The size of the write-ahead log past which a checkpoint finishes it, so that it is written
/// from its start again (and truncated to that size, if it grew larger meanwhile).
const WAL_RESTART_BYTES: u64 = 16 << 20;

/// How long the writer waits for more requests before a commit while they come in concurrently
/// (a lone request is committed at once).
const GROUP_WINDOW: std::time::Duration = std::time::Duration::from_micros(500);

/// Why [`serve`] returned.
enum Stop {
    /// The store was closed.
    Closed,
    /// Reopen the database and read it back, answering here.
    Reload(mpsc::Sender<Result<Loaded, String>>),
}

fn writer(
    mut conn: Connection,
    mut journal: Journal,
    rx: mpsc::Receiver<Msg>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    fail_next: Arc<std::sync::atomic::AtomicU32>,
) {
    let path = journal.db.clone();
    loop {
        match serve(&conn, &mut journal, &rx, &progress, &fail_next) {
            Stop::Closed => break,
            Stop::Reload(reply) => {
                let res = open_conn(&path).and_then(|c| {
                    let j = Journal::open(&c, &journal.dir)?;
                    let loaded = load(&c).map_err(|source| QueueError::Store { path: path.clone(), source })?;
                    c.pragma_update(None, "wal_autocheckpoint", 0).map_err(|source| QueueError::Store { path: path.clone(), source })?;
                    Ok((c, j, loaded))
                });
                let res = res.map_err(|e| e.to_string()).map(|(c, j, loaded)| {
                    (conn, journal) = (c, j);
                    progress.0.lock().unwrap().broken = false;
                    tracing::info!(path = %path.display(), "queue store reopened; accepting changes again");
                    loaded
                });
                let _ = reply.send(res);
            }
        }
    }
    let res = Stmts::prepare(&conn)
        .map_err(|source| QueueError::Store { path: path.clone(), source })
        .and_then(|mut s| journal.fold(&conn, &mut s, &[], &std::sync::atomic::AtomicU32::new(0)));
    if let Err(e) = res {
        tracing::warn!(error = %e, "queue store: folding the operation log at close failed; it is folded when the store opens");
    }
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

/// Commit the changes sent, a group at a time, until a reload is asked for or the store closes.
fn serve(
    conn: &Connection,
    journal: &mut Journal,
    rx: &mpsc::Receiver<Msg>,
    progress: &(Mutex<Progress>, Condvar),
    fail_next: &std::sync::atomic::AtomicU32,
) -> Stop {
    let (lock, cv) = progress;
    let path = journal.db.clone();
    let mut stmts = Stmts::prepare(conn).map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "queue store statements could not be prepared; refusing changes until the store is reopened");
        format!("the queue store {} could not write: {e}", path.display())
    });
    if stmts.is_err() {
        lock.lock().unwrap().broken = true;
    }
    let mut pending: Option<Msg> = None;
    // whether the last group held more than one request
    let mut busy = false;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return Stop::Closed,
            },
        };
        let first = match first {
            Msg::Batch(b) => b,
            Msg::Reload(reply) => return Stop::Reload(reply),
        };
        if busy {
            // Requests are coming in concurrently: give those on their way a moment to join
            // this group, so that one commit serves more of them.
            std::thread::sleep(GROUP_WINDOW);
        }
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(Msg::Batch(b)) => batch.push(b),
                Ok(other) => {
                    pending = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        let last = batch.last().map(|b| b.0).unwrap_or(0);
        let broken = lock.lock().unwrap().broken;
        let res: Result<(), String> = match &mut stmts {
            Err(why) => Err(why.clone()),
            Ok(_) if broken => Err(format!(
                "the queue store {} failed a write earlier and is being reopened; try again shortly",
                path.display()
            )),
            Ok(s) => journal.commit(conn, s, &mut batch, fail_next).map_err(|e| {
                tracing::error!(error = %e, "queue store write failed; refusing changes until the store is reopened");
                e.to_string()
            }),
        };
        {
            let mut p = lock.lock().unwrap();
            if let Err(why) = &res {
                p.broken = true;
                for (t, _, _) in &batch {
                    p.refused.insert(*t, why.clone());
                }
            }
            p.done = last;
            let keep_from = last.saturating_sub(KEEP_REFUSED);
            while p.refused.first_key_value().is_some_and(|(t, _)| *t < keep_from) {
                p.refused.pop_first();
            }
        }
        cv.notify_all();
        for (_, _, done) in batch {
            if let Some(d) = done {
                let _ = d.send(res.clone());
            }
        }
        if res.is_ok() && journal.due() {
            if let Ok(s) = &mut stmts {
                // (after the answers: nobody waits for it)
                if let Err(e) = journal.fold(conn, s, &[], &std::sync::atomic::AtomicU32::new(0)) {
                    // the changes stay in the log, and are folded later or when the store opens
                    tracing::warn!(error = %e, "queue store: folding the operation log failed; will retry");
                }
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: u64, queue: &str, body: &str) -> MsgRow {
        MsgRow {
            seq,
            queue: Arc::from(queue),
            id: (seq as u128).to_be_bytes(),
            body: body.into(),
            attrs: None,
            sys_attrs: None,
            sent_ms: seq,
            visible_at: 0,
            recv_count: 0,
            first_recv_ms: 0,
            nonce: 0,
            sender: Arc::from("AKID"),
            receiver: None,
            received_at: 0,
            group_id: None,
            dedup_id: None,
            seqnum: 0,
            dl_source: None,
            dl_moved_at: 0,
        }
    }

    fn random_op(r: &mut impl rand::Rng, step: u64, fresh: &mut Vec<u64>) -> Op {
        // a few long-stored messages, and messages inserted during the test
        let seq = if !fresh.is_empty() && r.random_bool(0.5) { fresh[r.random_range(0..fresh.len())] } else { r.random_range(1..8u64) };
        let queue = if r.random_bool(0.5) { "a" } else { "b" };
        match r.random_range(0..24) {
            0..=5 => Op::Put(Box::new(row(seq, queue, &format!("body {step}")))),
            6..=11 => Op::State {
                seq,
                visible_at: step,
                recv_count: step as u32,
                first_recv_ms: step + 1,
                nonce: r.random(),
                receiver: r.random_bool(0.5).then(|| Arc::from(format!("K{step}").as_str())),
                received_at: step + 2,
            },
            12..=16 => Op::Del(seq),
            17 => Op::Purge { queue: queue.into(), max_seq: r.random_range(0..8) },
            18 => Op::DropQueue(queue.into()),
            19 => Op::Queue(QueueRow { name: queue.into(), created_s: step, modified_s: step, attrs: "{}".into(), tags: "{}".into(), last_purge_ms: 0 }),
            _ => {
                let seq = 1000 + step;
                fresh.push(seq);
                Op::Insert(Box::new(row(seq, queue, &format!("new {step}"))))
            }
        }
    }

    fn dump(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for sql in ["SELECT * FROM messages ORDER BY seq", "SELECT * FROM queues ORDER BY name"] {
            let mut st = conn.prepare(sql).unwrap();
            let n = st.column_count();
            let mut rows = st.query([]).unwrap();
            while let Some(r) = rows.next().unwrap() {
                out.push((0..n).map(|i| format!("{:?}", r.get_ref(i).unwrap())).collect::<Vec<_>>().join("|"));
            }
        }
        out
    }

    /// Folding groups of changes, in memory or replayed from the log files when the store
    /// opens, leaves the database as applying them one by one does.
    #[test]
    fn folded_groups_have_the_same_effect() {
        use rand::{Rng, SeedableRng};
        let mut r = rand::rngs::StdRng::seed_from_u64(7);
        let dir = tempfile::tempdir().unwrap();
        let one = open_conn(&dir.path().join("one.db")).unwrap();
        let fdir = dir.path().join("folded");
        std::fs::create_dir(&fdir).unwrap();
        let folded = open_conn(&fdir.join("queue.db")).unwrap();
        let mut s1 = Stmts::prepare(&one).unwrap();
        let mut journal = Journal::open(&folded, &fdir).unwrap();
        let mut s2 = Stmts::prepare(&folded).unwrap();
        let fail = std::sync::atomic::AtomicU32::new(0);
        let (mut step, mut fresh) = (0, Vec::new());
        for round in 0..600 {
            let mut batch: Vec<Batch> = Vec::new();
            for t in 0..r.random_range(1..6) {
                let ops = (0..r.random_range(1..5))
                    .map(|_| {
                        step += 1;
                        random_op(&mut r, step, &mut fresh)
                    })
                    .collect::<Vec<_>>();
                batch.push((t, ops, None));
            }
            for (_, ops, _) in &batch {
                for op in ops {
                    apply(&one, &mut s1, op).unwrap();
                }
            }
            journal.commit(&folded, &mut s2, &mut batch, &fail).unwrap();
            match round % 7 {
                // as the writer folds
                3 => journal.fold(&folded, &mut s2, &[], &fail).unwrap(),
                // as a stopped process leaves it: replayed from the files
                6 => {
                    drop(s2);
                    journal = Journal::open(&folded, &fdir).unwrap();
                    s2 = Stmts::prepare(&folded).unwrap();
                    assert_eq!(log_generations(&fdir).unwrap(), vec![journal.generation], "spent log files are removed");
                }
                _ => continue,
            }
            assert_eq!(dump(&one), dump(&folded), "after step {step}");
        }
    }

    fn state(seq: u64, nonce: u32) -> Op {
        Op::State { seq, visible_at: 50, recv_count: 1, first_recv_ms: 40, nonce, receiver: Some(Arc::from("R")), received_at: 40 }
    }

    /// Append three groups (an earlier version's `oplog` row before them) without folding
    /// them, as a killed process leaves them; returns the log file.
    fn unfolded_log(dir: &Path) -> PathBuf {
        let conn = open_conn(&dir.join("queue.db")).unwrap();
        let mut j = Journal::open(&conn, dir).unwrap();
        let mut s = Stmts::prepare(&conn).unwrap();
        let fail = std::sync::atomic::AtomicU32::new(0);
        let mut legacy = Vec::new();
        oplog::encode(&Op::Insert(Box::new(row(9, "q", "from the oplog table"))), &mut legacy);
        conn.execute("INSERT INTO oplog (ops) VALUES (?1)", params![legacy]).unwrap();
        let groups: Vec<Vec<Op>> = vec![
            vec![Op::Insert(Box::new(row(1, "q", "one"))), Op::Insert(Box::new(row(2, "q", "two"))), Op::Insert(Box::new(row(3, "q", "three")))],
            vec![state(1, 7), state(2, 8)],
            vec![Op::Del(2), Op::Del(9)],
        ];
        for ops in groups {
            j.commit(&conn, &mut s, &mut [(1, ops, None)], &fail).unwrap();
        }
        let n: i64 = conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "the changes wait in the log");
        let log = log_path(dir, j.generation);
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600, "message bodies are for the owner only");
        log
    }

    /// Changes still in the operation log when the process stops (nothing folded them) are in
    /// what the store reads when it opens again.
    #[test]
    fn the_operation_log_is_replayed_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        unfolded_log(dir.path());
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let got: Vec<(u64, &str, u32, Option<&str>)> =
            loaded.messages.iter().map(|m| (m.seq, m.body.as_str(), m.nonce, m.receiver.as_deref())).collect();
        assert_eq!(got, vec![(1, "one", 7, Some("R")), (3, "three", 0, None)]);
        store.close();
    }

    /// A frame cut short (a write a full disk or a power loss interrupted) ends the log: what
    /// came before it is replayed, it is not.
    #[test]
    fn a_torn_frame_ends_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = unfolded_log(dir.path());
        // the last group's frame, its payload 2 x 9 bytes, loses its last byte
        let len = std::fs::metadata(&log).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(len - 1).unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let got: Vec<(u64, u32)> = loaded.messages.iter().map(|m| (m.seq, m.nonce)).collect();
        assert_eq!(got, vec![(1, 7), (2, 8), (3, 0), (9, 0)], "the deletes were in the torn frame");
        store.close();
    }

    /// A log file this store did not write is not replayed as one: the store refuses to open
    /// and names it.
    #[test]
    fn a_foreign_log_file_is_named_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("queue.oplog.5"), b"something else entirely").unwrap();
        let e = Store::open(dir.path()).err().expect("refused").to_string();
        assert!(e.contains("queue.oplog.5") && e.contains("move it out of the data directory"), "{e}");
    }

    /// Under writes that never pause, the write-ahead log is still written from its start
    /// again: it stays near WAL_RESTART_BYTES instead of growing by every change.
    #[test]
    fn the_write_ahead_log_stays_bounded_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let wal = dir.path().join("queue.db-wal");
        let body = "x".repeat(4 << 10);
        let total = 8 * WAL_RESTART_BYTES;
        let (mut written, mut largest, mut tickets) = (0u64, 0u64, std::collections::VecDeque::new());
        for seq in 1.. {
            // each change reaches the database (a message, and the delete of one sent long
            // before: folded by then, where in the same fold they would cancel out)
            let t = store.submit(vec![Op::Insert(Box::new(row(seq, "q", &body))), Op::Del(seq.saturating_sub(10_000))]);
            tickets.push_back(t);
            if tickets.len() > 8 {
                store.wait_blocking(tickets.pop_front().unwrap()).unwrap();
            }
            written += body.len() as u64;
            largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            if written >= total {
                break;
            }
        }
        store.close();
        // (kept under half of what was written: typically ~1.5 × WAL_RESTART_BYTES; without the
        // restart it passes all that was written)
        assert!(largest <= total / 2, "the log grew to {largest} bytes while {written} were written");
    }
}
