//! Real PostgreSQL and Redis servers for tests, from Debian's packages (`postgresql-15`,
//! `postgresql-15-postgis-3`, `redis-server`), started on free loopback ports in a temporary
//! folder as the unprivileged user `nobody`, and stopped (with their folder removed) on drop;
//! and SeaweedFS (S3), built from its Go module.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{Error, io_err, tail};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const RUN_AS: &str = "nobody";

use crate::cluster::free_port;

/// A command run as the unprivileged user (when this process is root).
fn as_user(program: &str) -> Command {
    if nix::unistd::Uid::effective().is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", RUN_AS, "--", program]);
        c
    } else {
        Command::new(program)
    }
}

fn chown_to_user(path: &Path) -> Result<(), Error> {
    if nix::unistd::Uid::effective().is_root() {
        let status = Command::new("chown")
            .args(["-R", &format!("{RUN_AS}:nogroup")])
            .arg(path)
            .status()
            .map_err(|source| Error::Spawn {
                process: "chown".into(),
                source,
            })?;
        if !status.success() {
            return Err(Error::Binaries(format!(
                "chown of {} failed",
                path.display()
            )));
        }
    }
    Ok(())
}

fn temp_dir(label: &str) -> Result<tempfile::TempDir, Error> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("tator-{label}-"))
        .tempdir()
        .map_err(io_err(Path::new("tempdir")))?;
    // Let the unprivileged user reach its folder.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io_err(dir.path()))?;
    Ok(dir)
}

fn wait_port(child: &mut Child, port: u16, log: &Path, what: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Exited {
                process: what.into(),
                status: status.to_string(),
                log: log.to_path_buf(),
                tail: tail(log, 20),
            });
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: format!("{what} on 127.0.0.1:{port}"),
                seconds: 30,
                last: format!("; log:\n{}", tail(log, 20)),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Spawns `cmd` with its output in `log` and waits until it listens on `port`; a server that does
/// not come up is stopped.
fn serve(cmd: &mut Command, log: &Path, port: u16, what: &str) -> Result<Child, Error> {
    let out = std::fs::File::create(log).map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| Error::Spawn {
            process: what.into(),
            source,
        })?;
    if let Err(e) = wait_port(&mut child, port, log, what) {
        stop(&mut child);
        return Err(e);
    }
    Ok(child)
}

fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Starts a server with `start(attempt)` (attempts count from 1), and starts it again, up to four
/// times, when it exited because a port was taken between picking it and binding it (other tests
/// pick ports at the same time).
fn on_a_free_port<T>(mut start: impl FnMut(u32) -> Result<T, Error>) -> Result<T, Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match start(attempt) {
            // The whole log: a Go server's fatal error is followed by its goroutines' stacks,
            // which push the message out of the tail.
            Err(Error::Exited { log, tail, .. })
                if attempt < 4
                    && [
                        tail.as_str(),
                        &std::fs::read_to_string(&log).unwrap_or_default(),
                    ]
                    .iter()
                    .any(|t| t.contains("not available") || t.contains("already in use")) => {}
            other => return other,
        }
    }
}

