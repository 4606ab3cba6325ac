//! Processes on Linux: spawn in a new process group with output to a log file, identity by pid +
//! start time (from /proc, so a recycled pid is never mistaken for a replica), signals to the
//! whole group, and the scan for leftovers of a crashed daemon.

use std::collections::HashSet;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Environment variable naming the state directory a replica belongs to.
pub const ENV_STATE_DIR: &str = "FERRY_STATE_DIR";
/// Environment variable naming the replica id.
pub const ENV_REPLICA_ID: &str = "FERRY_REPLICA_ID";

/// A spawned child.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: i32,
    pub start_time: Option<u64>,
}

/// Start `program args` in its own process group, stdout and stderr appended to `log`.
pub fn spawn(
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
) -> std::io::Result<Spawned> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(false);
    for (key, value) in env {
        command.env(key, value);
    }
    let child = command.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or(-1);
    Ok(Spawned {
        child,
        pid,
        start_time: start_time(pid),
    })
}

/// `(state, start time)` of a process from /proc/PID/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and ')': fields resume after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Start time of a process (clock ticks after boot).
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Whether `pid` is still the process that started at `started` (and not a zombie).
pub fn alive(pid: i32, started: u64) -> bool {
    matches!(stat(pid), Some((state, start)) if start == started && state != 'Z' && state != 'X')
}

/// Send `signal` to the process group led by `pid` (every replica leads its own group).
pub fn signal_group(pid: i32, signal: Signal) {
    if pid > 1 {
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// How a process ended, in words.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| signal.to_string());
            format!("killed by signal {name}")
        }
        _ => "exited".to_string(),
    }
}

/// The last `count` non-empty lines of a log file.
pub fn last_lines(path: &Path, count: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut tail = String::new();
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_ok() {
        tail = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<String> = tail
        .lines()
        .map(strip_ansi)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(count)..].to_vec()
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Live replica processes of `state_dir` (zombies excluded), found by their environment: every
/// replica gets `FERRY_STATE_DIR` and `FERRY_REPLICA_ID` from the supervisor.
pub fn replica_processes(state_dir: &Path) -> Vec<i32> {
    let wanted = format!("{ENV_STATE_DIR}={}", state_dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut ours = false;
        let mut replica = false;
        for var in environ.split(|b| *b == 0) {
            if var == wanted.as_bytes() {
                ours = true;
            } else if var.starts_with(ENV_REPLICA_ID.as_bytes()) {
                replica = true;
            }
        }
        let live = matches!(stat(pid), Some((state, _)) if state != 'Z' && state != 'X');
        if ours && replica && live {
            found.push(pid);
        }
    }
    found
}

/// Process groups of replicas of `state_dir` that nobody owns: started by a daemon that crashed
/// before it could record them.
pub fn leftovers(state_dir: &Path, owned: &HashSet<i32>) -> Vec<i32> {
    let me = std::process::id() as i32;
    replica_processes(state_dir)
        .into_iter()
        .filter(|pid| !owned.contains(pid) && *pid != me)
        .collect()
}
