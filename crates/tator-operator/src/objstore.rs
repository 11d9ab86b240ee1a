//! Object storage at run time: read the credentials the spec names, apply the Secrets composed
//! from them, and judge `ObjectStorageReady` (the in-cluster store by its workloads, every other
//! bucket by a real request with its credentials).

use std::collections::BTreeMap;

use futures::future::join_all;
use k8s_openapi::api::{batch::v1::Job, core::v1::Secret};
use kube::{Api, Client, ResourceExt};
use tator_api::StoreType;

use crate::{
    apply::Applied,
    builders::{
        buckets::{self, Placement},
        objects::{self, ConfigProblem, StorageSecrets},
    },
    checks::{self, CheckError, Password},
    error::Error,
    finding::Finding,
    validate::ValidatedTator,
};

fn secret_data(secret: Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| String::from_utf8(v.0).ok().map(|v| (k, v)))
        .collect()
}

/// Names of the credentials Secrets object storage reads: external system buckets and
/// spec.buckets.
pub fn credentials_secrets(t: &ValidatedTator) -> Vec<String> {
    let mut names: Vec<String> = buckets::system_buckets(t)
        .into_iter()
        .filter_map(|(_, p)| match p {
            Placement::External(e) => Some(e.credentials_secret),
            Placement::InCluster(_) => None,
        })
        .collect();
    names.extend(t.spec.buckets.iter().map(|b| b.credentials_secret.clone()));
    names.sort();
    names.dedup();
    names
}

/// Reads the in-cluster store's generated keys and every credentials Secret the spec names.
pub async fn read_secrets(client: &Client, t: &ValidatedTator) -> Result<StorageSecrets, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    let get = |name: String| {
        let api = api.clone();
        async move {
            api.get_opt(&name).await.map_err(|source| Error::Fetch {
                what: format!("Secret {name}"),
                source,
            })
        }
    };
    let mut out = StorageSecrets::default();
    if buckets::store_runs(t) {
        out.store = get(objects::store_keys_secret_name(t))
            .await?
            .map(secret_data)
            .unwrap_or_default();
    }
    for name in credentials_secrets(t) {
        let data = get(name.clone()).await?.map(secret_data);
        out.credentials.insert(name, data);
    }
    Ok(out)
}

/// What one bucket check needs.
struct Check {
    label: String,
    store_type: StoreType,
    endpoint: Option<String>,
    region: String,
    bucket: String,
    secret: String,
}

async fn check_one(c: &Check, secrets: &StorageSecrets) -> Result<String, CheckError> {
    let data = match secrets.credentials.get(&c.secret) {
        Some(Some(d)) => d,
        _ => {
            return Err(CheckError {
                reason: "SecretNotFound",
                message: format!(
                    "{}: credentials Secret {} does not exist",
                    c.label, c.secret
                ),
            });
        }
    };
    // Composing the configuration checks that every key this store type needs is there.
    objects::tator_config(
        c.store_type,
        c.endpoint.as_deref(),
        &c.region,
        &c.secret,
        data,
    )
    .map_err(|p| CheckError {
        reason: p.reason,
        message: format!("{}: {}", c.label, p.message),
    })?;
    if !c.store_type.is_s3() {
        return Ok(format!(
            "{}: {} credentials are complete (not contacted: only S3 stores are checked)",
            c.label,
            c.store_type.as_str()
        ));
    }
    let target = checks::S3Target {
        endpoint: c
            .endpoint
            .clone()
            .unwrap_or_else(|| objects::aws_endpoint(&c.region)),
        region: c.region.clone(),
        bucket: c.bucket.clone(),
        access_key: data.get("accessKeyId").cloned().unwrap_or_default(),
        secret_key: Password::new(data.get("secretAccessKey").cloned().unwrap_or_default()),
    };
    checks::check_s3(&target).await.map_err(|e| CheckError {
        reason: e.reason,
        message: format!("{}: {}", c.label, e.message),
    })
}

fn job_succeeded(job: &Job) -> Option<bool> {
    let st = job.status.as_ref()?;
    if st.succeeded.unwrap_or(0) > 0 {
        return Some(true);
    }
    let failed = st
        .conditions
        .as_ref()
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Failed" && c.status == "True"));
    failed.then_some(false)
}

/// `ObjectStorageReady`: composition problems first, then the in-cluster store and its bucket
/// Job, then a real request to every other bucket (system and spec.buckets).
pub async fn observe(
    t: &ValidatedTator,
    secrets: &StorageSecrets,
    applied: &Applied,
    problem: Option<&ConfigProblem>,
) -> Finding {
    if let Some(p) = problem {
        return Finding::not_ready(p.reason, p.message.clone());
    }
    let mut ok_msgs = Vec::new();
    if buckets::store_runs(t) {
        let name = t.child_name(objects::SEAWEEDFS);
        let ready = applied
            .stateful_sets
            .iter()
            .find(|s| s.name_any() == name)
            .map_or(0, |s| crate::workload::Workload::of_stateful_set(s).ready);
        if ready < 1 {
            return Finding::not_ready(
                "StoreNotReady",
                format!("the in-cluster object store {name} is not ready"),
            );
        }
        let job = applied.jobs.iter().find(|j| {
            j.labels()
                .get(tator_api::labels::COMPONENT)
                .map(String::as_str)
                == Some(objects::BUCKET_JOB)
        });
        match job.and_then(job_succeeded) {
            Some(true) => {}
            Some(false) => {
                return Finding::not_ready(
                    "BucketJobFailed",
                    format!(
                        "Job {} could not create the buckets; see its pod logs",
                        job.map(|j| j.name_any()).unwrap_or_default()
                    ),
                );
            }
            None => {
                return Finding::not_ready(
                    "CreatingBuckets",
                    "the in-cluster buckets are being created",
                );
            }
        }
        ok_msgs.push(format!(
            "in-cluster buckets {}",
            buckets::in_cluster_buckets(t).join(", ")
        ));
    }
    let mut wanted = Vec::new();
    for (role, placement) in buckets::system_buckets(t) {
        if let Placement::External(e) = placement {
            wanted.push(Check {
                label: format!("{} bucket {}", role.as_str(), e.bucket_name),
                store_type: e.store_type,
                endpoint: e.endpoint,
                region: e.region,
                bucket: e.bucket_name,
                secret: e.credentials_secret,
            });
        }
    }
    for b in &t.spec.buckets {
        wanted.push(Check {
            label: format!("bucket {} (organization {})", b.name, b.organization),
            store_type: b.store_type,
            endpoint: b.endpoint.clone(),
            region: b.region.clone(),
            bucket: b.name.clone(),
            secret: b.credentials_secret.clone(),
        });
    }
    let results = join_all(wanted.iter().map(|c| check_one(c, secrets))).await;
    for r in results {
        match r {
            Ok(msg) => ok_msgs.push(msg),
            Err(e) => return Finding::not_ready(e.reason, e.message),
        }
    }
    Finding::ready("BucketsReachable", ok_msgs.join("; "))
}

/// Whether object storage has buckets the operator checks over the network.
pub fn has_external_buckets(t: &ValidatedTator) -> bool {
    !t.spec.buckets.is_empty()
        || buckets::system_buckets(t)
            .iter()
            .any(|(_, p)| matches!(p, Placement::External(_)))
}
