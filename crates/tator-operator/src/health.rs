//! The operator's HTTP endpoint for the kubelet and Prometheus: `/healthz` (the process serves)
//! and `/readyz` (this replica does its job: the leader once its watches are listed, a standby
//! while it stands for election). More routes (`/metrics`) are merged in through `extra`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tracing::info;

/// What this replica is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Connecting, installing the CRD or creating the Lease.
    Starting = 0,
    /// Waiting for the Lease held by another replica.
    Standby = 1,
    /// Running the controller (the only replica that writes).
    Leader = 2,
    /// Shutting down or stepping down: releasing the Lease.
    Stopping = 3,
}

impl Role {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Standby,
            2 => Self::Leader,
            3 => Self::Stopping,
            _ => Self::Starting,
        }
    }

    /// The word `/readyz` answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Standby => "standby",
            Self::Leader => "leader",
            Self::Stopping => "stopping",
        }
    }
}

/// Health of the process, shared between the election loop, the controller and the server.
#[derive(Debug, Default)]
pub struct HealthState {
    role: AtomicU8,
    synced: AtomicBool,
}

impl HealthState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
        if role != Role::Leader {
            self.synced.store(false, Ordering::Release);
        }
    }

    /// The controller's watches have listed their objects once.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// `/readyz`: the status code and a one-line body.
    ///
    /// A standby is ready: it is doing its job (standing by), and a not-ready standby would hold
    /// every rolling update of the operator's Deployment and every drain under its
    /// PodDisruptionBudget forever. Which replica leads is in the body and in the Lease.
    pub fn readiness(&self) -> (StatusCode, String) {
        let role = self.role();
        match role {
            Role::Leader if self.synced() => (StatusCode::OK, "leader: watches synced".into()),
            Role::Leader => (
                StatusCode::SERVICE_UNAVAILABLE,
                "leader: watches syncing".into(),
            ),
            Role::Standby => (StatusCode::OK, "standby: waiting for the lease".into()),
            Role::Starting | Role::Stopping => {
                (StatusCode::SERVICE_UNAVAILABLE, role.as_str().into())
            }
        }
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the health server on {addr} failed: {source}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The routes: `/healthz`, `/readyz`, and `extra` (for example `/metrics`) merged in.
pub fn router(state: Arc<HealthState>, extra: Option<Router>) -> Router {
    let health = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<Arc<HealthState>>| async move { s.readiness() }),
        )
        .with_state(state);
    match extra {
        Some(extra) => health.merge(extra),
        None => health,
    }
}

/// Listens on `addr` and serves [`router`] until the future is dropped.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<HealthState>,
    extra: Option<Router>,
) -> Result<(), HealthError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(addr = %local, "serving /healthz and /readyz");
    axum::serve(listener, router(state, extra))
        .await
        .map_err(|source| HealthError::Serve {
            addr: local,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_role_and_sync() {
        let s = HealthState::new();
        assert_eq!(s.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        s.set_role(Role::Standby);
        assert_eq!(s.readiness().0, StatusCode::OK);
        s.set_role(Role::Leader);
        assert_eq!(
            s.readiness(),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "leader: watches syncing".into()
            )
        );
        s.set_synced();
        assert_eq!(
            s.readiness(),
            (StatusCode::OK, "leader: watches synced".into())
        );
        s.set_role(Role::Stopping);
        assert_eq!(s.readiness().0, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!s.synced());
    }
}
