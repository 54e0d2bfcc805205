//! Real workspace binaries as child processes, with their output captured
//! to a file (printed when a test fails) and killed on drop.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The path of a workspace binary built beside the running test
/// (`target/<profile>/<name>`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .expect("the test binary lives under target/");
    dir.join(name)
}

pub struct Process {
    name: String,
    child: Option<Child>,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Process {
    /// Spawns workspace binary `bin` with `args` and extra environment.
    /// `name` labels its log (e.g. `control-1`).
    pub fn spawn(
        name: &str,
        bin: &str,
        args: &[&str],
        env: &[(&str, String)],
    ) -> anyhow::Result<Process> {
        let path = bin_path(bin);
        if !path.exists() {
            bail!(
                "{} is not built; run `cargo build --workspace --bins` first",
                path.display()
            );
        }
        let mut cmd = Command::new(&path);
        cmd.args(args)
            // TANDEM_TEST_LOG sets the children's RUST_LOG when debugging.
            .env(
                "RUST_LOG",
                std::env::var("TANDEM_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("TANDEM_LOG_FORMAT", "text")
            .envs(env.iter().map(|(k, v)| (k, v)));
        Self::spawn_command(name, cmd)
    }

    /// Spawns any program (etcd, Patroni) prepared in `cmd`, with its
    /// output captured like a workspace binary's.
    pub fn spawn_command(name: &str, mut cmd: Command) -> anyhow::Result<Process> {
        let log_dir = tempfile::Builder::new().prefix("tandem-log-").tempdir()?;
        let log = log_dir.path().join(format!("{name}.log"));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {:?}", cmd.get_program()))?;
        Ok(Process {
            name: name.to_string(),
            child: Some(child),
            log,
            _log_dir: log_dir,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the process printed so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for it to exit.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("process already stopped")?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process freezes, its sockets stay open. Returns once
    /// every thread of it is stopped: the signal is delivered
    /// asynchronously, and on a loaded machine a thread can otherwise still
    /// answer a request after `kill` has returned.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
        let Some(c) = &self.child else { return };
        let tasks = format!("/proc/{}/task", c.id());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline && !all_stopped(&tasks) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Process::pause`].
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            let _ = kill(Pid::from_raw(c.id() as i32), sig);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused process must be continued to die cleanly.
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- {} log -----\n{}\n----- end of {} log -----",
                self.name,
                self.logs(),
                self.name
            );
        }
    }
}

/// Is every thread under `/proc/<pid>/task` in the stopped state (`T`)?
/// False when it cannot tell, so the caller waits out its bound.
fn all_stopped(tasks: &str) -> bool {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return false;
    };
    entries.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the command name, which is in parentheses
            // and may itself contain spaces or parentheses.
            .and_then(|stat| {
                stat.rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next().map(str::to_owned))
            })
            .is_some_and(|state| state == "T" || state == "t")
    })
}
