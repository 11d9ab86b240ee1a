//! Tator's system buckets (live, and optionally upload and backup) as the spec places them, on
//! the in-cluster store or external, and the names of the `DEFAULT_*` variables that point
//! Tator at them. Pure; imports no other builder.

use tator_api::{ExternalBucket, SystemBucket};

use crate::validate::ValidatedTator;

/// Tator's three system buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Live,
    Upload,
    Backup,
}

impl Role {
    /// The word in Tator's `DEFAULT_<ROLE>_*` variables.
    pub fn env_word(self) -> &'static str {
        match self {
            Self::Live => "LIVE",
            Self::Upload => "UPLOAD",
            Self::Backup => "BACKUP",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Upload => "upload",
            Self::Backup => "backup",
        }
    }

    fn default_in_cluster_name(self) -> &'static str {
        match self {
            Self::Live => "tator",
            Self::Upload => "tator-upload",
            Self::Backup => "tator-backup",
        }
    }
}

/// Where a system bucket lives, with defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    /// On the in-cluster store, with this bucket name.
    InCluster(String),
    External(ExternalBucket),
}

/// The system buckets the spec asks for, in the order live, upload, backup.
pub fn system_buckets(t: &ValidatedTator) -> Vec<(Role, Placement)> {
    let os = &t.spec.object_storage;
    let place = |role: Role, b: &SystemBucket| match (&b.in_cluster, &b.external) {
        (_, Some(ext)) => Placement::External(ext.clone()),
        (Some(ic), None) => Placement::InCluster(
            ic.bucket_name
                .clone()
                .unwrap_or_else(|| role.default_in_cluster_name().into()),
        ),
        (None, None) => Placement::InCluster(role.default_in_cluster_name().into()),
    };
    let mut out = vec![(Role::Live, place(Role::Live, &os.live))];
    if let Some(b) = &os.upload {
        out.push((Role::Upload, place(Role::Upload, b)));
    }
    if let Some(b) = &os.backup {
        out.push((Role::Backup, place(Role::Backup, b)));
    }
    out
}

/// Names of the buckets on the in-cluster store (empty when it does not run).
pub fn in_cluster_buckets(t: &ValidatedTator) -> Vec<String> {
    let mut names: Vec<String> = system_buckets(t)
        .into_iter()
        .filter_map(|(_, p)| match p {
            Placement::InCluster(name) => Some(name),
            Placement::External(_) => None,
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether the in-cluster store runs.
pub fn store_runs(t: &ValidatedTator) -> bool {
    !in_cluster_buckets(t).is_empty()
}

/// Name of the Secret holding the `DEFAULT_*` variables.
pub fn buckets_secret_name(t: &ValidatedTator) -> String {
    t.child_name("buckets")
}

/// Which `DEFAULT_*` variables Tator's pods get: `(variable, present)` for every variable of
/// every configured system bucket. Pure: the values live in [`buckets_secret_name`].
pub fn bucket_env_names(t: &ValidatedTator) -> Vec<String> {
    let mut names = Vec::new();
    for (role, placement) in system_buckets(t) {
        let w = role.env_word();
        for field in ["CONFIG", "BUCKET_NAME", "STORE_TYPE"] {
            names.push(format!("DEFAULT_{w}_{field}"));
        }
        let has_host = match &placement {
            Placement::InCluster(_) => true,
            Placement::External(e) => e.external_host.is_some(),
        };
        if has_host {
            names.push(format!("DEFAULT_{w}_EXTERNAL_HOST"));
        }
    }
    names
}
