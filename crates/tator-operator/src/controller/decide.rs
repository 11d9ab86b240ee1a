//! The controller's decisions after a reconcile, as pure functions: when to look again, which
//! Events a status change is worth, and whether a deletion that cannot clean up its job clusters
//! goes ahead. The pipeline gathers the facts and acts on the answers.

use std::time::Duration;

use kube::runtime::events::EventType;
use tator_api::TatorDeploymentStatus;

/// What the requeue depends on, as the reconcile found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequeueFacts {
    /// The installation is Ready.
    pub ready: bool,
    /// A version change is still being settled (a migration just ran).
    pub settling: bool,
    /// Some dependency is a managed service (re-checked every minute).
    pub managed_services: bool,
    /// Workflows run here but Argo's CRDs are missing (it may be installed later).
    pub awaiting_argo: bool,
    /// Every dependency is ready.
    pub dependencies_ready: bool,
}

/// When to reconcile again. `resync` is the operator's setting; `dependency_backoff` grows while
/// a dependency stays down.
pub fn requeue(f: RequeueFacts, resync: Duration, dependency_backoff: Duration) -> Duration {
    let minute = resync.min(Duration::from_secs(60));
    if f.ready && f.settling {
        // A migration just succeeded: come back at once to read the new version back from
        // status and retire the Job.
        Duration::from_secs(1)
    } else if f.ready && (f.managed_services || f.awaiting_argo) {
        // Managed services are re-checked every minute (one that goes away flips its
        // condition); Argo may be installed later.
        minute
    } else if f.ready {
        resync
    } else if !f.dependencies_ready {
        // Dependency checks back off while a service stays unavailable.
        dependency_backoff
    } else {
        Duration::from_secs(10)
    }
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventSpec {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

fn condition<'a>(
    s: &'a TatorDeploymentStatus,
    type_: &str,
    reason: Option<&str>,
) -> Option<&'a str> {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_ && reason.is_none_or(|r| c.reason == r))
        .map(|c| c.message.as_str())
}

/// The Events a status change is worth: a phase change once the new status is written (the
/// phase is the reason, so the recorder folds repeats into a series), and newly held-back changes
/// of a paused installation.
pub fn status_events(
    old: Option<&TatorDeploymentStatus>,
    new: &TatorDeploymentStatus,
    written: bool,
) -> Vec<EventSpec> {
    let mut out = Vec::new();
    let old_phase = old.and_then(|s| s.phase.clone());
    if written && old_phase != new.phase {
        let new_phase = new.phase.clone().unwrap_or_default();
        let type_ = if new_phase == "Failed" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        let detail = condition(
            new,
            if type_ == EventType::Warning {
                "Stalled"
            } else {
                "Ready"
            },
            None,
        )
        .unwrap_or_default();
        let from = old_phase.unwrap_or_else(|| "None".into());
        out.push(EventSpec {
            type_,
            reason: new_phase.clone(),
            note: format!("{from} -> {new_phase}: {detail}"),
        });
    }
    let now_pending = condition(new, "Paused", Some("ChangesPending"));
    let was_pending = old.and_then(|s| condition(s, "Paused", Some("ChangesPending")));
    if let Some(msg) = now_pending
        && now_pending != was_pending
    {
        out.push(EventSpec {
            type_: EventType::Warning,
            reason: "ChangesPending".into(),
            note: msg.to_string(),
        });
    }
    out
}

/// What a deletion whose job clusters could not all be cleaned up does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Remove the finalizer anyway, for this reason.
    GoAhead(String),
    /// Keep waiting; deletion goes ahead by itself after this many seconds.
    Wait { remaining: u64 },
}

