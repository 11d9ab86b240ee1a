//! Registration of spec.buckets in Tator through its REST API (`/rest/Buckets/<organization>`
//! to list and create, `/rest/Bucket/<id>` to update and delete), authenticated with
//! `Authorization: Token <token>`.
//!
//! A registration is found by name within its organization, so a re-run never creates a
//! duplicate. What was sent is remembered as a digest in status: it is sent again only when the
//! settings or the credentials change. A registration is deleted in Tator only when its entry
//! said `prune: true` and is removed from the spec. Messages carry status codes and Tator's
//! message, never a credential.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use tator_api::{RegisteredBucket, TatorBucket};

use crate::{
    builders::{common::short_hash, objects},
    tator_rest::{CallError, Kind, TatorRest, find_by_name},
    validate::ValidatedTator,
};

/// The `BucketsRegistered` condition and the registrations to record in status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub ok: bool,
    pub reason: String,
    pub message: String,
    pub buckets: Vec<RegisteredBucket>,
}

impl Registration {
    fn new(
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        buckets: Vec<RegisteredBucket>,
    ) -> Self {
        Self {
            ok,
            reason: reason.into(),
            message: message.into(),
            buckets,
        }
    }
}

/// The body Tator's Bucket endpoints take for one entry.
pub fn request_body(b: &TatorBucket, config: Value) -> Value {
    let mut body = json!({
        "name": b.name,
        "store_type": b.store_type.as_str(),
        "config": config,
        "live_sc": "STANDARD",
    });
    if let Some(sc) = b.archive_storage_class {
        body["archive_sc"] = sc.as_str().into();
    }
    if let Some(h) = &b.external_host {
        body["external_host"] = h.clone().into();
    }
    body
}

/// Digest of a request body: which settings and credentials were last sent.
pub fn digest(body: &Value) -> String {
    short_hash(body.to_string().as_bytes(), 16)
}

/// Inputs of one registration round.
pub struct Inputs<'a> {
    /// The REST API Deployment is available.
    pub api_ready: bool,
    /// The API token, if its Secret and key exist.
    pub token: Option<&'a str>,
    /// Tator configurations of spec.buckets by (organization, name), or why one cannot be
    /// composed.
    pub configs: BTreeMap<(i64, String), Result<Value, String>>,
    /// What status recorded last time.
    pub previous: &'a [RegisteredBucket],
}

/// Creates, updates and prunes registrations so that Tator has what spec.buckets says.
/// Returns None when there is nothing to register and nothing recorded.
pub async fn register(t: &ValidatedTator, inputs: Inputs<'_>) -> Option<Registration> {
    let desired = &t.spec.buckets;
    if desired.is_empty() && inputs.previous.is_empty() {
        return None;
    }
    let keep_previous = || inputs.previous.to_vec();
    if !inputs.api_ready {
        return Some(Registration::new(
            false,
            "WaitingForApi",
            "buckets are registered once Tator's REST API is available",
            keep_previous(),
        ));
    }
    let Some(token) = inputs.token else {
        let name = t
            .spec
            .api_access
            .as_ref()
            .map(|a| format!("{}/{}", a.token_secret.name, a.token_secret.key))
            .unwrap_or_default();
        return Some(Registration::new(
            false,
            "TokenNotFound",
            format!("the API token Secret key {name} does not exist"),
            keep_previous(),
        ));
    };
    let mut secrets = Vec::new();
    for v in inputs.configs.values().flatten() {
        collect_strings(v, &mut secrets);
    }
    let api = match TatorRest::new(t, token, secrets) {
        Ok(api) => api,
        Err(e) => {
            return Some(Registration::new(
                false,
                e.reason,
                e.message,
                keep_previous(),
            ));
        }
    };
    let prev: BTreeMap<(i64, String), &RegisteredBucket> = inputs
        .previous
        .iter()
        .map(|r| ((r.organization, r.name.clone()), r))
        .collect();
    let mut out = Vec::new();
    let mut failures: Vec<CallError> = Vec::new();
    let mut changed = 0;
    // Listings per organization, fetched only when something must be sent.
    let mut listings: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    for b in desired {
        let key = (b.organization, b.name.clone());
        let config = match inputs.configs.get(&key) {
            Some(Ok(c)) => c.clone(),
            Some(Err(why)) => {
                failures.push(CallError {
                    reason: "InvalidBucket",
                    message: why.clone(),
                });
                out.extend(prev.get(&key).map(|r| (*r).clone()));
                continue;
            }
            None => continue,
        };
        let body = request_body(b, config);
        let d = digest(&body);
        if let Some(r) = prev.get(&key)
            && r.digest == d
        {
            let mut r = (*r).clone();
            r.prune = b.prune;
            out.push(r);
            continue;
        }
        let result = async {
            if let std::collections::btree_map::Entry::Vacant(slot) = listings.entry(b.organization)
            {
                slot.insert(api.list(Kind::Bucket, b.organization).await?);
            }
            let found = listings
                .get(&b.organization)
                .and_then(|l| find_by_name(l, &b.name));
            match found {
                Some(id) => api.update(Kind::Bucket, id, &body).await.map(|()| id),
                None => api.create(Kind::Bucket, b.organization, &body).await,
            }
        }
        .await;
        match result {
            Ok(id) => {
                changed += 1;
                out.push(RegisteredBucket {
                    name: b.name.clone(),
                    organization: b.organization,
                    id,
                    prune: b.prune,
                    digest: d,
                });
            }
            Err(e) => {
                out.extend(prev.get(&key).map(|r| (*r).clone()));
                failures.push(e);
            }
        }
    }
    // Entries removed from the spec: delete in Tator only when they said prune.
    for r in inputs.previous {
        let still = desired
            .iter()
            .any(|b| b.organization == r.organization && b.name == r.name);
        if still || !r.prune {
            continue;
        }
        match api.delete(Kind::Bucket, r.id).await {
            Ok(deleted) => changed += usize::from(deleted),
            Err(e) => {
                out.push(r.clone());
                failures.push(e);
            }
        }
    }
    out.sort_by(|a, b| (a.organization, &a.name).cmp(&(b.organization, &b.name)));
    Some(match failures.into_iter().next() {
        Some(e) => {
            let reason = if e.reason == "NotFound" {
                "ApiError"
            } else {
                e.reason
            };
            Registration::new(false, reason, e.message, out)
        }
        None => Registration::new(
            true,
            "Registered",
            format!(
                "{} bucket(s) registered in Tator ({changed} sent this round)",
                desired.len()
            ),
            out,
        ),
    })
}

