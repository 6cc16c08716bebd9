//! Starting and signalling task processes.
//!
//! Every process the local runtime starts (tasks and health checks) is a group leader of its
//! own process group, gets `PR_SET_PDEATHSIG(SIGKILL)` so it dies with the supervising thread
//! (and so with coalmine, even on SIGKILL), and inherits no descriptor besides 0, 1 and 2.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Variables of coalmine's own environment that must not leak into a task, because they
/// would override the task's own identity or endpoint. (The region, the credentials and the
/// endpoints are set for every task; see the runtime's `task_env`.)
const SCRUBBED: &[&str] = &[
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
];

/// A started task process and the read end of the pipe its stdout and stderr write to.
pub(crate) struct Started {
    pub child: Child,
    pub pid: u32,
    pub output: pipe::Receiver,
}

/// Start `bash -c "exec <command>"` in `dir` with `env` on top of coalmine's environment —
/// or, with a sidecar, `<sidecar...> bash -c "exec <command>"` with coalmine's credentials
/// left in place (the sidecar uses them; the app talks to the sidecar).
pub(crate) fn spawn_task(dir: &Path, command: &str, env: &BTreeMap<String, String>, sidecar: Option<&[String]>) -> io::Result<Started> {
    let (tx, rx) = pipe::pipe()?;
    let out: OwnedFd = tx.into_blocking_fd()?;
    let err = out.try_clone()?;
    let mut cmd = match sidecar {
        Some([program, args @ ..]) => {
            let mut cmd = Command::new(program);
            cmd.args(args).args(["bash", "-c"]).arg(format!("exec {command}"));
            cmd
        }
        _ => {
            let mut cmd = Command::new("bash");
            cmd.arg("-c").arg(format!("exec {command}"));
            cmd
        }
    };
    configure(&mut cmd, dir, env, sidecar.is_none());
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let child = cmd.spawn()?;
    // `cmd` (and with it our copies of the pipe's write end) is dropped here, so the reader
    // sees end-of-file once the task and everything it started have exited.
    drop(cmd);
    let pid = child.id().ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
    Ok(Started { child, pid, output: rx })
}

/// Start a health check: `bash -c <command>` in `dir`, output discarded.
pub(crate) fn spawn_check(dir: &Path, command: &str, env: &BTreeMap<String, String>) -> io::Result<Child> {
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(command);
    configure(&mut cmd, dir, env, true);
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    cmd.spawn()
}

fn configure(cmd: &mut Command, dir: &Path, env: &BTreeMap<String, String>, scrub: bool) {
    cmd.current_dir(dir);
    if scrub {
        for k in SCRUBBED {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env);
    confine(cmd.as_std_mut());
}

/// How coalmine starts every process of its own (tasks, health checks, build commands): in a
/// process group of its own (so the whole group can be signalled), killed when the thread that
/// started it dies (even on SIGKILL of coalmine; a parent already gone makes it exit at once),
/// and without descriptors some library opened without `O_CLOEXEC`.
pub fn confine(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_uint);
            Ok(())
        });
    }
}

/// Signal a task's whole process group. Errors (the group is gone) are ignored.
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    let p = Pid::from_raw(pid as i32);
    let _ = killpg(p, sig);
}

/// SIGKILL a whole process group (a build command's, on timeout, cancel or end).
pub fn kill_group(pgid: u32) {
    signal_group(pgid, Signal::SIGKILL);
}

/// Kill what is left of a process group coalmine started: group `pgid`, whose leader (pid
/// `pgid`) started at `start_ticks`. The leader may be gone — a wrapper that did not `exec`
/// dies with coalmine (`PR_SET_PDEATHSIG`) while its children live on in its group — so the
/// members are found in `/proc` by their group id, and only those that started no earlier
/// than the leader count (a pid, and so a group id, can be reused later). Returns the pids
/// signalled (SIGKILL).
pub fn kill_group_leftovers(pgid: u32, start_ticks: u64) -> Vec<u32> {
    if let Some(st) = proc_stat(pgid) {
        if st.start_ticks != start_ticks && st.pgrp == pgid && st.state != 'Z' {
            // The pid leads another group now: that group is not ours.
            return Vec::new();
        }
    }
    let members = group_members(pgid, start_ticks);
    if !members.is_empty() {
        let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        for &p in &members {
            let _ = kill(Pid::from_raw(p as i32), Signal::SIGKILL);
        }
    }
    members
}

/// Live processes of group `pgid` that started at or after `start_ticks`.
pub fn group_members(pgid: u32, start_ticks: u64) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|st| st.pgrp == pgid && st.start_ticks >= start_ticks && st.state != 'Z' && st.state != 'X')
        })
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    match proc_stat(pid) {
        Some(stat) => stat.state != 'Z' && stat.state != 'X',
        None => false,
    }
}

/// The parts of `/proc/<pid>/stat` the runtime uses.
#[derive(Debug, Clone, Copy)]
pub struct ProcStat {
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    /// Start time in clock ticks after boot: with the pid, identifies a process for good.
    pub start_ticks: u64,
}

pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// "exit 1", "signal 9".
pub(crate) fn describe_exit(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "exited".to_string(),
    }
}
