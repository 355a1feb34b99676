//! The local workflow executor: runs one workflow step as a child process.
//!
//! Guarantees:
//! - the program gets `input` (the event JSON) on stdin, which is then
//!   closed; a program that does not read it is not an error;
//! - stdout and stderr are read concurrently as they are written (a chatty
//!   program never blocks on a full pipe) into one [`OutputLog`] that keeps
//!   only the last `log_limit` bytes and counts what it dropped, so memory
//!   stays bounded whatever the program prints;
//! - the child runs in its own process group. When the deadline passes the
//!   whole group is killed (`SIGKILL`) and the run fails with
//!   [`ExecError::DeadlineExceeded`]. When the main process exits, whatever
//!   it left behind in its group is killed too, as when a container ends;
//! - dropping a run (shutdown past its grace period) kills the group:
//!   no child outlives the future that started it;
//! - nothing here blocks the runtime (`tokio::process`; the script file is
//!   written on the blocking pool).
//!
//! Not guaranteed: a program that moves itself to another process group or
//! session (`setsid`) escapes the kill.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long output is still read after the program exited (its leftovers
/// are killed at exit, so the pipes close almost at once).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// What to run: `argv` (program and arguments), plus for a `script`
/// template its source, written to a file whose path is appended to `argv`
/// (as Argo does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    pub argv: Vec<String>,
    pub script: Option<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
}

/// How a program that ran to its end finished.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub output: OutputLog,
}

impl Finished {
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Why a program did not run to its end.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("workflow has no command to run")]
    NoCommand,
    #[error("cannot write the script to a temporary file: {0}")]
    Script(std::io::Error),
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("waiting for the workflow process failed: {0}")]
    Wait(std::io::Error),
    #[error("exceeded activeDeadlineSeconds ({}s); killed", deadline.as_secs())]
    DeadlineExceeded {
        deadline: Duration,
        output: OutputLog,
    },
}

/// The tail of a program's combined output: at most `limit` bytes.
#[derive(Debug, Clone, Default)]
pub struct OutputLog {
    limit: usize,
    tail: VecDeque<u8>,
    dropped: u64,
}

impl OutputLog {
    pub fn new(limit: usize) -> Self {
        OutputLog {
            limit,
            tail: VecDeque::with_capacity(limit.min(8192)),
            dropped: 0,
        }
    }

    /// Appends `bytes`, dropping the oldest bytes past the limit.
    pub fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(self.limit);
        let skipped = bytes.len() - keep;
        self.tail.extend(&bytes[skipped..]);
        let over = self.tail.len().saturating_sub(self.limit);
        self.tail.drain(..over);
        self.dropped += (skipped + over) as u64;
    }

    /// Bytes not kept because the log was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The kept tail as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        let (a, b) = self.tail.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs `program` with `input` on stdin, for at most `deadline`.
pub async fn run(
    program: &Program,
    input: Bytes,
    deadline: Option<Duration>,
    log_limit: usize,
) -> Result<Finished, ExecError> {
    let (first, rest) = program.argv.split_first().ok_or(ExecError::NoCommand)?;
    // Kept until the run ends: the file is deleted on drop.
    let script = match &program.script {
        Some(source) => Some(write_script(source.clone()).await?),
        None => None,
    };
    let mut command = Command::new(first);
    command
        .args(rest)
        .args(script.iter().map(|file| file.path()))
        .envs(program.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &program.working_dir {
        command.current_dir(dir);
    }
    let mut child = command.spawn().map_err(|source| ExecError::Spawn {
        program: first.clone(),
        source,
    })?;
    let group = ProcessGroup(child.id());
    let mut log = OutputLog::new(log_limit);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let stdin = child.stdin.take();
    let waited = {
        let reading = read_output(stdout, stderr, &mut log);
        let feeding = feed(stdin, input);
        tokio::pin!(reading, feeding);
        let mut read_done = false;
        let mut fed = false;
        let exit = wait_until_deadline(&mut child, deadline);
        tokio::pin!(exit);
        let waited = loop {
            tokio::select! {
                waited = &mut exit => break waited,
                () = &mut reading, if !read_done => read_done = true,
                () = &mut feeding, if !fed => fed = true,
            }
        };
        // Leftovers of the program (or all of it, past the deadline) go now,
        // so the pipes they hold close.
        group.kill();
        if !read_done {
            let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, &mut reading).await;
        }
        waited
    };
    match waited {
        Some(Ok(status)) => Ok(Finished {
            status,
            output: log,
        }),
        Some(Err(err)) => Err(ExecError::Wait(err)),
        None => {
            // Reap the killed child so it does not linger as a zombie.
            let _ = child.wait().await;
            Err(ExecError::DeadlineExceeded {
                deadline: deadline.unwrap_or_default(),
                output: log,
            })
        }
    }
}

/// The exit status, or `None` when the deadline passed first.
async fn wait_until_deadline(
    child: &mut Child,
    deadline: Option<Duration>,
) -> Option<std::io::Result<ExitStatus>> {
    match deadline {
        Some(deadline) => tokio::time::timeout(deadline, child.wait()).await.ok(),
        None => Some(child.wait().await),
    }
}

/// Writes the event to stdin and closes it. A program that exits or closes
/// stdin without reading is fine (`BrokenPipe` is expected then).
async fn feed(stdin: Option<tokio::process::ChildStdin>, input: Bytes) {
    let Some(mut stdin) = stdin else {
        return;
    };
    if let Err(err) = stdin.write_all(&input).await {
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::debug!("writing the event to the workflow's stdin: {err}");
        }
    }
    drop(stdin);
}

