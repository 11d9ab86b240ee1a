//! Maintenance: Tator's scheduled housekeeping jobs and the nightly database backup.

use std::collections::BTreeMap;

use kube::KubeSchema;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use super::PodSettings;

// Maintainer note: the job names below must match the table in the operator's
// `builders/maintenance.rs` (a unit test there checks both directions). They are also the keys
// users write under `maintenance.jobs`, so never rename one within a version; a job Tator drops
// moves to RETIRED_MAINTENANCE_JOB_NAMES, still accepted so stored objects stay valid.

/// Names accepted as keys of `maintenance.jobs`, in the order of the schedule table.
pub const MAINTENANCE_JOB_NAMES: &[&str] = &[
    "sizer",
    "prune-temporary-files",
    "prune-media",
    "prune-localizations",
    "prune-states",
    "prune-leaves",
    "prune-files",
    "backup-database",
    "move-backups",
    "archive-media",
    "backup-media",
    "request-restoration",
    "finish-restoration",
    "expire-invitations",
    "expire-announcements",
    "expire-password-resets",
];

/// Keys still accepted under `maintenance.jobs` for jobs Tator no longer has; they are ignored.
pub const RETIRED_MAINTENANCE_JOB_NAMES: &[&str] = &["prune-filebeat"];

const JOB_KEYS_RULE: &str = "self.all(k, k in ['sizer', 'prune-temporary-files', 'prune-media', \
    'prune-localizations', 'prune-states', 'prune-leaves', 'prune-filebeat', 'prune-files', \
    'backup-database', 'move-backups', 'archive-media', 'backup-media', 'request-restoration', \
    'finish-restoration', 'expire-invitations', 'expire-announcements', 'expire-password-resets'])";
const JOB_KEYS_MSG: &str = "maintenance.jobs keys must be job names: sizer, \
    prune-temporary-files, prune-media, prune-localizations, prune-states, prune-leaves, \
    prune-files, backup-database, move-backups, archive-media, backup-media, \
    request-restoration, finish-restoration, expire-invitations, expire-announcements, \
    expire-password-resets";

/// Tator's maintenance CronJobs: project sizes, pruning of deleted media, localizations,
/// states, leaves and files, expiry of invitations, announcements and password resets, media
/// archiving, backup and restoration, and a nightly pg_dump of the database to the shared
/// volume's backup folder (copied to the backup bucket by move-backups when
/// objectStorage.backup is set). Every job runs with concurrencyPolicy Forbid; each can be
/// rescheduled or suspended under jobs, and suspend stops them all.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Suspend every maintenance CronJob (running Jobs finish; no new ones start).
    #[serde(default)]
    pub suspend: bool,

    /// Days after which media, localizations, states and leaves marked deleted are removed for
    /// good by the prune jobs (Tator's EXPIRATION_AGE_DAYS).
    #[serde(default = "default_expiration_days")]
    #[schemars(range(min = 0, max = 36500))]
    pub expiration_age_days: i32,

    /// Days after which media flagged for archiving is moved to the archive storage class by
    /// archive-media (Tator's ARCHIVE_AGE_DAYS).
    #[serde(default = "default_archive_days")]
    #[schemars(range(min = 0, max = 36500))]
    pub archive_age_days: i32,

    /// Finished Jobs kept per CronJob after they succeeded.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub successful_jobs_history_limit: i32,

    /// Finished Jobs kept per CronJob after they failed (their pods hold the logs).
    #[serde(default = "three")]
    #[schemars(range(min = 0, max = 100))]
    pub failed_jobs_history_limit: i32,

    /// Time zone the schedules are read in, an IANA name such as Europe/Berlin (default: the
    /// time zone of the kube-controller-manager, usually UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+/-]*$')").message("maintenance.timeZone must be an IANA time zone name such as UTC or Europe/Berlin"))]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,

    /// The nightly database backup (pg_dump, job backup-database).
    #[serde(default)]
    pub backup: MaintenanceBackup,

    /// Schedule or suspend single jobs, by job name: sizer, prune-temporary-files,
    /// prune-media, prune-localizations, prune-states, prune-leaves, prune-files,
    /// backup-database, move-backups, archive-media, backup-media, request-restoration,
    /// finish-restoration, expire-invitations, expire-announcements, expire-password-resets.
    /// For example {"prune-media": {"schedule": "0 3 * * *"}}. prune-filebeat (removed from
    /// Tator) is still accepted and ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "jobs_schema")]
    pub jobs: BTreeMap<String, MaintenanceJobOverride>,

    /// Image, resources and placement of the Tator maintenance pods (default image
    /// <registry>/tator_online:<version>; resources 50m CPU and 256Mi requested, 500m CPU and
    /// 2Gi at most). Placement, resources and podOverrides also apply to the backup pod.
    #[serde(default)]
    pub pod: PodSettings,
}

