//! Network namespaces for the lab and the root tests: create/delete named
//! namespaces (`ip netns`), run commands inside them, and run Rust code on a
//! thread that has entered one (`setns`).
//!
//! Every external command goes through [`run_tool`]/[`run_tool_with_stdin`],
//! which look the binary up first (a missing binary is
//! [`NetnsError::MissingTool`]) and turn a non-zero exit into
//! [`NetnsError::CommandFailed`] carrying the command line and its stderr.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use thiserror::Error;

/// Directory where `ip netns` keeps the bind mounts of named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Directories searched for tools in addition to `$PATH` (root tools live in
/// sbin, which is not always on a non-login `$PATH`).
const EXTRA_TOOL_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Errors from namespace handling and from the external commands it runs.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// A required binary is not installed.
    #[error(
        "required tool `{tool}` was not found in $PATH or sbin; install it (Debian package `{package}`)"
    )]
    MissingTool {
        /// Binary name, e.g. `nft`.
        tool: String,
        /// Debian package that provides it.
        package: &'static str,
    },
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The full command line, shell-quoted for copy/paste.
        command: String,
        /// Exit status as printed by the OS (`exit status: 2`, `signal: 9`).
        status: String,
        /// Trimmed standard error of the command.
        stderr: String,
    },
    /// A command could not be started or talked to.
    #[error("cannot run `{command}`")]
    Io {
        /// The full command line.
        command: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A namespace with this name already exists (not ours: we never reuse one).
    #[error(
        "network namespace `{name}` already exists; remove it with `ip netns del {name}` \
         (or `hoptrace lab --cleanup --prefix <prefix>` for leftovers of a crashed lab) \
         or pick another --prefix"
    )]
    AlreadyExists {
        /// Namespace name.
        name: String,
    },
    /// The namespace name (or cleanup prefix) is not acceptable.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The namespace does not exist.
    #[error("network namespace `{0}` does not exist")]
    NotFound(String),
    /// Opening or entering a namespace failed.
    #[error("cannot enter network namespace {path}")]
    Enter {
        /// Namespace file (`/run/netns/<name>` or `/proc/<pid>/ns/net`).
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The thread that ran code inside a namespace could not be spawned.
    #[error("cannot spawn a thread to enter network namespace {path}")]
    Thread {
        /// Namespace file.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

/// Debian package that ships `tool`, for the [`NetnsError::MissingTool`] hint.
fn package_of(tool: &str) -> &'static str {
    match tool {
        "ip" | "bridge" | "tc" => "iproute2",
        "iptables" | "iptables-restore" | "iptables-save" | "iptables-legacy-restore" => "iptables",
        "nft" => "nftables",
        "sysctl" => "procps",
        "ping" => "iputils-ping",
        "python3" => "python3",
        _ => "unknown",
    }
}

/// Finds `tool` on `$PATH` or in the sbin directories.
///
/// A name containing `/` is taken as a path and only checked for existence.
///
/// # Errors
///
/// [`NetnsError::MissingTool`] (with the Debian package to install) when
/// no executable file of that name is found.
pub fn find_tool(tool: &str) -> Result<PathBuf> {
    let missing = || NetnsError::MissingTool {
        tool: tool.to_string(),
        package: package_of(tool),
    };
    if tool.contains('/') {
        let path = PathBuf::from(tool);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(missing())
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let candidates = std::env::split_paths(&path_var)
        .chain(EXTRA_TOOL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(tool));
    for candidate in candidates {
        if candidate
            .metadata()
            .is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        {
            return Ok(candidate);
        }
    }
    Err(missing())
}

/// Renders an argv as a copy/paste-able shell command line.
pub fn command_line<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|arg| {
            let arg = arg.as_ref().to_string_lossy();
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c));
            if plain {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the command for `argv`, resolving `argv[0]` with [`find_tool`].
fn build_command<S: AsRef<OsStr>>(argv: &[S]) -> Result<Command> {
    let Some((program, args)) = argv.split_first() else {
        return Err(NetnsError::InvalidName {
            name: String::new(),
            reason: "empty command line",
        });
    };
    let program = find_tool(&program.as_ref().to_string_lossy())?;
    let mut command = Command::new(program);
    command.args(args);
    Ok(command)
}

/// Checks an [`Output`] and turns a failure into [`NetnsError::CommandFailed`].
fn check_output(command: String, output: Output) -> Result<Output> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(NetnsError::CommandFailed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs `argv` (in the current namespace) and returns its output; a non-zero
/// exit is an error.
///
/// # Errors
///
/// [`NetnsError::MissingTool`] when the program is not installed,
/// [`NetnsError::Io`] when it cannot be started or fed, and
/// [`NetnsError::CommandFailed`] (with its stderr) when it exits non-zero.
pub fn run_tool<S: AsRef<OsStr>>(argv: &[S]) -> Result<Output> {
    let line = command_line(argv);
    let output = build_command(argv)?
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetnsError::Io {
            command: line.clone(),
            source,
        })?;
    check_output(line, output)
}

/// Like [`run_tool`], with `input` written to the command's stdin.
///
/// # Errors
///
/// [`NetnsError::MissingTool`] when the program is not installed,
/// [`NetnsError::Io`] when it cannot be started or fed, and
/// [`NetnsError::CommandFailed`] (with its stderr) when it exits non-zero.
pub fn run_tool_with_stdin<S: AsRef<OsStr>>(argv: &[S], input: &[u8]) -> Result<Output> {
    let line = command_line(argv);
    let io_error = |source| NetnsError::Io {
        command: line.clone(),
        source,
    };
    let mut child = build_command(argv)?
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_error)?;
    let mut stdin = child.stdin.take().expect("stdin was requested as piped");
    // Write on a helper thread so a command that fills its stdout before
    // reading all of stdin cannot deadlock us.
    let output = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let result = stdin.write_all(input);
            drop(stdin);
            result
        });
        let output = child.wait_with_output();
        let written = writer.join().unwrap_or(Ok(()));
        match (output, written) {
            (Ok(output), Ok(())) => Ok(output),
            // The command exiting early (broken pipe) is reported by its status.
            (Ok(output), Err(_)) if !output.status.success() => Ok(output),
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
        }
    })
    .map_err(io_error)?;
    check_output(line, output)
}

