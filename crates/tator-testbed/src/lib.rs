//! A real local Kubernetes control plane for tests, the demo and benchmarks.
//!
//! [`Cluster::start`] launches etcd, kube-apiserver (TLS, RBAC, ServiceAccount tokens, PodSecurity
//! admission), kube-controller-manager, kube-scheduler and kwok (fake nodes, so Pods reach
//! Running without a container runtime) on free loopback ports in a folder of its own, writes an
//! admin kubeconfig, waits until the control plane is healthy and runs a small load-balancer status
//! controller that gives each `type: LoadBalancer` Service an address from the loopback range.
//! Every process is stopped, in reverse order, when the [`Cluster`] is stopped or dropped.
//!
//! The binaries come from `tests/tools/build.sh` (built from pinned Go modules, cached outside
//! the clone). Test support (a cluster shared per test binary, namespaces, CRD installation,
//! waiting with useful messages) is in [`support`].

pub mod browser;
pub mod cluster;
pub mod lb;
pub mod pki;
pub mod procnode;
pub mod services;
pub mod support;

use std::path::{Path, PathBuf};

pub use cluster::{Binaries, Cluster, ClusterOptions, FakeNode};

/// Everything that can go wrong while running the test bed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not generate {what}: {source}")]
    Pki {
        what: &'static str,
        source: rcgen::Error,
    },
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not start {process}: {source}")]
    Spawn {
        process: String,
        source: std::io::Error,
    },
    #[error("{process} exited early ({status}); last lines of {log}:\n{tail}")]
    Exited {
        process: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out after {seconds} s waiting for {what}{last}")]
    Timeout {
        what: String,
        seconds: u64,
        last: String,
    },
    #[error("test bed binaries not found: {0}")]
    Binaries(String),
    #[error("Kubernetes client error while {action}: {source}")]
    Kube { action: String, source: kube::Error },
    #[error("invalid YAML in {path}: {message}")]
    Yaml { path: PathBuf, message: String },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable only by its owner (keys and kubeconfigs live in these files).
pub(crate) fn write_private(path: &Path, contents: &str) -> Result<(), Error> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents.as_bytes()).map_err(io_err(path))
}

/// Last `n` lines of a log file, for error messages.
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
