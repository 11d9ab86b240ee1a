//! The migrations Job that must succeed before a release serves, and the rollout decision.

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::PodSpec,
};
use std::collections::BTreeMap;

use super::common::*;
use crate::validate::{ValidatedTator, VersionPlan};

pub const MIGRATIONS: &str = "migrations";

/// The migrations Job for `version`. Its name carries a hash of its spec, so a changed Job (a new
/// image or podOverrides) is a new Job rather than a rejected update of an immutable one.
pub fn job(t: &ValidatedTator, version: &str) -> Job {
    let s = &t.spec.migrations;
    let mut c = container(
        "migrate",
        tator_image(t, "tator_online", version, &s.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    c.command = Some(vec!["sh".into(), "-c".into()]);
    c.args = Some(vec![
        "python3 manage.py makemigrations main && python3 manage.py makemigrations \
         && python3 manage.py migrate && python3 manage.py collectstatic --noinput"
            .into(),
    ]);
    c.working_dir = Some("/tator_online".into());
    c.env = Some(tator_env(t, version));
    c.volume_mounts = Some(shared_mounts(TATOR_SHARED, false));
    c.resources = Some(resources_or(&s.pod, requirements("500m", "1Gi", "8Gi")));
    let spec = PodSpec {
        containers: vec![c],
        volumes: Some(vec![shared_volume(t)]),
        security_context: Some(pod_security(TATOR_UID)),
        restart_policy: Some("Never".into()),
        termination_grace_period_seconds: Some(7200),
        ..Default::default()
    };
    let template = pod_template(t, MIGRATIONS, Some(version), spec, BTreeMap::new(), &s.pod);
    let job_spec = JobSpec {
        backoff_limit: Some(0),
        active_deadline_seconds: Some(s.active_deadline_seconds),
        template,
        ..Default::default()
    };
    let hash = serde_json::to_vec(&job_spec)
        .map(|b| short_hash(&b, 8))
        .unwrap_or_default();
    Job {
        metadata: child_meta(
            t,
            t.child_name(&format!("migrate-{hash}")),
            MIGRATIONS,
            Some(version),
        ),
        spec: Some(job_spec),
        status: None,
    }
}

/// State of a migrations Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Missing,
    Running,
    Succeeded,
    Failed(String),
}

pub fn job_state(job: Option<&Job>) -> JobState {
    let Some(job) = job else {
        return JobState::Missing;
    };
    let status = job.status.clone().unwrap_or_default();
    for c in status.conditions.unwrap_or_default() {
        if c.status == "True" && (c.type_ == "Complete" || c.type_ == "SuccessCriteriaMet") {
            return JobState::Succeeded;
        }
        if c.status == "True" && (c.type_ == "Failed" || c.type_ == "FailureTarget") {
            return JobState::Failed(
                c.message
                    .or(c.reason)
                    .unwrap_or_else(|| "the Job failed".into()),
            );
        }
    }
    if status.succeeded.unwrap_or(0) > 0 {
        JobState::Succeeded
    } else {
        JobState::Running
    }
}

/// What this reconcile rolls out.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// The release the API, workers and UI run (None before the first migration succeeds).
    pub app_version: Option<String>,
    /// The migrations Job to keep applied, if one is under way.
    pub migration_job: Option<Job>,
    pub migration_state: Option<JobState>,
    pub plan: VersionPlan,
}

/// Decides the rollout from the version plan and the state of the migrations Job.
pub fn decide(plan: VersionPlan, job: Option<Job>, state: JobState) -> Rollout {
    match &plan {
        VersionPlan::Steady(v) => Rollout {
            app_version: Some(v.to_string()),
            migration_job: None,
            migration_state: None,
            plan,
        },
        VersionPlan::DowngradeRefused { serving, .. } => Rollout {
            app_version: Some(serving.to_string()),
            migration_job: None,
            migration_state: None,
            plan,
        },
        VersionPlan::Migrate { from, to } => {
            if state == JobState::Succeeded {
                // Keep the Job applied until a later reconcile reads the new serving version
                // back from status: a reconcile from a stale cache then finds the Job done
                // instead of running the migrations again.
                Rollout {
                    app_version: Some(to.to_string()),
                    migration_job: job,
                    migration_state: Some(state),
                    plan,
                }
            } else {
                Rollout {
                    app_version: from.as_ref().map(ToString::to_string),
                    migration_job: job,
                    migration_state: Some(state),
                    plan,
                }
            }
        }
    }
}
