//! Leader election on a `coordination.k8s.io` Lease, timed by this process's own clock.
//!
//! - A standby takes the Lease only once it has seen the same record, unchanged, for a whole
//!   lease duration on its own clock (no comparison of clocks between machines).
//! - The leader renews every `retry`; a failed or slow renewal is retried until `renew_deadline`
//!   after the start of the last successful one. Then it steps down on its own, before any
//!   standby can take the Lease: `renew_deadline` is shorter than the lease duration by the
//!   grace, the clock drift tolerated. An API server that freezes for longer than the lease
//!   therefore costs one leader, never two at once.
//! - Every request has a timeout, so a hung connection counts as a failed renewal.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams, ResourceExt},
};

/// Timing and names of one Lease.
#[derive(Clone, Debug)]
pub struct Settings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease stays valid after its last renewal.
    pub duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (less than `duration`).
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew.
    pub retry: Duration,
}

impl Settings {
    /// From the command line's lease duration and grace (seconds): renew_deadline =
    /// duration - grace, retry = a third of that (at least 1 s).
    pub fn new(name: &str, namespace: &str, identity: &str, duration: u64, grace: u64) -> Self {
        let renew_deadline = Duration::from_secs(duration.saturating_sub(grace).max(1));
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(duration),
            renew_deadline,
            retry: (renew_deadline / 3).max(Duration::from_secs(1)),
        }
    }
}

/// What an attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The Lease is ours (acquired or renewed).
    Held,
    /// Another identity holds a Lease that has not expired.
    HeldBy(String),
}

/// The Lease as this process sees it.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    /// The last record seen (holder, renew time, transitions) and when, on our clock.
    observed: Option<(String, Instant)>,
    /// When the last successful renewal was sent, on our clock.
    renewed: Option<Instant>,
}

fn record(spec: &LeaseSpec) -> String {
    format!(
        "{:?}/{:?}/{:?}",
        spec.holder_identity,
        spec.renew_time.as_ref().map(|t| t.0),
        spec.lease_transitions
    )
}

impl Elector {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            renewed: None,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Whether the leader must step down: no renewal has succeeded within the renew deadline.
    pub fn expired(&self) -> bool {
        self.renewed
            .is_none_or(|at| at.elapsed() >= self.settings.renew_deadline)
    }

    /// How long the leader may still try to renew.
    pub fn remaining(&self) -> Duration {
        self.renewed.map_or(Duration::ZERO, |at| {
            self.settings.renew_deadline.saturating_sub(at.elapsed())
        })
    }

    /// One attempt to acquire or renew, bounded by `timeout`.
    pub async fn try_acquire_or_renew(&mut self, timeout: Duration) -> Result<Attempt, String> {
        let started = Instant::now();
        match tokio::time::timeout(timeout, self.attempt(started)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no answer from the API server within {} ms",
                timeout.as_millis()
            )),
        }
    }

    async fn attempt(&mut self, started: Instant) -> Result<Attempt, String> {
        let me = self.settings.identity.clone();
        let seconds = i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX);
        let now = MicroTime(Timestamp::now());
        let live = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| crate::error::brief(&e))?;
        let Some(lease) = live else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => Ok(self.took(created, started)),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::HeldBy("?".into())),
                Err(e) => Err(crate::error::brief(&e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = record(&spec);
        if self.observed.as_ref().is_none_or(|(r, _)| *r != seen) {
            self.observed = Some((seen, Instant::now()));
        }
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let theirs = holder.as_ref().is_some_and(|h| *h != me);
        if let Some(holder) = holder.as_ref().filter(|_| theirs) {
            // Their duration, on our clock since the record last changed.
            let valid = Duration::from_secs(
                spec.lease_duration_seconds
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(self.settings.duration.as_secs()),
            );
            let unchanged_for = self
                .observed
                .as_ref()
                .map_or(Duration::ZERO, |(_, at)| at.elapsed());
            if unchanged_for < valid {
                return Ok(Attempt::HeldBy(holder.clone()));
            }
        }
        let mut next = spec;
        if holder.as_deref() != Some(me.as_str()) {
            next.acquire_time = Some(now.clone());
            next.lease_transitions = Some(next.lease_transitions.unwrap_or(0) + 1);
        }
        next.holder_identity = Some(me);
        next.lease_duration_seconds = Some(seconds);
        next.renew_time = Some(now);
        // The resourceVersion in the patch makes it a compare-and-swap: of two standbys, one
        // wins (409 for the other).
        let spec = serde_json::to_value(&next).map_err(|e| e.to_string())?;
        match self.swap(lease.resource_version(), spec).await {
            Ok(updated) => Ok(self.took(updated, started)),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                Ok(Attempt::HeldBy(holder.unwrap_or_else(|| "?".into())))
            }
            Err(e) => Err(crate::error::brief(&e)),
        }
    }

    /// Merges `spec` into the Lease if it is still at `resource_version` (409 otherwise).
    async fn swap(
        &self,
        resource_version: Option<String>,
        spec: serde_json::Value,
    ) -> Result<Lease, kube::Error> {
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": resource_version},
            "spec": spec,
        });
        self.api
            .patch(
                &self.settings.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
    }

    fn took(&mut self, lease: Lease, started: Instant) -> Attempt {
        if let Some(spec) = &lease.spec {
            self.observed = Some((record(spec), Instant::now()));
        }
        self.renewed = Some(started);
        Attempt::Held
    }

    /// Gives the Lease up (when it is still ours), so a standby need not wait for it to expire.
    pub async fn release(&mut self, timeout: Duration) -> Result<(), String> {
        let release = async {
            let Some(lease) = self
                .api
                .get_opt(&self.settings.name)
                .await
                .map_err(|e| crate::error::brief(&e))?
            else {
                return Ok(());
            };
            let spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
                return Ok(());
            }
            // null removes the holder (a merge patch leaves out what is not named).
            let spec = serde_json::json!({"holderIdentity": null, "leaseDurationSeconds": 1,
                                          "renewTime": MicroTime(Timestamp::now())});
            self.swap(lease.resource_version(), spec)
                .await
                .map(|_| ())
                .map_err(|e| crate::error::brief(&e))
        };
        let result = tokio::time::timeout(timeout, release)
            .await
            .unwrap_or_else(|_| Err("no answer from the API server".into()));
        self.renewed = None;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_leader_gives_up_before_the_lease_can_expire() {
        let s = Settings::new("l", "ns", "me", 10, 3);
        assert_eq!(s.renew_deadline, Duration::from_secs(7));
        assert_eq!(s.retry.as_millis(), 2333);
        assert!(s.renew_deadline < s.duration);
        let s = Settings::new("l", "ns", "me", 2, 1);
        assert_eq!(s.renew_deadline, Duration::from_secs(1));
        assert_eq!(s.retry, Duration::from_secs(1));
    }
}