/// Deletion goes ahead without the job clusters when asked to (`force`), when no cluster can be
/// reached however long it waits (`hopeless`: their kubeconfig Secrets are gone), or once the
/// shortest cleanup timeout (`limit_seconds`) has passed since deletion began (`waited`).
pub fn deletion(force: bool, hopeless: bool, waited: Duration, limit_seconds: i32) -> Deletion {
    let limit = u64::try_from(limit_seconds).unwrap_or(0);
    if force {
        Deletion::GoAhead(format!(
            "{} is set",
            super::job_clusters::FORCE_DELETE_ANNOTATION
        ))
    } else if hopeless {
        Deletion::GoAhead("the kubeconfig Secret is gone".into())
    } else if waited >= Duration::from_secs(limit) {
        Deletion::GoAhead(format!("gave up after {limit} s"))
    } else {
        Deletion::Wait {
            remaining: limit.saturating_sub(waited.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    const RESYNC: Duration = Duration::from_secs(300);
    const BACKOFF: Duration = Duration::from_secs(40);

    fn after(f: RequeueFacts) -> Duration {
        requeue(f, RESYNC, BACKOFF)
    }

    #[test]
    fn ready_installations_wait_for_the_resync_unless_something_is_checked_every_minute() {
        let ready = RequeueFacts {
            ready: true,
            dependencies_ready: true,
            ..Default::default()
        };
        assert_eq!(after(ready), RESYNC);
        let settling = RequeueFacts {
            settling: true,
            ..ready
        };
        assert_eq!(after(settling), Duration::from_secs(1));
        let managed = RequeueFacts {
            managed_services: true,
            ..ready
        };
        assert_eq!(after(managed), Duration::from_secs(60));
        let argo = RequeueFacts {
            awaiting_argo: true,
            ..ready
        };
        assert_eq!(after(argo), Duration::from_secs(60));
        // A resync shorter than a minute wins.
        assert_eq!(
            requeue(managed, Duration::from_secs(20), BACKOFF),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn not_ready_backs_off_on_dependencies_else_looks_again_soon() {
        let down = RequeueFacts::default();
        assert_eq!(after(down), BACKOFF);
        let rolling = RequeueFacts {
            dependencies_ready: true,
            ..Default::default()
        };
        assert_eq!(after(rolling), Duration::from_secs(10));
        // Settling without Ready is an ordinary rollout.
        let settling = RequeueFacts {
            settling: true,
            dependencies_ready: true,
            ..Default::default()
        };
        assert_eq!(after(settling), Duration::from_secs(10));
    }

    fn status(phase: &str, conditions: &[(&str, &str, &str)]) -> TatorDeploymentStatus {
        TatorDeploymentStatus {
            phase: Some(phase.into()),
            conditions: conditions
                .iter()
                .map(|(t, r, m)| Condition {
                    type_: (*t).into(),
                    status: "True".into(),
                    reason: (*r).into(),
                    message: (*m).into(),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                    observed_generation: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_written_phase_change_is_one_event_named_after_the_phase() {
        let old = status("Progressing", &[]);
        let new = status("Ready", &[("Ready", "AllComponentsAvailable", "all good")]);
        let e = status_events(Some(&old), &new, true);
        assert_eq!(
            e,
            [EventSpec {
                type_: EventType::Normal,
                reason: "Ready".into(),
                note: "Progressing -> Ready: all good".into(),
            }]
        );
        // Not written (a conflict), or no change: nothing.
        assert!(status_events(Some(&old), &new, false).is_empty());
        assert!(status_events(Some(&new), &new, true).is_empty());
        // Failed is a warning with the Stalled message; a first status starts from None.
        let failed = status("Failed", &[("Stalled", "MigrationFailed", "see the Job")]);
        let e = status_events(None, &failed, true);
        assert_eq!(e[0].type_, EventType::Warning);
        assert_eq!(e[0].note, "None -> Failed: see the Job");
    }

    #[test]
    fn held_back_changes_are_announced_once_per_new_message() {
        let paused = |msg: &str| {
            status(
                "Paused",
                &[("Paused", "ChangesPending", msg), ("Ready", "Paused", "")],
            )
        };
        let first = paused("Deployment/tator-ui");
        let e = status_events(Some(&status("Paused", &[])), &first, false);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].reason, "ChangesPending");
        assert!(status_events(Some(&first), &first, false).is_empty());
        let more = paused("Deployment/tator-ui, Deployment/tator-api");
        assert_eq!(status_events(Some(&first), &more, false).len(), 1);
    }

    #[test]
    fn deletion_waits_for_the_cleanup_timeout_unless_forced_or_hopeless() {
        let w = |s| Duration::from_secs(s);
        assert_eq!(
            deletion(false, false, w(100), 300),
            Deletion::Wait { remaining: 200 }
        );
        assert_eq!(
            deletion(false, false, w(300), 300),
            Deletion::GoAhead("gave up after 300 s".into())
        );
        assert!(
            matches!(deletion(true, false, w(0), 300), Deletion::GoAhead(r) if r.contains("force-delete"))
        );
        assert_eq!(
            deletion(false, true, w(0), 300),
            Deletion::GoAhead("the kubeconfig Secret is gone".into())
        );
    }
}
