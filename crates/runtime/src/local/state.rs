//! What the local runtime keeps on disk under `<state>/runtime/`: a lock (one supervisor per
//! state folder), the pids of the tasks it runs (so a restarted supervisor kills leftovers of
//! a previous one) and the task-number counter (task ids are unique for the folder's life).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::process::{alive, kill_group_leftovers};
use crate::RuntimeError;

/// The contents of `<state>/runtime/tasks.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct TasksFile {
    pub supervisor_pid: u32,
    pub next_task: u64,
    pub tasks: Vec<TaskRecord>,
}

/// One running task process as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub pid: u32,
    /// `/proc/<pid>/stat` start time: guards against killing a process that reused the pid.
    pub start_ticks: u64,
}

pub(crate) struct StateFiles {
    dir: PathBuf,
    _lock: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
    move |source| RuntimeError::Io { path: path.to_path_buf(), source }
}

impl StateFiles {
    /// Take the state folder's runtime lock, kill what a previous supervisor left running,
    /// and return the next free task number.
    pub(crate) fn open(state_dir: &Path) -> Result<(StateFiles, u64), RuntimeError> {
        let dir = state_dir.join("runtime");
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let lock_path = dir.join("lock");
        let mut lock = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            return Err(RuntimeError::StateInUse { path: state_dir.to_path_buf(), pid: holder.trim().parse().ok() });
        }
        lock.set_len(0).map_err(io_err(&lock_path))?;
        let _ = write!(lock, "{}", std::process::id());

        let files = StateFiles { dir, _lock: lock };
        let previous = files.read();
        let killed = kill_leftovers(&previous.tasks);
        if killed > 0 {
            tracing::warn!(count = killed, "killed task processes a previous coalmine run left behind");
        }
        files.write(&TasksFile { supervisor_pid: std::process::id(), next_task: previous.next_task.max(1), tasks: vec![] })?;
        Ok((files, previous.next_task.max(1)))
    }

    fn path(&self) -> PathBuf {
        self.dir.join("tasks.json")
    }

    pub(crate) fn read(&self) -> TasksFile {
        fs::read(self.path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
    }

    pub(crate) fn write(&self, contents: &TasksFile) -> Result<(), RuntimeError> {
        let path = self.path();
        let tmp = self.dir.join("tasks.json.tmp");
        let data = serde_json::to_vec_pretty(contents).expect("tasks file serialises");
        fs::write(&tmp, data).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// SIGKILL what is left of every recorded task's process group — the task itself if it is
/// still the same process, and whatever it started, even when the task (the group's leader)
/// is gone — then wait (up to 5 s) until they are gone. Returns how many processes were alive.
fn kill_leftovers(tasks: &[TaskRecord]) -> usize {
    let mut victims = Vec::new();
    for t in tasks {
        victims.extend(kill_group_leftovers(t.pid, t.start_ticks));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while victims.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    victims.len()
}