/// `ip netns exec <ns>` followed by `argv` with its program resolved, so a
/// missing program is reported as [`NetnsError::MissingTool`] and not as an
/// `exec` failure of `ip`.
fn in_netns_argv<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<Vec<String>> {
    let Some((program, args)) = argv.split_first() else {
        return Err(NetnsError::InvalidName {
            name: String::new(),
            reason: "empty command line",
        });
    };
    let program = find_tool(&program.as_ref().to_string_lossy())?;
    let mut full = vec![
        "ip".to_string(),
        "netns".to_string(),
        "exec".to_string(),
        ns.to_string(),
        program.to_string_lossy().into_owned(),
    ];
    full.extend(
        args.iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned()),
    );
    Ok(full)
}

/// Runs `argv` inside network namespace `ns` (`ip netns exec`) and waits for
/// it; a non-zero exit is [`NetnsError::CommandFailed`].
///
/// # Errors
///
/// [`NetnsError::MissingTool`] when `ip` or the program is not installed,
/// [`NetnsError::Io`] when it cannot be started or fed, and
/// [`NetnsError::CommandFailed`] (with its stderr) when it exits non-zero,
/// also when `ns` does not exist.
pub fn run_in<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<Output> {
    run_tool(&in_netns_argv(ns, argv)?)
}

/// Like [`run_in`], with `input` written to the command's stdin (for
/// `iptables-restore`, `nft -f -`).
///
/// # Errors
///
/// As [`run_in`].
pub fn run_in_with_stdin<S: AsRef<OsStr>>(ns: &str, argv: &[S], input: &[u8]) -> Result<Output> {
    run_tool_with_stdin(&in_netns_argv(ns, argv)?, input)
}

/// Starts `argv` inside network namespace `ns` without waiting for it.
///
/// stdin is `/dev/null`, stdout and stderr are piped. The caller owns the
/// child: wrap it in a [`ChildGuard`] so it is killed and reaped on drop.
///
/// # Errors
///
/// [`NetnsError::MissingTool`] when `ip` or the program is not installed,
/// [`NetnsError::Io`] when `ip netns exec` cannot be started. A namespace
/// that does not exist shows only as the child's non-zero exit.
pub fn spawn_in<S: AsRef<OsStr>>(ns: &str, argv: &[S]) -> Result<Child> {
    let full = in_netns_argv(ns, argv)?;
    let line = command_line(&full);
    build_command(&full)?
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetnsError::Io {
            command: line,
            source,
        })
}

