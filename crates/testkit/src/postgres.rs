//! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start`
//! on a free loopback port, removed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    ip: std::net::IpAddr,
    port: u16,
    as_postgres_user: bool,
}

impl Postgres {
    /// Creates and starts a new cluster (about a second).
    pub fn start() -> anyhow::Result<Postgres> {
        Self::start_on(std::net::IpAddr::from([127, 0, 0, 1]))
    }

    /// Like [`Postgres::start`], listening on `ip` (any 127.x.y.z works on
    /// loopback: several "hosts" on one machine).
    pub fn start_on(ip: std::net::IpAddr) -> anyhow::Result<Postgres> {
        let bin = find_bin()?;
        let dir = tempfile::Builder::new().prefix("tandem-pg-").tempdir()?;
        let as_postgres_user = nix::unistd::Uid::effective().is_root();
        if as_postgres_user {
            // initdb refuses to run as root: hand the directory to `postgres`.
            let pg = nix::unistd::User::from_name("postgres")?
                .context("running as root, but there is no `postgres` user to run the server")?;
            nix::unistd::chown(dir.path(), Some(pg.uid), Some(pg.gid))?;
        }
        let pg = Postgres {
            dir,
            bin,
            ip,
            port: crate::free_addr_on(ip).port(),
            as_postgres_user,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data_dir(),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@{}/{database}", self.addr())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ip:port` it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }

    /// Stops the server at once, as a crash would (immediate shutdown).
    pub fn kill(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        )
    }

    /// Creates a database and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        self.run(
            "psql",
            &[
                "-h",
                &self.ip.to_string(),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                &format!("CREATE DATABASE \"{name}\""),
            ],
        )?;
        Ok(self.url_for(name))
    }

    /// Runs SQL in `database` with psql, failing on the first error.
    pub fn execute(&self, database: &str, sql: &str) -> anyhow::Result<()> {
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                sql,
            ],
        )
    }

    /// Stops the server (fast shutdown), keeping its data.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "fast", "-w", "stop"],
        )
    }

    /// Starts it again on the same port after [`Postgres::stop`].
    pub fn restart(&self) -> anyhow::Result<()> {
        self.start_server()
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses={} -c unix_socket_directories={} -c fsync=off -c max_connections=300",
            self.port,
            self.ip,
            self.dir.path().display()
        );
        let log = self.dir.path().join("pg.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data_dir(),
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ],
        )
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").to_string_lossy().into_owned()
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let exe = if tool == "psql" {
            which_psql(&self.bin)
        } else {
            self.bin.join(tool)
        };
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or `PG_BIN` when set.
fn find_bin() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found under /usr/lib/postgresql (apt-get install postgresql)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, p)| p)
        .context("no /usr/lib/postgresql/<version>/bin/initdb found (apt-get install postgresql)")
}

fn which_psql(bin: &Path) -> PathBuf {
    let p = bin.join("psql");
    if p.exists() { p } else { PathBuf::from("psql") }
}
