//! The migrations Job that must succeed before a release serves, and the rollout decision.

use k8s_openapi::api::{
    batch::v1::{Job, JobSpec},
    core::v1::{Container, EnvVar, EnvVarSource, PodSpec},
};
use std::collections::BTreeMap;

use super::{
    common::*,
    data, names,
    tator_env::{self, tator_env, tator_volumes},
};
use crate::validate::{ValidatedTator, VersionPlan};

pub const MIGRATIONS: &str = "migrations";

/// After the migrations: the first administrator, unless that user exists already. Django's
/// `createsuperuser --noinput` reads DJANGO_SUPERUSER_{USERNAME,PASSWORD,EMAIL}.
const ADMIN_SCRIPT: &str = " && export DJANGO_SUPERUSER_EMAIL=\"${DJANGO_SUPERUSER_EMAIL:-$DJANGO_SUPERUSER_USERNAME@$MAIN_HOST}\" \
     && { out=$(python3 manage.py createsuperuser --noinput 2>&1) && echo \"administrator created\" \
     || case \"$out\" in *'already taken'*) echo \"administrator exists: left as it is\" ;; \
     *) echo \"$out\" >&2; exit 1 ;; esac; }";

/// The administrator's credentials, from the Secret named in `spec.admin`.
fn admin_env(secret: &str) -> Vec<EnvVar> {
    let key = |name: &str, key: &str, optional: bool| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(k8s_openapi::api::core::v1::SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: optional.then_some(true),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        key("DJANGO_SUPERUSER_USERNAME", "username", false),
        key("DJANGO_SUPERUSER_PASSWORD", "password", false),
        key("DJANGO_SUPERUSER_EMAIL", "email", true),
    ]
}

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
    let mut script = String::from(
        "python3 manage.py makemigrations main && python3 manage.py makemigrations \
         && python3 manage.py migrate && python3 manage.py collectstatic --noinput",
    );
    let mut env = tator_env(t, version);
    if let Some(admin) = &t.spec.admin {
        script.push_str(ADMIN_SCRIPT);
        env.extend(admin_env(&admin.secret_name));
    }
    c.args = Some(vec![script]);
    c.working_dir = Some("/tator_online".into());
    c.env = Some(env);
    let (volumes, mounts) = tator_volumes(t);
    c.volume_mounts = Some(mounts);
    c.resources = Some(resources_or(&s.pod, requirements("500m", "1Gi", "8Gi")));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        init_containers: Some(vec![extensions_container(t, version)]),
        containers: vec![c],
        volumes: Some(volumes),
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

/// An init container creating the extensions Tator needs before `migrate` runs, with `psql` from
/// the PostGIS image, against whichever PostgreSQL Tator uses.
fn extensions_container(t: &ValidatedTator, version: &str) -> Container {
    let e = tator_env::endpoints(t);
    let pg_pod = t
        .spec
        .postgres
        .in_cluster
        .as_ref()
        .map(|p| p.pod.clone())
        .unwrap_or_default();
    let mut c = container(
        "extensions",
        tator_image(t, "tator_postgis", version, &pg_pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    let statements: Vec<String> = data::EXTENSIONS
        .iter()
        .map(|x| format!("-c 'CREATE EXTENSION IF NOT EXISTS \"{x}\"'"))
        .collect();
    c.command = Some(vec!["sh".into(), "-c".into()]);
    c.args = Some(vec![format!(
        "psql -v ON_ERROR_STOP=1 {}",
        statements.join(" ")
    )]);
    let mut env = vec![
        EnvVar {
            name: "PGHOST".into(),
            value: Some(e.pg_host.clone()),
            ..Default::default()
        },
        EnvVar {
            name: "PGPORT".into(),
            value: Some(e.pg_port.to_string()),
            ..Default::default()
        },
        EnvVar {
            name: "PGDATABASE".into(),
            value: Some(names::DATABASE.into()),
            ..Default::default()
        },
        EnvVar {
            name: "PGUSER".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(e.pg_user.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
        EnvVar {
            name: "PGPASSWORD".into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(e.pg_password.clone()),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(mode) = e.pg_ssl_mode {
        env.push(EnvVar {
            name: "PGSSLMODE".into(),
            value: Some(mode.as_str().into()),
            ..Default::default()
        });
    }
    let mut mounts = Vec::new();
    if let Some((_, m)) = tator_env::pg_ca_volume(&e) {
        env.push(EnvVar {
            name: "PGSSLROOTCERT".into(),
            value: Some(format!("{}/ca.crt", tator_env::PG_CA_DIR)),
            ..Default::default()
        });
        mounts.push(m);
    }
    c.env = Some(env);
    c.volume_mounts = (!mounts.is_empty()).then_some(mounts);
    c.resources = Some(requirements("50m", "64Mi", "256Mi"));
    c
}

/// State of a migrations Job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Missing,
    /// Not started: a data service is not ready.
    WaitingForDependencies,
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

/// Decides the rollout from the version plan, the state of the migrations Job and whether the
/// data services are ready: a migration does not start while one is not.
pub fn decide(plan: VersionPlan, job: Option<Job>, state: JobState, deps_ready: bool) -> Rollout {
    let (job, state) = if !deps_ready && state == JobState::Missing {
        (None, JobState::WaitingForDependencies)
    } else {
        (job, state)
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn migrate(j: &Job) -> &Container {
        &j.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    #[test]
    fn the_first_administrator_comes_from_the_named_secret() {
        let plain = job(&validate(&minimal("1.5.0")).unwrap(), "1.5.0");
        let c = migrate(&plain);
        assert!(!c.args.as_ref().unwrap()[0].contains("createsuperuser"));

        let mut td = minimal("1.5.0");
        td.spec.admin = Some(tator_api::AdminSettings {
            secret_name: "tator-admin".into(),
        });
        let j = job(&validate(&td).unwrap(), "1.5.0");
        let c = migrate(&j);
        let script = &c.args.as_ref().unwrap()[0];
        assert!(script.contains("python3 manage.py migrate"), "{script}");
        assert!(script.ends_with("esac; }"), "{script}");
        let migrate = script.find("manage.py migrate").unwrap();
        assert!(
            script.find("createsuperuser").unwrap() > migrate,
            "{script}"
        );
        let from_secret = |name: &str| {
            c.env
                .iter()
                .flatten()
                .find(|e| e.name == name)
                .and_then(|e| e.value_from.as_ref())
                .and_then(|v| v.secret_key_ref.as_ref())
                .map(|r| (r.name.clone(), r.key.clone(), r.optional))
        };
        assert_eq!(
            from_secret("DJANGO_SUPERUSER_USERNAME"),
            Some(("tator-admin".into(), "username".into(), None))
        );
        assert_eq!(
            from_secret("DJANGO_SUPERUSER_PASSWORD"),
            Some(("tator-admin".into(), "password".into(), None))
        );
        assert_eq!(
            from_secret("DJANGO_SUPERUSER_EMAIL"),
            Some(("tator-admin".into(), "email".into(), Some(true)))
        );
    }
}
