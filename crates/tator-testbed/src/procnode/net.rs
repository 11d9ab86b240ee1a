//! Pod networking on loopback: one network namespace per pod, and a proxy that makes Services,
//! pod addresses and LoadBalancer addresses reach the pods' processes.
//!
//! A pod's namespace has only `lo`, so nothing a pod runs can reach anything but what the
//! process node forwards: no packet leaves 127.0.0.0/8. Every pod gets an address from
//! 127.244.0.0/16 (the cluster's pod range). Inside a pod's namespace the whole 127/8 block is
//! local, so a process bound to `0.0.0.0` answers on its pod address while one bound to
//! `127.0.0.1` does not: the same rule as a real pod, where probes, Services and other pods come
//! in through the pod address. The proxy listens, in each pod's namespace, on every Service's
//! cluster address and port and on every other pod's address and declared ports, and connects,
//! in the target pod's namespace, to that pod's address and target port.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use nix::sched::{CloneFlags, setns};
use tokio::sync::oneshot;

enum Request {
    Listen(SocketAddr, oneshot::Sender<io::Result<StdListener>>),
    Connect(SocketAddr, oneshot::Sender<io::Result<StdStream>>),
}

/// A pod's network namespace, bound to a file so that it outlives its processes, with a thread
/// that opens sockets inside it (a socket keeps the namespace it was made in).
pub struct Netns {
    pub path: PathBuf,
    requests: mpsc::Sender<Request>,
}

impl Netns {
    /// Creates the namespace at `path` (a new file) with `lo` up.
    pub fn create(path: &Path) -> io::Result<Self> {
        std::fs::write(path, b"")?;
        let run = |cmd: &mut Command| -> io::Result<()> {
            let out = cmd.output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "{cmd:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
        };
        run(Command::new("unshare")
            .arg(format!("--net={}", path.display()))
            .arg("true"))?;
        run(Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["ip", "link", "set", "lo", "up"]))?;
        Self::open(path)
    }

    /// Starts the socket thread for the namespace bound at `path` (`None` for the host's).
    fn open(path: &Path) -> io::Result<Self> {
        let file = if path.as_os_str().is_empty() {
            None
        } else {
            Some(File::open(path)?)
        };
        let (tx, rx) = mpsc::channel::<Request>();
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                if let Some(f) = file
                    && let Err(e) = setns(&f, CloneFlags::CLONE_NEWNET)
                {
                    let _ = ready_tx.send(Err(io::Error::other(e)));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while let Ok(req) = rx.recv() {
                    match req {
                        Request::Listen(addr, reply) => {
                            let l = StdListener::bind(addr).and_then(|l| {
                                l.set_nonblocking(true)?;
                                Ok(l)
                            });
                            let _ = reply.send(l);
                        }
                        Request::Connect(addr, reply) => {
                            let s = StdStream::connect_timeout(&addr, Duration::from_secs(2))
                                .and_then(|s| {
                                    s.set_nonblocking(true)?;
                                    Ok(s)
                                });
                            let _ = reply.send(s);
                        }
                    }
                }
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("netns thread ended"))??;
        Ok(Self {
            path: path.to_path_buf(),
            requests: tx,
        })
    }

    /// The host's own namespace (for LoadBalancer addresses).
    pub fn host() -> io::Result<Self> {
        Self::open(Path::new(""))
    }

    pub async fn listen(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Listen(addr, tx))
            .map_err(|_| io::Error::other("netns thread ended"))?;
        let l = rx
            .await
            .map_err(|_| io::Error::other("netns thread ended"))??;
        tokio::net::TcpListener::from_std(l)
    }

    pub async fn connect(&self, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Connect(addr, tx))
            .map_err(|_| io::Error::other("netns thread ended"))?;
        let s = rx
            .await
            .map_err(|_| io::Error::other("netns thread ended"))??;
        tokio::net::TcpStream::from_std(s)
    }

    /// Unbinds the namespace file (the namespace goes when its last process and socket do).
    pub fn remove(&self) {
        if !self.path.as_os_str().is_empty() {
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where a forwarded connection goes: a pod (by name) and the port in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub pod: String,
    pub addr: SocketAddr,
}

/// Lines of `/etc/hosts` for the names a pod resolves.
pub fn hosts_file(pod_ip: &str, pod_hostname: &str, names: &BTreeMap<String, String>) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    out.push_str(&format!("{pod_ip}\t{pod_hostname}\n"));
    for (name, ip) in names {
        out.push_str(&format!("{ip}\t{name}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_file_lists_the_pod_and_every_name() {
        let names = BTreeMap::from([(
            "tator-redis.tator.svc".to_string(),
            "127.96.0.7".to_string(),
        )]);
        let h = hosts_file("127.244.0.3", "tator-api-1", &names);
        assert!(h.contains("127.244.0.3\ttator-api-1\n"));
        assert!(h.contains("127.96.0.7\ttator-redis.tator.svc\n"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
    }
}