/// Reads both pipes until both are closed, into `log`.
async fn read_output(
    stdout: Option<impl AsyncRead + Unpin>,
    stderr: Option<impl AsyncRead + Unpin>,
    log: &mut OutputLog,
) {
    let mut out = stdout;
    let mut err = stderr;
    let mut out_buf = [0u8; 4096];
    let mut err_buf = [0u8; 4096];
    while out.is_some() || err.is_some() {
        tokio::select! {
            read = async { out.as_mut()?.read(&mut out_buf).await.ok() }, if out.is_some() => match read {
                Some(n) if n > 0 => log.push(&out_buf[..n]),
                _ => out = None,
            },
            read = async { err.as_mut()?.read(&mut err_buf).await.ok() }, if err.is_some() => match read {
                Some(n) if n > 0 => log.push(&err_buf[..n]),
                _ => err = None,
            },
        }
    }
}

/// Writes a script's source to a temporary file (on the blocking pool).
async fn write_script(source: String) -> Result<tempfile::NamedTempFile, ExecError> {
    tokio::task::spawn_blocking(move || {
        let mut file = tempfile::Builder::new()
            .prefix("spillway-script-")
            .tempfile()?;
        file.write_all(source.as_bytes())?;
        file.flush()?;
        Ok(file)
    })
    .await
    .map_err(|join| ExecError::Script(std::io::Error::other(join.to_string())))?
    .map_err(ExecError::Script)
}

/// The child's process group (its id is the child's pid); killed on drop,
/// so a cancelled run leaves no process behind.
struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    fn kill(&self) {
        let Some(pid) = self
            .0
            .and_then(|id| i32::try_from(id).ok())
            .filter(|&id| id > 1)
            .and_then(rustix::process::Pid::from_raw)
        else {
            return;
        };
        // ESRCH (nobody left in the group) is the usual, fine outcome.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Program {
        Program {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            script: None,
            env: Vec::new(),
            working_dir: None,
        }
    }

    #[test]
    fn output_log_keeps_the_tail() {
        let mut log = OutputLog::new(5);
        log.push(b"abc");
        log.push(b"defg");
        assert_eq!((log.text().as_str(), log.dropped()), ("cdefg", 2));
        log.push(b"0123456789");
        assert_eq!((log.text().as_str(), log.dropped()), ("56789", 12));
    }

    #[tokio::test]
    async fn stdin_in_output_out_and_exit_codes() {
        let done = run(
            &sh("cat; echo oops >&2"),
            Bytes::from_static(b"{\"a\":1}\n"),
            None,
            1024,
        )
        .await
        .expect("ran");
        assert!(done.success());
        let text = done.output.text();
        assert!(
            text.contains("{\"a\":1}") && text.contains("oops"),
            "{text}"
        );

        let failed = run(&sh("exit 3"), Bytes::new(), None, 1024)
            .await
            .expect("ran");
        assert_eq!(failed.status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_program_that_ignores_stdin_is_fine() {
        // Larger than a pipe buffer: the write must not block the run.
        let input = Bytes::from(vec![b'x'; 1 << 20]);
        let done = run(&sh("exit 0"), input, None, 64).await.expect("ran");
        assert!(done.success());
    }

    #[tokio::test]
    async fn output_is_bounded() {
        let done = run(&sh("yes line | head -c 200000"), Bytes::new(), None, 100)
            .await
            .expect("ran");
        assert_eq!(done.output.text().len(), 100);
        assert_eq!(done.output.dropped(), 200_000 - 100);
    }

    #[tokio::test]
    async fn the_deadline_kills_the_whole_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pid_file = dir.path().join("grandchild.pid");
        // A background grandchild that would outlive a kill of `sh` alone.
        // It outlives the main process, so only a kill of the group stops it.
        let script = format!("sleep 120 & echo $! > {}; sleep 30", pid_file.display());
        let err = run(
            &sh(&script),
            Bytes::new(),
            Some(Duration::from_millis(300)),
            64,
        )
        .await
        .expect_err("deadline");
        assert!(matches!(err, ExecError::DeadlineExceeded { .. }), "{err}");
        let pid = std::fs::read_to_string(&pid_file).expect("pid file");
        let stat = format!("/proc/{}/stat", pid.trim());
        // Gone, or a zombie waiting for init to reap it: not running.
        let dead = || match std::fs::read_to_string(&stat) {
            Err(_) => true,
            Ok(text) => text
                .rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
        };
        for _ in 0..250 {
            if dead() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the grandchild {} outlived the deadline", pid.trim());
    }

    #[tokio::test]
    async fn script_source_is_passed_as_a_file() {
        let program = Program {
            argv: vec!["sh".into()],
            script: Some("read line; echo \"got $line\"; exit 7".into()),
            env: vec![("GREETING".into(), "hi".into())],
            working_dir: None,
        };
        let done = run(&program, Bytes::from_static(b"event\n"), None, 1024)
            .await
            .expect("ran");
        assert_eq!(done.status.code(), Some(7));
        assert_eq!(done.output.text(), "got event\n");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let program = Program {
            argv: vec!["/nonexistent/spillway-test".into()],
            script: None,
            env: Vec::new(),
            working_dir: None,
        };
        let err = run(&program, Bytes::new(), None, 64)
            .await
            .expect_err("spawn");
        assert!(matches!(err, ExecError::Spawn { .. }), "{err}");
    }
}
