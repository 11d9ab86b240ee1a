//! Tator's maintenance CronJobs (`spec.maintenance`): the `manage.py` housekeeping commands and
//! the nightly pg_dump of the database to the shared volume's backup folder.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec},
        core::v1::{PodSpec, ResourceRequirements},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use super::{
    common::*,
    data,
    names::{DATABASE, POSTGRES},
    tator_env::{self, secrets_annotation, tator_env, tator_volumes},
};
use crate::validate::ValidatedTator;

/// Component label of every maintenance CronJob.
pub const MAINTENANCE: &str = "maintenance";
/// Label naming the maintenance job (its key under `spec.maintenance.jobs`) on the CronJob, its
/// Jobs and their pods.
pub const JOB_LABEL: &str = "tator.io/maintenance-job";
/// Longest CronJob name: the cronjob controller appends up to 11 characters for its Jobs.
pub const MAX_CRONJOB_NAME: usize = 52;
/// Image providing pg_dump for `backup-database` with a managed database, by PostgreSQL major
/// (the release's, so that its pg_restore reads the dumps).
pub fn pg_dump_image(major: u32) -> String {
    format!("postgres:{major}-alpine")
}
/// Seconds after its scheduled time a missed run may still start.
const STARTING_DEADLINE: i64 = 300;
/// Retries of a failed run before the Job is marked failed.
const BACKOFF_LIMIT: i32 = 2;
/// Longest a run may take before it is stopped.
const ACTIVE_DEADLINE: i64 = 6 * 3600;

/// What a maintenance job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `python3 manage.py <command>` in the tator_online image.
    Manage(&'static str),
    /// pg_dump of the database to the backup folder.
    PgDump,
}

/// One maintenance job: its key (also the suffix of the CronJob's name), default schedule,
/// command and what it does.
#[derive(Clone, Copy, Debug)]
pub struct MaintenanceJob {
    pub name: &'static str,
    pub schedule: &'static str,
    pub command: Command,
    pub description: &'static str,
}

const fn job(
    name: &'static str,
    schedule: &'static str,
    command: Command,
    description: &'static str,
) -> MaintenanceJob {
    MaintenanceJob {
        name,
        schedule,
        command,
        description,
    }
}

use Command::{Manage, PgDump};

/// Every maintenance job with its default schedule, as in Tator's `compose/gunicorn.cron` and
/// `compose/postgis.cron` (docs/configuration.md has the same table). Which of them a release
/// runs is in the release catalog ([`crate::catalog::Needs::crons`]).
pub const JOBS: &[MaintenanceJob] = &[
    job(
        "sizer",
        "10 * * * *",
        Manage("updateprojects"),
        "Recomputes project totals (size, file count, duration).",
    ),
    job(
        "prune-temporary-files",
        "20 * * * *",
        Manage("prunetemporaryfiles"),
        "Deletes expired temporary files.",
    ),
    job(
        "prune-media",
        "30 0 * * *",
        Manage("prunemedia"),
        "Deletes media marked deleted more than expirationAgeDays ago.",
    ),
    job(
        "prune-localizations",
        "30 1 * * *",
        Manage("prunelocalizations"),
        "Deletes localizations marked deleted more than expirationAgeDays ago.",
    ),
    job(
        "prune-states",
        "30 2 * * *",
        Manage("prunestates"),
        "Deletes states marked deleted more than expirationAgeDays ago.",
    ),
    job(
        "prune-leaves",
        "30 3 * * *",
        Manage("pruneleaves"),
        "Deletes leaves marked deleted more than expirationAgeDays ago.",
    ),
    job(
        "prune-files",
        "30 4 * * *",
        Manage("prunefiles"),
        "Deletes files marked for deletion.",
    ),
    job(
        "backup-database",
        "40 6 * * *",
        PgDump,
        "pg_dump of the database to the backup folder of the shared volume.",
    ),
    job(
        "move-backups",
        "40 18 * * *",
        Manage("movebackups"),
        "Uploads the backup folder to the backup bucket, then deletes the local files (only with objectStorage.backup).",
    ),
    job(
        "archive-media",
        "40 0 * * *",
        Manage("archivemedia"),
        "Moves media flagged for archiving, older than archiveAgeDays, to the archive storage class.",
    ),
    job(
        "backup-media",
        "0 1 * * *",
        Manage("backupresources"),
        "Copies resources not backed up yet to the backup bucket.",
    ),
    job(
        "request-restoration",
        "40 1 * * *",
        Manage("requestrestoration"),
        "Requests restoration from the archive of media flagged to be made live.",
    ),
    job(
        "finish-restoration",
        "50 1 * * *",
        Manage("finishrestoration"),
        "Finalizes restored media.",
    ),
    job(
        "expire-invitations",
        "50 2 * * *",
        Manage("expireinvitations"),
        "Expires invitations older than 7 days.",
    ),
    job(
        "expire-announcements",
        "50 3 * * *",
        Manage("expireannouncements"),
        "Deletes announcements past their end of life.",
    ),
    job(
        "expire-password-resets",
        "40 * * * *",
        Manage("expirepasswordresets"),
        "Expires password resets older than 1 day.",
    ),
];