/// A PostgreSQL 15 server with PostGIS available (no pgvector: Debian 12 does not package it).
pub struct Postgres {
    pub port: u16,
    /// A login role with a password (scram-sha-256), owner of `database`.
    pub user: String,
    pub password: String,
    pub database: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// Starts a server on a free loopback port without TLS, with `user`/`password` owning
    /// `database`.
    pub fn start(user: &str, password: &str, database: &str) -> Result<Self, Error> {
        let dir = temp_dir("postgres")?;
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, "superpass\n").map_err(io_err(&pwfile))?;
        chown_to_user(dir.path())?;
        let log = dir.path().join("postgres.log");
        let out = as_user(&format!("{PG_BIN}/initdb"))
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=scram-sha-256", "--pwfile"])
            .arg(&pwfile)
            .output()
            .map_err(|source| Error::Spawn {
                process: "initdb".into(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Binaries(format!(
                "initdb failed (is postgresql-15 installed?): {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let (port, child) = on_a_free_port(|_| {
            let port = free_port()?;
            let mut cmd = as_user(&format!("{PG_BIN}/postgres"));
            cmd.arg("-D")
                .arg(&data)
                .args([
                    "-p",
                    &port.to_string(),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "ssl=off",
                    "-k",
                ])
                .arg(dir.path());
            Ok((port, serve(&mut cmd, &log, port, "postgres")?))
        })?;
        let mut pg = Self {
            port,
            user: user.into(),
            password: password.into(),
            database: database.into(),
            child,
            _dir: dir,
        };
        // The port opens a moment before the server takes queries ("the database system is
        // starting up"): wait until one answers.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while let Err(e) = pg.query("postgres", "SELECT 1") {
            if std::time::Instant::now() > deadline {
                return Err(e);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        pg.psql(
            "postgres",
            &format!("CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}'"),
        )?;
        pg.psql(
            "postgres",
            &format!("CREATE DATABASE \"{database}\" OWNER \"{user}\""),
        )?;
        Ok(pg)
    }

    /// Runs SQL as the superuser and returns what it printed (unaligned, tuples only).
    pub fn query(&mut self, db: &str, sql: &str) -> Result<String, Error> {
        let out = Command::new(format!("{PG_BIN}/psql"))
            .env("PGPASSWORD", "superpass")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
            .output()
            .map_err(|source| Error::Spawn {
                process: "psql".into(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(Error::Binaries(format!(
                "psql failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    }

    /// Runs SQL as the superuser.
    pub fn psql(&mut self, db: &str, sql: &str) -> Result<(), Error> {
        self.query(db, sql).map(|_| ())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A Redis server, optionally with a password.
pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start(password: Option<&str>) -> Result<Self, Error> {
        let dir = temp_dir("redis")?;
        chown_to_user(dir.path())?;
        let log: PathBuf = dir.path().join("redis.log");
        let (port, child) = on_a_free_port(|_| {
            let port = free_port()?;
            let mut cmd = as_user("redis-server");
            cmd.args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(dir.path());
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw]);
            }
            Ok((port, serve(&mut cmd, &log, port, "redis-server")?))
        })?;
        Ok(Self {
            port,
            password: password.map(str::to_string),
            child,
            _dir: dir,
        })
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A SeaweedFS server (`weed mini`: master, volume, filer and S3 gateway in one process) built
/// from its Go module by `tests/tools/build.sh`, every listener on a free loopback port.
pub struct Seaweed {
    /// Base URL of the S3 API, for example `http://127.0.0.1:23456`.
    pub s3_url: String,
    /// `host:port.grpcPort` of the master, for `weed shell -master=...`.
    pub master: String,
    /// The `weed` binary.
    pub weed: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Seaweed {
    /// Starts a server whose S3 gateway knows the identities in `s3_config` (SeaweedFS's
    /// `-s3.config` JSON), and creates `buckets`. Telemetry is off.
    pub fn start(s3_config: &serde_json::Value, buckets: &[&str]) -> Result<Self, Error> {
        let weed = crate::cluster::Binaries::locate()?.bin("weed");
        if !weed.is_file() {
            return Err(Error::Binaries(format!(
                "missing {}; run `make tools` first",
                weed.display()
            )));
        }
        let dir = temp_dir("seaweedfs")?;
        let config = dir.path().join("s3.json");
        std::fs::write(&config, s3_config.to_string()).map_err(io_err(&config))?;
        let log: PathBuf = dir.path().join("weed.log");
        let (child, ports) =
            on_a_free_port(|attempt| Self::launch(&weed, dir.path(), &config, &log, attempt))?;
        let s3_port = ports.get("s3.port").copied().unwrap_or_default();
        let master_port = ports.get("master.port").copied().unwrap_or_default();
        let master_grpc = ports.get("master.port.grpc").copied().unwrap_or_default();
        let server = Self {
            s3_url: format!("http://127.0.0.1:{s3_port}"),
            // host:port.grpcPort: the gRPC port is not the default HTTP port + 10000 here.
            master: format!("127.0.0.1:{master_port}.{master_grpc}"),
            weed,
            child,
            _dir: dir,
        };
        for bucket in buckets {
            server.shell(&format!("s3.bucket.create -name {bucket}"))?;
        }
        Ok(server)
    }

    /// Starts `weed mini` on fresh ports (a fresh data folder per attempt) and waits for its S3
    /// gateway; returns the process and the ports by flag.
    fn launch(
        weed: &Path,
        dir: &Path,
        config: &Path,
        log: &Path,
        attempt: u32,
    ) -> Result<(Child, std::collections::BTreeMap<&'static str, u16>), Error> {
        let data = dir.join(format!("data-{attempt}"));
        std::fs::create_dir(&data).map_err(io_err(&data))?;
        let mut ports = std::collections::BTreeMap::new();
        let mut taken = std::collections::BTreeSet::new();
        // gRPC ports are separate flags; SeaweedFS's default is the HTTP port + 10000, which
        // would leave the range free_port picks from.
        for flag in [
            "master.port",
            "volume.port",
            "filer.port",
            "s3.port",
            "s3.port.iceberg",
            "s3.port.lance",
            "admin.port",
            "admin.port.legacy",
            "metricsPort",
            "s3.metricsPort",
            "master.port.grpc",
            "volume.port.grpc",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port.grpc",
        ] {
            let port = loop {
                let p = free_port()?;
                if taken.insert(p) {
                    break p;
                }
            };
            ports.insert(flag, port);
        }
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-webdav=false",
                "-admin.ui=false",
            ])
            .arg(format!("-s3.config={}", config.display()));
        for (flag, port) in &ports {
            cmd.arg(format!("-{flag}={port}"));
        }
        cmd.current_dir(dir);
        let s3_port = ports.get("s3.port").copied().unwrap_or_default();
        Ok((serve(&mut cmd, log, s3_port, "weed mini (S3)")?, ports))
    }

    /// Runs one `weed shell` command against this server (retried while the filer starts).
    pub fn shell(&self, command: &str) -> Result<String, Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut child = Command::new(&self.weed)
                .arg("shell")
                .arg(format!("-master={}", self.master))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|source| Error::Spawn {
                    process: "weed shell".into(),
                    source,
                })?;
            if let Some(mut stdin) = child.stdin.take() {
                use std::io::Write;
                let _ = writeln!(stdin, "{command}");
            }
            let out = child.wait_with_output().map_err(|source| Error::Spawn {
                process: "weed shell".into(),
                source,
            })?;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if out.status.success() {
                return Ok(text);
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout {
                    what: format!("weed shell `{command}`"),
                    seconds: 30,
                    last: format!(": {text}"),
                });
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(tail: &str) -> Error {
        Error::Exited {
            process: "server".into(),
            status: "exit status: 1".into(),
            log: PathBuf::from("server.log"),
            tail: tail.into(),
        }
    }

    #[test]
    fn a_port_clash_starts_the_server_again_and_other_failures_do_not() {
        let mut attempts = Vec::new();
        let started = on_a_free_port(|a| {
            attempts.push(a);
            match a {
                1 => Err(exited("bind: Address already in use")),
                2 => Err(exited("port 26414 for S3 is not available on 127.0.0.1")),
                _ => Ok(a),
            }
        });
        assert_eq!(started.ok(), Some(3));
        assert_eq!(attempts, [1, 2, 3]);

        let mut n = 0;
        let other = on_a_free_port(|_| -> Result<(), Error> {
            n += 1;
            Err(exited("FATAL: data directory has wrong ownership"))
        });
        assert!(other.is_err());
        assert_eq!(n, 1);

        let mut n = 0;
        let clashing = on_a_free_port(|_| -> Result<(), Error> {
            n += 1;
            Err(exited("Address already in use"))
        });
        assert!(clashing.is_err());
        assert_eq!(n, 4, "gives up after four attempts");
    }
}