/// A job cluster as Tator's /rest/JobClusters endpoints take it.
pub struct JobClusterBody<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    /// The bearer token Tator submits workflows with.
    pub token: &'a str,
    /// PEM CA of the cluster's API server.
    pub cert: &'a str,
}

fn job_cluster_json(c: &JobClusterBody<'_>) -> Value {
    json!({"name": c.name, "host": c.host, "port": c.port, "token": c.token, "cert": c.cert})
}

/// Digest of what registering a job cluster sends (recorded in status; no credential).
pub fn job_cluster_digest(c: &JobClusterBody<'_>) -> String {
    digest(&job_cluster_json(c))
}

/// Registers a job cluster for an organization: PATCH when Tator has one of that name, else
/// POST. Nothing is sent when `previous` (id, digest) matches. Returns Tator's id and the
/// digest of what it has; errors are (reason, message) without credentials.
pub async fn register_job_cluster(
    t: &ValidatedTator,
    api_token: &str,
    organization: i64,
    c: &JobClusterBody<'_>,
    previous: Option<(i64, &str)>,
) -> Result<(i64, String), (String, String)> {
    let body = job_cluster_json(c);
    let d = digest(&body);
    if let Some((id, prev)) = previous
        && prev == d
    {
        return Ok((id, d));
    }
    let fail = |e: CallError| (e.reason.to_string(), e.message);
    let api = TatorRest::new(t, api_token, vec![c.token.to_string()]).map_err(fail)?;
    let listing = api
        .list(Kind::JobCluster, organization)
        .await
        .map_err(fail)?;
    let id = match find_by_name(&listing, c.name) {
        Some(id) => {
            api.update(Kind::JobCluster, id, &body)
                .await
                .map_err(fail)?;
            id
        }
        None => api
            .create(Kind::JobCluster, organization, &body)
            .await
            .map_err(fail)?,
    };
    Ok((id, d))
}

/// Deletes a job cluster's registration (gone already counts as done).
pub async fn unregister_job_cluster(
    t: &ValidatedTator,
    api_token: &str,
    id: i64,
) -> Result<(), (String, String)> {
    let fail = |e: CallError| (e.reason.to_string(), e.message);
    let api = TatorRest::new(t, api_token, Vec::new()).map_err(fail)?;
    api.delete(Kind::JobCluster, id)
        .await
        .map(drop)
        .map_err(fail)
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect_strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect_strings(x, out)),
        _ => {}
    }
}