/// Name of a maintenance CronJob: `<name>-<job>`, or for long TatorDeployment names a shortened
/// name plus a hash of it, so that it stays within [`MAX_CRONJOB_NAME`].
pub fn cron_job_name(t: &ValidatedTator, job: &str) -> String {
    let full = t.child_name(job);
    if full.len() <= MAX_CRONJOB_NAME {
        return full;
    }
    let hash = short_hash(t.name.as_bytes(), 6);
    let keep = MAX_CRONJOB_NAME.saturating_sub(job.len() + hash.len() + 2);
    let prefix: String = t.name.chars().take(keep).collect();
    format!("{}-{hash}-{job}", prefix.trim_end_matches(['-', '.']))
}

/// Whether a job is rendered for this spec.
fn wanted(t: &ValidatedTator, job: &MaintenanceJob) -> bool {
    if !t.needs.crons.contains(&job.name) {
        return false;
    }
    match job.name {
        // Without a backup bucket the dumps stay on the volume.
        "move-backups" => t.spec.object_storage.backup.is_some(),
        "backup-database" => t.spec.maintenance.backup.enabled,
        _ => true,
    }
}

/// Default resources of the maintenance containers.
fn default_resources() -> ResourceRequirements {
    let q = |v: &str| Quantity(v.into());
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), q("50m")),
            ("memory".to_string(), q("256Mi")),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), q("500m")),
            ("memory".to_string(), q("2Gi")),
        ])),
        ..Default::default()
    }
}

/// Every maintenance CronJob of this spec, for the app version `version`.
pub fn cron_jobs(t: &ValidatedTator, version: &str) -> Vec<CronJob> {
    JOBS.iter()
        .filter(|j| wanted(t, j))
        .map(|j| cron_job(t, version, j))
        .collect()
}

fn tator_pod(t: &ValidatedTator, version: &str, command: &str) -> PodSpec {
    let m = &t.spec.maintenance;
    let mut c = container(
        MAINTENANCE,
        tator_image(t, "tator_online", version, &m.pod),
        t.spec.image.pull_policy.as_str(),
        false,
    );
    c.command = Some(vec!["python3".into(), "manage.py".into(), command.into()]);
    c.working_dir = Some("/tator_online".into());
    let mut env_vars = tator_env(t, version);
    env_vars.push(env(
        "EXPIRATION_AGE_DAYS",
        m.expiration_age_days.to_string(),
    ));
    env_vars.push(env("ARCHIVE_AGE_DAYS", m.archive_age_days.to_string()));
    c.env = Some(env_vars);
    let (volumes, mounts) = tator_volumes(t);
    c.volume_mounts = Some(mounts);
    c.resources = Some(resources_or(&m.pod, default_resources()));
    PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(volumes),
        ..Default::default()
    }
}