impl Default for Maintenance {
    fn default() -> Self {
        Self {
            suspend: false,
            expiration_age_days: default_expiration_days(),
            archive_age_days: default_archive_days(),
            successful_jobs_history_limit: 1,
            failed_jobs_history_limit: 3,
            time_zone: None,
            backup: MaintenanceBackup::default(),
            jobs: BTreeMap::new(),
            pod: PodSettings::default(),
        }
    }
}

fn default_expiration_days() -> i32 {
    30
}
fn default_archive_days() -> i32 {
    7
}
fn one() -> i32 {
    1
}
fn three() -> i32 {
    3
}
fn default_true() -> bool {
    true
}

/// The nightly database backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceBackup {
    /// Dump the database (pg_dump custom format) to the backup folder of the shared volume
    /// every night, as tator_online_<date>_<version>.sql; restore with pg_restore.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Image providing pg_dump. Default: the in-cluster database's own image, or for a managed
    /// database postgres:<major>-alpine with the PostgreSQL major of the release's tools (14 for
    /// Tator 1.5.0). Its pg_dump must be at least as new as the server; restoring needs a
    /// pg_restore at least as new as it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

impl Default for MaintenanceBackup {
    fn default() -> Self {
        Self {
            enabled: true,
            image: None,
        }
    }
}

/// Settings of one maintenance job.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceJobOverride {
    /// Cron schedule replacing the job's default: five fields (minute hour day-of-month month
    /// day-of-week), for example "30 0 * * *", or a macro such as @daily or @hourly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[0-9A-Za-z*/,?-]+( +[0-9A-Za-z*/,?-]+){4})$')").message("schedule must be a cron expression with five fields such as \"30 0 * * *\", or @hourly, @daily, @weekly, @monthly or @yearly"))]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: Option<String>,

    /// Suspend this job. maintenance.suspend true suspends every job whatever this says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
}

fn jobs_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = <BTreeMap<String, MaintenanceJobOverride>>::json_schema(generator);
    schema.insert(
        "maxProperties".into(),
        (MAINTENANCE_JOB_NAMES.len() + RETIRED_MAINTENANCE_JOB_NAMES.len()).into(),
    );
    schema.insert(
        "x-kubernetes-validations".into(),
        serde_json::json!([{"rule": JOB_KEYS_RULE, "message": JOB_KEYS_MSG}]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_rule_and_message_name_every_job() {
        for name in MAINTENANCE_JOB_NAMES {
            assert!(JOB_KEYS_RULE.contains(&format!("'{name}'")), "{name}");
            assert!(JOB_KEYS_MSG.contains(name), "{name}");
        }
        // Retired jobs stay accepted (stored objects remain valid) but are not advertised.
        for name in RETIRED_MAINTENANCE_JOB_NAMES {
            assert!(JOB_KEYS_RULE.contains(&format!("'{name}'")), "{name}");
            assert!(!JOB_KEYS_MSG.contains(name), "{name}");
        }
        assert_eq!(
            JOB_KEYS_RULE.matches('\'').count(),
            2 * (MAINTENANCE_JOB_NAMES.len() + RETIRED_MAINTENANCE_JOB_NAMES.len())
        );
    }
}
