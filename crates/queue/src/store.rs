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
    pub queue: String,
    pub id: String,
    pub body: String,
    pub attrs: Option<String>,
    pub sys_attrs: Option<String>,
    pub sent_ms: u64,
    pub visible_at: u64,
    pub recv_count: u32,
    pub first_recv_ms: u64,
    pub nonce: u32,
    pub sender: String,
    pub receiver: Option<String>,
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
    conn.pragma_update(None, "cache_size", -16_384).map_err(err)?;
    conn.pragma_update(None, "temp_store", "MEMORY").map_err(err)?;
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
                let mut n = 0u32;
                while !ck_stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::park_timeout(std::time::Duration::from_millis(100));
                    n += 1;
                    if n.is_multiple_of(10) {
                        if let Err(e) = ck_conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                            tracing::warn!(path = %ck_path.display(), error = %e, "queue store checkpoint failed; will retry");
                        }
                    }
                }
            })
            .map_err(|source| QueueError::Io { path: dir.to_path_buf(), source })?;
        let thread = std::thread::Builder::new()
            .name("queue-store".into())
            .spawn(move || writer(conn, path, rx, p2, fail2))
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
            queue: r.get(1)?,
            id: r.get(2)?,
            body: r.get(3)?,
            attrs: r.get(4)?,
            sys_attrs: r.get(5)?,
            sent_ms: r.get::<_, i64>(6)? as u64,
            visible_at: r.get::<_, i64>(7)? as u64,
            recv_count: r.get::<_, i64>(8)? as u32,
            first_recv_ms: r.get::<_, i64>(9)? as u64,
            nonce: r.get::<_, i64>(10)? as u32,
            sender: r.get(11)?,
            receiver: r.get(12)?,
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

fn apply(conn: &Connection, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Put(m) => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO messages (seq, queue, id, body, attrs, sys_attrs, sent_ms, visible_at, recv_count,
                   first_recv_ms, nonce, sender, receiver, received_at, group_id, dedup_id, seqnum, dl_source, dl_moved_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
            )?
            .execute(params![
                m.seq as i64,
                m.queue,
                m.id,
                m.body,
                m.attrs,
                m.sys_attrs,
                m.sent_ms as i64,
                m.visible_at as i64,
                m.recv_count as i64,
                m.first_recv_ms as i64,
                m.nonce as i64,
                m.sender,
                m.receiver,
                m.received_at as i64,
                m.group_id,
                m.dedup_id,
                m.seqnum as i64,
                m.dl_source,
                m.dl_moved_at as i64
            ])?;
        }
        Op::State { seq, visible_at, recv_count, first_recv_ms, nonce, receiver, received_at } => {
            conn.prepare_cached(
                "UPDATE messages SET visible_at = ?2, recv_count = ?3, first_recv_ms = ?4, nonce = ?5, receiver = ?6,
                   received_at = ?7 WHERE seq = ?1",
            )?
            .execute(params![
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
            conn.prepare_cached("DELETE FROM messages WHERE seq = ?1")?.execute(params![*seq as i64])?;
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

fn writer(
    mut conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Msg>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    fail_next: Arc<std::sync::atomic::AtomicU32>,
) {
    let (lock, cv) = &*progress;
    let mut pending: Option<Msg> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        let first = match first {
            Msg::Batch(b) => b,
            Msg::Reload(reply) => {
                let res = open_conn(&path).map_err(|e| e.to_string()).and_then(|c| {
                    let loaded = load(&c).map_err(|e| format!("the queue store {}: {e}", path.display()))?;
                    c.pragma_update(None, "wal_autocheckpoint", 0).map_err(|e| e.to_string())?;
                    Ok((c, loaded))
                });
                let res = res.map(|(c, loaded)| {
                    conn = c;
                    lock.lock().unwrap().broken = false;
                    tracing::info!(path = %path.display(), "queue store reopened; accepting changes again");
                    loaded
                });
                let _ = reply.send(res);
                continue;
            }
        };
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
        let last = batch.last().map(|b| b.0).unwrap_or(0);
        let broken = lock.lock().unwrap().broken;
        let res: Result<(), String> = if broken {
            Err(format!(
                "the queue store {} failed a write earlier and is being reopened; try again shortly",
                path.display()
            ))
        } else {
            (|| -> rusqlite::Result<()> {
                let tx = conn.transaction()?;
                for (_, ops, _) in &batch {
                    for op in ops {
                        apply(&tx, op)?;
                    }
                }
                let injected = fail_next
                    .fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if injected {
                    // dropping the transaction rolls it back, as a failed commit leaves it
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                        Some("database or disk is full (injected)".into()),
                    ));
                }
                tx.commit()
            })()
            .map_err(|e| {
                tracing::error!(path = %path.display(), error = %e, "queue store write failed; refusing changes until the store is reopened");
                format!("the queue store {} could not write: {e}", path.display())
            })
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
    }
    let _ = conn.pragma_update(None, "wal_checkpoint", "TRUNCATE");
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