/// The shell script of `backup-database`: a custom-format dump written under a temporary name
/// and renamed when complete, so that move-backups never uploads half a dump.
pub fn pg_dump_script() -> String {
    format!(
        "set -eu\n\
         f=\"/backup/{DATABASE}_$(date -u +%Y_%m_%d__%H_%M_%S)_${{GIT_VERSION}}.sql\"\n\
         trap 'rm -f \"$f.partial\"' EXIT\n\
         pg_dump -Fc -f \"$f.partial\"\n\
         mv \"$f.partial\" \"$f\"\n\
         echo \"wrote $f\"\n"
    )
}

fn pg_dump_pod(t: &ValidatedTator, version: &str) -> PodSpec {
    let m = &t.spec.maintenance;
    let e = tator_env::endpoints(t);
    // Dump from the database itself, never through the pooler.
    let (host, port) = if t.spec.postgres.in_cluster.is_some() {
        (t.child_name(POSTGRES), 5432)
    } else {
        (e.pg_host.clone(), e.pg_port)
    };
    // pg_dump of the server's own major: the in-cluster server's image, else the release's.
    let image = match (&m.backup.image, &t.spec.postgres.in_cluster) {
        (Some(image), _) => image.clone(),
        (None, Some(pg)) => tator_image(t, "tator_postgis", &data::server_version(t), &pg.pod),
        (None, None) => pg_dump_image(t.needs.postgres_major),
    };
    let mut c = container(
        "backup-database",
        image,
        t.spec.image.pull_policy.as_str(),
        true,
    );
    c.command = Some(vec!["/bin/sh".into(), "-c".into(), pg_dump_script()]);
    let mut env_vars = vec![
        env("PGHOST", host),
        env("PGPORT", port.to_string()),
        env("PGDATABASE", DATABASE),
        env_secret("PGUSER", &e.pg_user),
        env_secret("PGPASSWORD", &e.pg_password),
        env("GIT_VERSION", version),
    ];
    if let Some(mode) = e.pg_ssl_mode {
        env_vars.push(env("PGSSLMODE", mode.as_str()));
    }
    if e.pg_ca.is_some() {
        env_vars.push(env(
            "PGSSLROOTCERT",
            format!("{}/ca.crt", tator_env::PG_CA_DIR),
        ));
    }
    c.env = Some(env_vars);
    let mut volumes = vec![shared_volume(t)];
    let mut mounts = shared_mounts(&[("backup", "/backup")], false);
    if let Some((v, mount)) = tator_env::pg_ca_volume(&e) {
        volumes.push(v);
        mounts.push(mount);
    }
    c.volume_mounts = Some(mounts);
    c.resources = Some(resources_or(&m.pod, default_resources()));
    PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers: vec![c],
        volumes: Some(volumes),
        ..Default::default()
    }
}