/// Owns a child process and kills (SIGKILL) and reaps it on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child) -> Self {
        Self { child: Some(child) }
    }

    /// The owned child (e.g. to take its stdout).
    pub fn child_mut(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("child is present until drop or into_inner")
    }

    /// Process id of the child.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Gives the child back without killing it.
    pub fn into_inner(mut self) -> Child {
        self.child
            .take()
            .expect("child is present until drop or into_inner")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean it already exited; wait() reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Checks that `name` can be a namespace name (a file name under
/// [`NETNS_RUN_DIR`], also usable on an `ip` command line).
fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(NetnsError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > 64 {
        return invalid("longer than 64 bytes");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return invalid("must not start with '-' or '.'");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return invalid("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Path of the bind mount of named namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// A named network namespace that this process created; deleted on drop
/// (after killing every process still inside it).
#[derive(Debug)]
pub struct NetnsGuard {
    name: String,
    path: PathBuf,
    deleted: bool,
}

impl NetnsGuard {
    /// Creates namespace `name` with `ip netns add`.
    ///
    /// An existing namespace of that name is left alone and reported as
    /// [`NetnsError::AlreadyExists`].
    ///
    /// # Errors
    ///
    /// [`NetnsError::InvalidName`], [`NetnsError::AlreadyExists`], or the
    /// error of `ip netns add` or of bringing `lo` up (the namespace is then
    /// deleted again).
    pub fn create(name: &str) -> Result<Self> {
        validate_name(name)?;
        let path = netns_path(name);
        let already_exists = || NetnsError::AlreadyExists {
            name: name.to_string(),
        };
        if path.exists() {
            return Err(already_exists());
        }
        match run_tool(&["ip", "netns", "add", name]) {
            Ok(_) => {}
            Err(NetnsError::CommandFailed { stderr, .. }) if stderr.contains("File exists") => {
                return Err(already_exists());
            }
            Err(e) => return Err(e),
        }
        let guard = Self {
            name: name.to_string(),
            path,
            deleted: false,
        };
        run_in(name, &["ip", "link", "set", "lo", "up"])?;
        Ok(guard)
    }

    /// Namespace name (as used by `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Namespace file, `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the namespace now, reporting errors (drop ignores them).
    ///
    /// # Errors
    ///
    /// The error of `ip netns pids` or `ip netns del`.
    pub fn delete(mut self) -> Result<()> {
        self.deleted = true;
        delete_netns(&self.name)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if !self.deleted {
            // Nothing useful to do with the error while dropping; the
            // namespace is then visible to `cleanup_prefix`.
            let _ = delete_netns(&self.name);
        }
    }
}

/// Kills every process inside namespace `name`, then deletes it.
fn delete_netns(name: &str) -> Result<()> {
    kill_processes_in(name)?;
    run_tool(&["ip", "netns", "del", name]).map(drop)
}

/// SIGKILLs the processes `ip netns pids` lists for namespace `name` and waits
/// (bounded) until they are gone.
fn kill_processes_in(name: &str) -> Result<()> {
    let pids = |name: &str| -> Result<Vec<i32>> {
        let output = run_tool(&["ip", "netns", "pids", name])?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|&pid| pid > 1 && pid != std::process::id() as i32)
            .collect())
    };
    for _ in 0..50 {
        let remaining = pids(name)?;
        if remaining.is_empty() {
            return Ok(());
        }
        for pid in remaining {
            // ESRCH: it exited meanwhile.
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}

/// Deletes every leftover namespace whose name starts with `prefix` (for
/// `hoptrace lab --cleanup` after a crash) and returns the deleted names.
///
/// Other namespaces are never touched. The prefix must be a valid namespace
/// name of at least 3 characters, so an accidental `""` or `"h"` cannot wipe
/// unrelated namespaces.
///
/// # Errors
///
/// [`NetnsError::InvalidName`] for a bad prefix, [`NetnsError::Io`] when
/// [`NETNS_RUN_DIR`] cannot be read, else the first deletion error (every
/// namespace is still attempted).
pub fn cleanup_prefix(prefix: &str) -> Result<Vec<String>> {
    validate_name(prefix)?;
    if prefix.len() < 3 {
        return Err(NetnsError::InvalidName {
            name: prefix.to_string(),
            reason: "a cleanup prefix needs at least 3 characters",
        });
    }
    let mut names: Vec<String> = match std::fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(NetnsError::Io {
                command: format!("read_dir {NETNS_RUN_DIR}"),
                source,
            });
        }
    };
    // Reverse order: pods (longest names) before nodes before the switch.
    names.sort();
    names.reverse();
    let mut first_error = None;
    for name in &names {
        if let Err(e) = delete_netns(name) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(names),
    }
}

/// Names of existing named namespaces that start with `prefix`.
pub fn list_prefix(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_RUN_DIR)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// Resolves a namespace name (`/run/netns/<name>`) or a path to its file.
fn resolve(ns_name_or_path: &str) -> PathBuf {
    if ns_name_or_path.contains('/') {
        PathBuf::from(ns_name_or_path)
    } else {
        netns_path(ns_name_or_path)
    }
}

/// Runs `f` on a fresh thread that first enters network namespace
/// `ns_name_or_path` (a name under `/run/netns` or a path such as
/// `/proc/<pid>/ns/net`) with `setns(CLONE_NEWNET)`, and returns its result.
///
/// Sockets, netlink sockets and tc/BPF attachments made in `f` belong to that
/// namespace, and stay there when returned. The calling thread's namespace is
/// never changed. A panic in `f` is resumed on the caller.
///
/// # Errors
///
/// [`NetnsError::NotFound`] when the namespace file does not exist,
/// [`NetnsError::Enter`] when it cannot be opened or `setns(2)` refuses it,
/// [`NetnsError::Thread`] when no thread can be spawned.
pub fn with_netns<T, F>(ns_name_or_path: &str, f: F) -> Result<T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let path = resolve(ns_name_or_path);
    let file = File::open(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            NetnsError::NotFound(ns_name_or_path.to_string())
        } else {
            NetnsError::Enter {
                path: path.clone(),
                source,
            }
        }
    })?;
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("hoptrace-netns".to_string())
            .spawn_scoped(scope, move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok::<T, std::io::Error>(f())
            })
            .map_err(|source| NetnsError::Thread {
                path: path.clone(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result.map_err(|source| NetnsError::Enter {
                path: path.clone(),
                source,
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Inode number of the calling thread's network namespace.
///
/// # Errors
///
/// [`NetnsError::Enter`] when `/proc/thread-self/ns/net` cannot be read
/// (no procfs).
pub fn current_netns_inode() -> Result<u64> {
    netns_inode("/proc/thread-self/ns/net")
}

/// Inode number of the network namespace at `path` (a `/run/netns/<name>` bind
/// mount or a `/proc/<pid>/ns/net` link); equal inodes mean the same namespace.
///
/// # Errors
///
/// [`NetnsError::Enter`] when `path` cannot be stat'ed.
pub fn netns_inode(path: impl AsRef<Path>) -> Result<u64> {
    let path = path.as_ref();
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|source| NetnsError::Enter {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        assert_eq!(
            command_line(&["ip", "-n", "ht-a", "route", "add", "10.0.0.0/24"]),
            "ip -n ht-a route add 10.0.0.0/24"
        );
        assert_eq!(
            command_line(&["iptables", "-m", "comment", "--comment", "a b's"]),
            r"iptables -m comment --comment 'a b'\''s'"
        );
        assert_eq!(command_line(&["x", ""]), "x ''");
    }

    #[test]
    fn missing_tool_is_typed_with_package() {
        let err = find_tool("hoptrace-no-such-tool-xyz").unwrap_err();
        assert!(
            matches!(err, NetnsError::MissingTool { ref tool, .. } if tool == "hoptrace-no-such-tool-xyz")
        );
        let err = run_tool(&["hoptrace-no-such-tool-xyz", "--help"]).unwrap_err();
        assert!(matches!(err, NetnsError::MissingTool { .. }), "{err}");
    }

    #[test]
    fn failing_command_carries_line_and_stderr() {
        let err = run_tool(&["sh", "-c", "echo boom >&2; exit 3"]).unwrap_err();
        match err {
            NetnsError::CommandFailed {
                command,
                status,
                stderr,
            } => {
                assert_eq!(command, "sh -c 'echo boom >&2; exit 3'");
                assert!(status.contains('3'), "{status}");
                assert_eq!(stderr, "boom");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn stdin_is_delivered() {
        let input = "x".repeat(300_000);
        let output = run_tool_with_stdin(&["wc", "-c"], input.as_bytes()).unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "300000");
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("ht-t1n0p1").is_ok());
        for bad in ["", "-x", "a/b", "a b", "../x", &"a".repeat(65)] {
            assert!(
                matches!(validate_name(bad), Err(NetnsError::InvalidName { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            cleanup_prefix("h"),
            Err(NetnsError::InvalidName { .. })
        ));
    }

    #[test]
    fn with_netns_reports_missing_namespace() {
        let err = with_netns("ht-surely-missing-ns-123", || ()).unwrap_err();
        assert!(matches!(err, NetnsError::NotFound(_)), "{err}");
    }

    #[test]
    fn current_inode_matches_self_path() {
        let via_self = netns_inode("/proc/self/ns/net").unwrap();
        assert_eq!(current_netns_inode().unwrap(), via_self);
    }
}