/// Tator configurations of spec.buckets from the credentials the fetch stage read.
pub fn configs(
    t: &ValidatedTator,
    secrets: &objects::StorageSecrets,
) -> BTreeMap<(i64, String), Result<Value, String>> {
    t.spec
        .buckets
        .iter()
        .map(|b| {
            let key = (b.organization, b.name.clone());
            let config = match secrets.credentials.get(&b.credentials_secret) {
                Some(Some(data)) => objects::tator_config(
                    b.store_type,
                    b.endpoint.as_deref(),
                    &b.region,
                    &b.credentials_secret,
                    data,
                )
                .map_err(|p| format!("bucket {}: {}", b.name, p.message)),
                _ => Err(format!(
                    "bucket {}: credentials Secret {} does not exist",
                    b.name, b.credentials_secret
                )),
            };
            (key, config)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{tator_rest::api_url, test_fixtures::minimal, validate::validate};
    use tator_api::{ApiAccess, ArchiveStorageClass, SecretKeyRef, StoreType};

    /// Answers one HTTP request with `204 No Content` and returns its head.
    async fn one_request(listener: tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        sock.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).into_owned()
    }

    #[tokio::test]
    async fn calls_send_the_domain_as_host_which_tators_allowed_hosts_accept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(one_request(listener));
        let mut td = minimal("1.5.0");
        td.spec.api_access = Some(ApiAccess {
            token_secret: SecretKeyRef {
                name: "tok".into(),
                key: "token".into(),
            },
            url: Some(format!("http://127.0.0.1:{port}")),
        });
        let t = validate(&td).unwrap();
        unregister_job_cluster(&t, "secret-token", 7).await.unwrap();
        let head = server.await.unwrap();
        let host = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap();
        assert_eq!(host, "tator.example.com", "{head}");
        assert!(head.starts_with("DELETE /rest/JobCluster/7 "), "{head}");
    }

    fn with_bucket() -> ValidatedTator {
        let mut td = minimal("1.5.0");
        td.spec.api_access = Some(ApiAccess {
            token_secret: SecretKeyRef {
                name: "tok".into(),
                key: "token".into(),
            },
            url: None,
        });
        td.spec.buckets = vec![TatorBucket {
            name: "lab".into(),
            organization: 3,
            store_type: StoreType::Aws,
            endpoint: None,
            region: "us-east-2".into(),
            external_host: None,
            credentials_secret: "aws".into(),
            archive_storage_class: Some(ArchiveStorageClass::DeepArchive),
            prune: false,
        }];
        validate(&td).unwrap()
    }

    #[tokio::test]
    async fn waits_for_the_api_and_for_the_token_without_calling_anything() {
        let t = with_bucket();
        let previous = vec![RegisteredBucket {
            name: "lab".into(),
            organization: 3,
            id: 9,
            prune: false,
            digest: "d".into(),
        }];
        let r = register(
            &t,
            Inputs {
                api_ready: false,
                token: Some("tok"),
                configs: BTreeMap::new(),
                previous: &previous,
            },
        )
        .await
        .unwrap();
        assert_eq!((r.ok, r.reason.as_str()), (false, "WaitingForApi"));
        assert_eq!(
            r.buckets, previous,
            "nothing recorded is lost while waiting"
        );
        let r = register(
            &t,
            Inputs {
                api_ready: true,
                token: None,
                configs: BTreeMap::new(),
                previous: &previous,
            },
        )
        .await
        .unwrap();
        assert_eq!(r.reason, "TokenNotFound");
        assert!(r.message.contains("tok/token"), "{}", r.message);
    }

    #[tokio::test]
    async fn nothing_desired_and_nothing_recorded_means_no_condition() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let r = register(
            &t,
            Inputs {
                api_ready: true,
                token: None,
                configs: BTreeMap::new(),
                previous: &[],
            },
        )
        .await;
        assert!(r.is_none());
    }

    #[test]
    fn the_body_follows_tator_and_the_digest_follows_the_credentials() {
        let t = with_bucket();
        let b = &t.spec.buckets[0];
        let body = request_body(b, json!({"aws_secret_access_key": "a"}));
        assert_eq!(body["store_type"], "AWS");
        assert_eq!(body["archive_sc"], "DEEP_ARCHIVE");
        assert_eq!(body["live_sc"], "STANDARD");
        assert!(body.get("external_host").is_none());
        let rotated = request_body(b, json!({"aws_secret_access_key": "b"}));
        assert_ne!(digest(&body), digest(&rotated));
        assert_eq!(api_url(&t), "http://tator-api.tator.svc:8000");
    }
}