fn cron_job(t: &ValidatedTator, version: &str, job: &MaintenanceJob) -> CronJob {
    let m = &t.spec.maintenance;
    let over = m.jobs.get(job.name);
    let mut spec = match job.command {
        Manage(command) => tator_pod(t, version, command),
        PgDump => pg_dump_pod(t, version),
    };
    spec.restart_policy = Some("OnFailure".into());
    spec.termination_grace_period_seconds = Some(10);
    // Same user as the other Tator pods, so the shared folders' files stay theirs.
    spec.security_context = Some(pod_security(TATOR_UID));
    // A rotated credential reaches the next run; the dump reads no bucket settings.
    let annotations = match job.command {
        Manage(_) => secrets_annotation(t),
        PgDump => t
            .secrets_hash
            .iter()
            .map(|h| (SECRETS_HASH_ANNOTATION.to_string(), h.clone()))
            .collect(),
    };
    let mut template = pod_template(t, MAINTENANCE, Some(version), spec, annotations, &m.pod);
    if let Some(meta) = template.metadata.as_mut() {
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(JOB_LABEL.into(), job.name.into());
    }
    let mut meta = child_meta(t, cron_job_name(t, job.name), MAINTENANCE, Some(version));
    if let Some(labels) = meta.labels.as_mut() {
        labels.insert(JOB_LABEL.into(), job.name.into());
    }
    CronJob {
        metadata: meta,
        spec: Some(CronJobSpec {
            schedule: over
                .and_then(|o| o.schedule.clone())
                .unwrap_or_else(|| job.schedule.into()),
            time_zone: m.time_zone.clone(),
            suspend: Some(m.suspend || over.and_then(|o| o.suspend).unwrap_or(false)),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(STARTING_DEADLINE),
            successful_jobs_history_limit: Some(m.successful_jobs_history_limit),
            failed_jobs_history_limit: Some(m.failed_jobs_history_limit),
            job_template: JobTemplateSpec {
                // Not the instance labels: the Jobs belong to the CronJob, not to the operator.
                metadata: Some(ObjectMeta {
                    labels: Some(BTreeMap::from([
                        (tator_api::labels::COMPONENT.to_string(), MAINTENANCE.into()),
                        (JOB_LABEL.to_string(), job.name.into()),
                    ])),
                    ..Default::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKOFF_LIMIT),
                    active_deadline_seconds: Some(ACTIVE_DEADLINE),
                    template,
                    ..Default::default()
                }),
            },
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};
    use tator_api::{MAINTENANCE_JOB_NAMES, MaintenanceJobOverride, TatorDeployment};

    fn build(td: &TatorDeployment) -> Vec<CronJob> {
        cron_jobs(&validate(td).unwrap(), "1.5.0")
    }

    fn spec(c: &CronJob) -> &CronJobSpec {
        c.spec.as_ref().unwrap()
    }

    fn pod(c: &CronJob) -> &PodSpec {
        spec(c)
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn value_of(env: &[k8s_openapi::api::core::v1::EnvVar], name: &str) -> Option<String> {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    }

    fn find<'a>(cs: &'a [CronJob], job: &str) -> &'a CronJob {
        cs.iter()
            .find(|c| c.metadata.name.as_deref() == Some(&format!("tator-{job}")))
            .unwrap_or_else(|| panic!("no CronJob {job}"))
    }

    fn with_backup_bucket(td: &mut TatorDeployment) {
        td.spec.object_storage.backup = Some(tator_api::SystemBucket::default());
    }

    #[test]
    fn the_table_names_exactly_the_jobs_the_crd_accepts() {
        let names: Vec<&str> = JOBS.iter().map(|j| j.name).collect();
        assert_eq!(names, MAINTENANCE_JOB_NAMES);
    }

    #[test]
    fn defaults_have_every_job_but_move_backups_with_forbid_and_history_limits() {
        let cs = build(&minimal("1.5.0"));
        assert_eq!(cs.len(), 15);
        assert!(
            !cs.iter()
                .any(|c| c.metadata.name.as_deref() == Some("tator-move-backups"))
        );
        for (c, j) in cs
            .iter()
            .zip(JOBS.iter().filter(|j| j.name != "move-backups"))
        {
            assert_eq!(
                c.metadata.name.as_deref(),
                Some(format!("tator-{}", j.name).as_str())
            );
            let s = spec(c);
            assert_eq!(s.schedule, j.schedule);
            assert_eq!(s.concurrency_policy.as_deref(), Some("Forbid"));
            assert_eq!(s.successful_jobs_history_limit, Some(1));
            assert_eq!(s.failed_jobs_history_limit, Some(3));
            assert_eq!(s.suspend, Some(false));
            assert!(s.starting_deadline_seconds.is_some());
            let js = s.job_template.spec.as_ref().unwrap();
            assert!(js.backoff_limit.unwrap() <= 3);
            assert!(js.active_deadline_seconds.is_some());
            let p = pod(c);
            assert_eq!(p.restart_policy.as_deref(), Some("OnFailure"));
            assert_eq!(p.termination_grace_period_seconds, Some(10));
            let labels = c.metadata.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/component"], MAINTENANCE);
            assert_eq!(labels["app.kubernetes.io/instance"], "tator");
            assert_eq!(labels[JOB_LABEL], j.name);
            assert_eq!(
                c.metadata.owner_references.as_ref().unwrap()[0].controller,
                Some(true)
            );
        }
        let mut td = minimal("1.5.0");
        with_backup_bucket(&mut td);
        let cs = build(&td);
        assert_eq!(cs.len(), 16);
        assert_eq!(spec(find(&cs, "move-backups")).schedule, "40 18 * * *");
    }

    #[test]
    fn schedules_and_commands_follow_tators_crontab() {
        // compose/gunicorn.cron and compose/postgis.cron of Tator 1.5.0.
        let tator: &[(&str, &str)] = &[
            ("10 * * * *", "updateprojects"),
            ("20 * * * *", "prunetemporaryfiles"),
            ("30 0 * * *", "prunemedia"),
            ("30 1 * * *", "prunelocalizations"),
            ("30 2 * * *", "prunestates"),
            ("30 3 * * *", "pruneleaves"),
            ("30 4 * * *", "prunefiles"),
            ("40 18 * * *", "movebackups"),
            ("40 0 * * *", "archivemedia"),
            ("0 1 * * *", "backupresources"),
            ("40 1 * * *", "requestrestoration"),
            ("50 1 * * *", "finishrestoration"),
            ("50 2 * * *", "expireinvitations"),
            ("50 3 * * *", "expireannouncements"),
            ("40 * * * *", "expirepasswordresets"),
        ];
        let manage: Vec<(&str, &str)> = JOBS
            .iter()
            .filter_map(|j| match j.command {
                Manage(c) => Some((j.schedule, c)),
                PgDump => None,
            })
            .collect();
        let mut want = tator.to_vec();
        let mut got = manage.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
        let dump = JOBS.iter().find(|j| j.command == PgDump).unwrap();
        assert_eq!(dump.schedule, "40 6 * * *");
        // Tator removed prunefilebeat; a retired key in the spec builds nothing.
        let mut td = minimal("1.5.0");
        td.spec
            .maintenance
            .jobs
            .insert("prune-filebeat".into(), MaintenanceJobOverride::default());
        assert!(build(&td).iter().all(|c| {
            !c.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .contains("filebeat")
        }));
    }

    #[test]
    fn tator_jobs_run_manage_py_with_the_api_env_and_no_ports() {
        let cs = build(&minimal("1.5.0"));
        let sizer = find(&cs, "sizer");
        let c = &pod(sizer).containers[0];
        assert_eq!(
            c.image.as_deref(),
            Some("cvisionai/tator_online:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        assert_eq!(
            c.command.clone().unwrap(),
            ["python3", "manage.py", "updateprojects"]
        );
        assert!(c.ports.is_none());
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| value_of(env, n);
        assert_eq!(get("EXPIRATION_AGE_DAYS").as_deref(), Some("30"));
        assert_eq!(get("ARCHIVE_AGE_DAYS").as_deref(), Some("7"));
        assert_eq!(get("GIT_VERSION").as_deref(), Some("1.5.0"));
        assert!(env.iter().any(|e| e.name == "DJANGO_SECRET_KEY"));
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(mounts.contains(&"/backup") && mounts.contains(&"/media"));
        let limits = c.resources.as_ref().unwrap().limits.as_ref().unwrap();
        assert_eq!(limits["cpu"].0, "500m");
        assert_eq!(limits["memory"].0, "2Gi");
        let commands: Vec<String> = cs
            .iter()
            .map(|c| pod(c).containers[0].command.clone().unwrap().join(" "))
            .collect();
        assert!(commands.contains(&"python3 manage.py prunetemporaryfiles".to_string()));
        assert!(commands.contains(&"python3 manage.py expirepasswordresets".to_string()));
    }

    #[test]
    fn overrides_and_suspend_take_effect() {
        let mut td = minimal("1.5.0");
        td.spec.maintenance.jobs.insert(
            "prune-media".into(),
            MaintenanceJobOverride {
                schedule: Some("0 3 * * 1".into()),
                suspend: None,
            },
        );
        td.spec.maintenance.jobs.insert(
            "sizer".into(),
            MaintenanceJobOverride {
                schedule: None,
                suspend: Some(true),
            },
        );
        td.spec.maintenance.time_zone = Some("Europe/Berlin".into());
        td.spec.maintenance.successful_jobs_history_limit = 5;
        td.spec.maintenance.expiration_age_days = 90;
        let cs = build(&td);
        assert_eq!(spec(find(&cs, "prune-media")).schedule, "0 3 * * 1");
        assert_eq!(spec(find(&cs, "prune-media")).suspend, Some(false));
        assert_eq!(spec(find(&cs, "sizer")).suspend, Some(true));
        assert_eq!(spec(find(&cs, "sizer")).schedule, "10 * * * *");
        assert_eq!(spec(find(&cs, "prune-states")).suspend, Some(false));
        for c in &cs {
            assert_eq!(spec(c).time_zone.as_deref(), Some("Europe/Berlin"));
            assert_eq!(spec(c).successful_jobs_history_limit, Some(5));
        }
        let env = pod(find(&cs, "prune-media")).containers[0]
            .env
            .clone()
            .unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "EXPIRATION_AGE_DAYS" && e.value.as_deref() == Some("90"))
        );

        // Suspending all wins over a job's own suspend: false.
        td.spec.maintenance.suspend = true;
        td.spec.maintenance.jobs.insert(
            "prune-states".into(),
            MaintenanceJobOverride {
                schedule: None,
                suspend: Some(false),
            },
        );
        assert!(build(&td).iter().all(|c| spec(c).suspend == Some(true)));

        // Without the backup the dump job goes.
        td.spec.maintenance.backup.enabled = false;
        assert!(
            !build(&td)
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some("tator-backup-database"))
        );
    }

    #[test]
    fn no_secret_inline_and_pods_meet_restricted() {
        let mut td = minimal("1.5.0");
        with_backup_bucket(&mut td);
        for c in build(&td) {
            let p = pod(&c);
            let ps = p.security_context.as_ref().unwrap();
            assert_eq!(ps.run_as_non_root, Some(true));
            assert_eq!(ps.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
            for ctr in &p.containers {
                let cs = ctr.security_context.as_ref().unwrap();
                assert_eq!(cs.allow_privilege_escalation, Some(false));
                assert_eq!(
                    cs.capabilities.as_ref().unwrap().drop.clone().unwrap(),
                    ["ALL"]
                );
                for e in ctr.env.as_deref().unwrap_or_default() {
                    let upper = e.name.to_uppercase();
                    if upper.contains("PASSWORD")
                        || upper.contains("SECRET")
                        || upper.ends_with("USER")
                    {
                        assert!(
                            e.value.is_none()
                                && e.value_from
                                    .as_ref()
                                    .is_some_and(|v| v.secret_key_ref.is_some()),
                            "{} of {:?} is not a secretKeyRef",
                            e.name,
                            c.metadata.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stopped_suspends_every_cron_job() {
        let mut td = minimal("1.5.0");
        td.spec.stopped = true;
        let t = validate(&td).unwrap();
        let r = super::super::migrations::decide(
            crate::validate::VersionPlan::Steady(t.target_version.clone()),
            None,
            super::super::migrations::JobState::Missing,
            true,
        );
        let d = super::super::build(&t, &r);
        assert_eq!(d.cron_jobs.len(), 15);
        assert!(d.cron_jobs.iter().all(|c| spec(c).suspend == Some(true)));
    }

    #[test]
    fn pg_dump_reads_the_database_directly_and_mounts_only_the_backup_folder() {
        let mut td = minimal("1.5.0");
        td.spec
            .postgres
            .in_cluster
            .as_mut()
            .unwrap()
            .pgbouncer
            .enabled = true;
        let cs = build(&td);
        let c = &pod(find(&cs, "backup-database")).containers[0];
        // The in-cluster server's own image: its pg_dump is the server's major (14 for 1.5.0).
        assert_eq!(
            c.image.as_deref(),
            Some("cvisionai/tator_postgis:dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a")
        );
        let cmd = c.command.clone().unwrap();
        assert_eq!(cmd[..2], ["/bin/sh", "-c"]);
        assert!(cmd[2].contains("pg_dump -Fc"), "{}", cmd[2]);
        assert!(cmd[2].contains("/backup/tator_online_"), "{}", cmd[2]);
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| env.iter().find(|e| e.name == n).cloned().unwrap();
        assert_eq!(get("PGHOST").value.as_deref(), Some("tator-postgres"));
        assert_eq!(get("PGDATABASE").value.as_deref(), Some("tator_online"));
        let pw = get("PGPASSWORD")
            .value_from
            .unwrap()
            .secret_key_ref
            .unwrap();
        assert_eq!(
            (pw.name.as_str(), pw.key.as_str()),
            ("tator-postgres", "password")
        );
        assert!(env.iter().all(|e| e.name != "PGSSLMODE"));
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_path, "/backup");
        assert_eq!(mounts[0].sub_path.as_deref(), Some("backup"));
        assert_eq!(
            c.security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );

        // A managed database: its host, port, sslmode and CA.
        let mut td = minimal("1.5.0");
        td.spec.postgres = serde_json::from_value(serde_json::json!({"external": {
            "host": "db.example.com", "port": 6543, "sslMode": "verify-full",
            "credentialsSecret": {"name": "pg"}, "caSecret": {"name": "pg-ca", "key": "ca.crt"}}}))
        .unwrap();
        let cs = build(&td);
        let c = &pod(find(&cs, "backup-database")).containers[0];
        // The release's PostgreSQL major, not the newest: Tator's pg_restore must read it.
        assert_eq!(c.image.as_deref(), Some("postgres:14-alpine"));
        let env = c.env.as_ref().unwrap();
        let get = |n: &str| value_of(env, n);
        assert_eq!(get("PGHOST").as_deref(), Some("db.example.com"));
        assert_eq!(get("PGPORT").as_deref(), Some("6543"));
        assert_eq!(get("PGSSLMODE").as_deref(), Some("verify-full"));
        assert!(get("PGSSLROOTCERT").is_some());
        assert_eq!(c.volume_mounts.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn long_instance_names_stay_within_the_cron_job_limit() {
        let mut td = minimal("1.5.0");
        td.metadata.name = Some("a".repeat(crate::validate::MAX_NAME_LEN));
        let t = validate(&td).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for j in JOBS {
            let name = cron_job_name(&t, j.name);
            assert!(name.len() <= MAX_CRONJOB_NAME, "{name}");
            assert!(name.ends_with(j.name), "{name}");
            assert!(seen.insert(name));
        }
        // Two long names with the same beginning do not collide.
        let mut other = td.clone();
        other.metadata.name = Some(format!(
            "{}b",
            "a".repeat(crate::validate::MAX_NAME_LEN - 1)
        ));
        let o = validate(&other).unwrap();
        assert_ne!(
            cron_job_name(&t, "expire-password-resets"),
            cron_job_name(&o, "expire-password-resets")
        );
    }
}
