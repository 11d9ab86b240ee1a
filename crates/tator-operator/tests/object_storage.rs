//! Object storage against real servers.
//!
//! - Bucket preflight checks and the in-cluster store's bucket script run against a real S3
//!   server: SeaweedFS's `weed`, built from its Go module by `tests/tools/build.sh` (the same
//!   server the in-cluster store runs), started on loopback by the test bed.
//! - Tator's REST API cannot run here: bucket registration is tested against a small stand-in
//!   for `/rest/Buckets/<organization>` and `/rest/Bucket/<id>` that follows the request and
//!   response shapes of Tator's Bucket endpoints (list, create answering `{"message", "id"}`,
//!   update, delete; `Authorization: Token <token>`; config is write-only and never listed).
//! - The operator, on the real control plane, builds the store, wires the buckets Secret into
//!   Tator's pods, registers buckets through the stand-in and reports `ObjectStorageReady` and
//!   `BucketsRegistered`; no credential shows up in a pod spec, Event, status or log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::Secret,
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tator_api::TatorDeployment;
use tator_operator::{
    builders::objects::BUCKET_SCRIPT,
    checks::{Password, S3Target, check_s3},
};
use tator_testbed::{
    services::Seaweed,
    support::{JsonRequest, captured_logs, namespace, serve_json, unused_port, wait_for},
};

const CANARY_KEY: &str = "CANARYACCESSKEY7F3A";
const CANARY_SECRET: &str = "canary-Secret-9c1e-5b7d";
const ADMIN: (&str, &str) = ("ADMINKEY0001", "admin-secret-0001");
const TOKEN: &str = "canary-Token-0a1b2c3d";

/// Identities: an admin, and a key limited to the bucket "media" (as the operator generates
/// for Tator).
fn identities() -> Value {
    json!({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ADMIN.0, "secretKey": ADMIN.1}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "tator", "credentials": [{"accessKey": CANARY_KEY, "secretKey": CANARY_SECRET}],
         "actions": ["Read:media", "Write:media", "List:media", "Tagging:media"]}
    ]})
}

async fn seaweed(buckets: &'static [&'static str]) -> Seaweed {
    tokio::task::spawn_blocking(move || Seaweed::start(&identities(), buckets))
        .await
        .unwrap()
        .expect("weed must be built: run `make tools`")
}

fn target(endpoint: &str, bucket: &str, key: &str, secret: &str) -> S3Target {
    S3Target {
        endpoint: endpoint.into(),
        region: "us-east-1".into(),
        bucket: bucket.into(),
        access_key: key.into(),
        secret_key: Password::new(secret.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_against_a_real_s3_server() {
    let s3 = seaweed(&["media", "other"]).await;
    let ok = check_s3(&target(&s3.s3_url, "media", CANARY_KEY, CANARY_SECRET)).await;
    assert!(ok.is_ok(), "{ok:?}");

    let missing = check_s3(&target(&s3.s3_url, "nope", ADMIN.0, ADMIN.1))
        .await
        .unwrap_err();
    assert_eq!(missing.reason, "BucketNotFound", "{missing:?}");

    let wrong_secret = check_s3(&target(&s3.s3_url, "media", CANARY_KEY, "not-the-secret"))
        .await
        .unwrap_err();
    assert_eq!(
        wrong_secret.reason, "InvalidCredentials",
        "{wrong_secret:?}"
    );

    let unknown_key = check_s3(&target(&s3.s3_url, "media", "NOSUCHKEY", CANARY_SECRET))
        .await
        .unwrap_err();
    assert_eq!(unknown_key.reason, "InvalidCredentials", "{unknown_key:?}");

    // Tator's limited key may not touch another bucket.
    let denied = check_s3(&target(&s3.s3_url, "other", CANARY_KEY, CANARY_SECRET))
        .await
        .unwrap_err();
    assert_eq!(denied.reason, "AccessDenied", "{denied:?}");

    let gone = check_s3(&target(
        &format!("http://127.0.0.1:{}", unused_port()),
        "media",
        CANARY_KEY,
        CANARY_SECRET,
    ))
    .await
    .unwrap_err();
    assert_eq!(gone.reason, "Unreachable", "{gone:?}");

    for e in [missing, wrong_secret, unknown_key, denied, gone] {
        assert!(
            !e.message.contains(CANARY_SECRET) && !e.message.contains("not-the-secret"),
            "a message leaked a secret: {e:?}"
        );
    }
}

/// The bucket Job's script, run with the real `weed` against a real server: it creates the
/// buckets, and a second run (a re-created Job) succeeds on buckets that exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_job_script_creates_buckets_idempotently() {
    let s3 = seaweed(&[]).await;
    let weed_dir = s3.weed.parent().unwrap().to_path_buf();
    let run = || {
        std::process::Command::new("sh")
            .args(["-c", BUCKET_SCRIPT])
            .env("MASTER", &s3.master)
            .env("BUCKETS", "tator tator-backup")
            .env("PATH", format!("{}:/usr/bin:/bin", weed_dir.display()))
            .output()
            .unwrap()
    };
    for round in 0..2 {
        let out = tokio::task::block_in_place(run);
        assert!(
            out.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for b in ["tator", "tator-backup"] {
        let ok = check_s3(&target(&s3.s3_url, b, ADMIN.0, ADMIN.1)).await;
        assert!(ok.is_ok(), "{b}: {ok:?}");
    }
    // A failure that is not "already exists" fails the Job.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new("sh")
            .args(["-c", BUCKET_SCRIPT])
            .env("MASTER", format!("127.0.0.1:{}", unused_port()))
            .env("BUCKETS", "x1")
            .env("PATH", format!("{}:/usr/bin:/bin", weed_dir.display()))
            .output()
            .unwrap()
    });
    assert!(!out.status.success());
}

/// One request the stand-in received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Value,
}

/// A stand-in for Tator's Bucket endpoints, following the shapes of Tator's REST API:
/// `GET /rest/Buckets/<org>` lists `{id, name, organization, endpoint_url, archive_sc, live_sc,
/// store_type, external_host}` (never config); `POST /rest/Buckets/<org>` requires name,
/// store_type and config and answers 201 `{"message", "id"}`; `PATCH`/`DELETE
/// /rest/Bucket/<id>` answer `{"message"}`; errors answer `{"message"}`; every call needs
/// `Authorization: Token <token>`.
#[derive(Clone, Default)]
struct TatorStandIn {
    buckets: Arc<Mutex<BTreeMap<i64, Value>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    next_id: Arc<Mutex<i64>>,
    down: Arc<Mutex<bool>>,
}

impl TatorStandIn {
    async fn start(&self) -> u16 {
        let me = self.clone();
        serve_json(move |req: JsonRequest| {
            let authorized = req.authorization.as_deref() == Some(&format!("Token {TOKEN}"));
            me.seen.lock().unwrap().push(Seen {
                method: req.method.clone(),
                path: req.path.clone(),
                body: req.body.clone(),
            });
            let (status, answer) = if *me.down.lock().unwrap() {
                ("503 Service Unavailable", json!({"message": "down"}))
            } else if !authorized {
                (
                    "403 Forbidden",
                    json!({"message": "Authentication credentials were not provided."}),
                )
            } else {
                me.route(&req.method, &req.path, req.body)
            };
            (status.to_string(), answer)
        })
        .await
    }

    fn route(&self, method: &str, path: &str, body: Value) -> (&'static str, Value) {
        let mut buckets = self.buckets.lock().unwrap();
        let listed = |b: &Value| {
            json!({"id": b["id"], "name": b["name"], "organization": b["organization"],
                   "endpoint_url": b["config"]["endpoint_url"], "archive_sc": b["archive_sc"],
                   "live_sc": b["live_sc"], "store_type": b["store_type"],
                   "external_host": b["external_host"], "effective_permission": 0})
        };
        if let Some(org) = path.strip_prefix("/rest/Buckets/") {
            let org: i64 = org.parse().unwrap_or(0);
            return match method {
                "GET" => (
                    "200 OK",
                    Value::Array(
                        buckets
                            .values()
                            .filter(|b| b["organization"] == org)
                            .map(listed)
                            .collect(),
                    ),
                ),
                "POST" => {
                    for f in ["name", "store_type", "config"] {
                        if body.get(f).is_none() {
                            return (
                                "400 Bad Request",
                                json!({"message": format!("Missing required field {f}")}),
                            );
                        }
                    }
                    let mut next = self.next_id.lock().unwrap();
                    *next += 1;
                    let id = *next;
                    let mut b = body.clone();
                    b["id"] = id.into();
                    b["organization"] = org.into();
                    let name = b["name"].clone();
                    buckets.insert(id, b);
                    (
                        "201 Created",
                        json!({"message": format!("Bucket {} created!", name.as_str().unwrap_or("")), "id": id}),
                    )
                }
                _ => ("405 Method Not Allowed", json!({"message": "no"})),
            };
        }
        if let Some(id) = path.strip_prefix("/rest/Bucket/") {
            let id: i64 = id.parse().unwrap_or(0);
            let Some(existing) = buckets.get_mut(&id) else {
                return ("404 Not Found", json!({"message": "Not found."}));
            };
            return match method {
                "GET" => ("200 OK", listed(existing)),
                "PATCH" => {
                    for (k, v) in body.as_object().cloned().unwrap_or_default() {
                        existing[k] = v;
                    }
                    (
                        "200 OK",
                        json!({"message": format!("Bucket {id} updated successfully!")}),
                    )
                }
                "DELETE" => {
                    buckets.remove(&id);
                    (
                        "200 OK",
                        json!({"message": format!("Bucket {id} deleted successfully!")}),
                    )
                }
                _ => ("405 Method Not Allowed", json!({"message": "no"})),
            };
        }
        ("404 Not Found", json!({"message": "Not found."}))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<(String, String)> {
        self.seen()
            .into_iter()
            .filter(|s| s.method != "GET")
            .map(|s| (s.method, s.path))
            .collect()
    }
}

fn cond(td: &TatorDeployment, t: &str) -> Option<(String, String, String)> {
    td.status.as_ref().and_then(|s| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    })
}

async fn wait_cond(
    tds: &Api<TatorDeployment>,
    type_: &str,
    status: &str,
    reason: &str,
    secs: u64,
) -> TatorDeployment {
    wait_for(
        &format!("{type_}={status}/{reason}"),
        Duration::from_secs(secs),
        || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            match cond(&td, type_) {
                Some((s, r, _)) if s == status && r == reason => Ok(td),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_on_the_control_plane() {
    let logs = captured_logs();
    let s3 = seaweed(&["media", "other"]).await;
    let tator = TatorStandIn::default();
    let api_port = tator.start().await;

    let client = common::cluster().await;
    let ns = namespace(&client, "op-objects", true).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, data) in [
        (
            "media-creds",
            json!({"accessKeyId": CANARY_KEY, "secretAccessKey": CANARY_SECRET}),
        ),
        ("tator-token", json!({"token": TOKEN})),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": common::consent("tator")}, "stringData": data}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let (ctx, task) = common::start_controller(&client, &ns);

    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    // The live bucket stays on the in-cluster store (the default); the backup bucket and an
    // organization's bucket are on the "external" S3 server.
    let bucket = |name: &str, prune: bool| {
        json!({"name": name, "organization": 1, "storeType": "MINIO", "endpoint": s3.s3_url,
               "credentialsSecret": "media-creds", "prune": prune})
    };
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "objectStorage": {"backup": {"external": {"storeType": "MINIO", "bucketName": "media",
                     "endpoint": s3.s3_url, "credentialsSecret": "media-creds"}}},
                 "apiAccess": {"tokenSecret": {"name": "tator-token", "key": "token"},
                               "url": format!("http://127.0.0.1:{api_port}")},
                 "buckets": [bucket("media", true)]}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();

    // Registered once the API is available, with Tator's id in status.
    let td = wait_cond(&tds, "BucketsRegistered", "True", "Registered", 120).await;
    let reg = &td.status.as_ref().unwrap().buckets;
    assert_eq!(reg.len(), 1, "{reg:?}");
    assert_eq!(
        (reg[0].name.as_str(), reg[0].organization, reg[0].id),
        ("media", 1, 1)
    );
    let posted = tator
        .seen()
        .into_iter()
        .find(|s| s.method == "POST")
        .expect("a POST");
    assert_eq!(posted.path, "/rest/Buckets/1");
    assert_eq!(posted.body["store_type"], "MINIO");
    assert_eq!(
        posted.body["config"]["aws_secret_access_key"],
        CANARY_SECRET
    );
    assert_eq!(posted.body["config"]["endpoint_url"], s3.s3_url);

    // The store, its bucket Job and every bucket check pass.
    let td = wait_cond(&tds, "ObjectStorageReady", "True", "BucketsReachable", 120).await;
    let msg = cond(&td, "ObjectStorageReady").unwrap().2;
    assert!(msg.contains("in-cluster buckets tator"), "{msg}");
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    assert!(sts.get_opt("tator-seaweedfs").await.unwrap().is_some());

    // Tator's pods read every DEFAULT_* variable from the operator's Secret, by reference.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let api_deploy = deploys.get("tator-api").await.unwrap();
    let env = api_deploy
        .spec
        .clone()
        .unwrap()
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let refs: BTreeMap<String, String> = env
        .iter()
        .filter(|e| e.name.starts_with("DEFAULT_"))
        .map(|e| {
            assert!(e.value.is_none(), "{} has an inline value", e.name);
            let r = e
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap();
            (e.name.clone(), r.name.clone())
        })
        .collect();
    for v in [
        "DEFAULT_LIVE_CONFIG",
        "DEFAULT_LIVE_BUCKET_NAME",
        "DEFAULT_LIVE_STORE_TYPE",
        "DEFAULT_LIVE_EXTERNAL_HOST",
        "DEFAULT_BACKUP_CONFIG",
        "DEFAULT_BACKUP_BUCKET_NAME",
        "DEFAULT_BACKUP_STORE_TYPE",
    ] {
        assert_eq!(
            refs.get(v).map(String::as_str),
            Some("tator-buckets"),
            "{v}"
        );
    }
    let composed = secrets.get("tator-buckets").await.unwrap();
    let data = composed.data.unwrap();
    let backup: Value = serde_json::from_slice(&data["DEFAULT_BACKUP_CONFIG"].0).unwrap();
    assert_eq!(backup["aws_access_key_id"], CANARY_KEY);
    let live: Value = serde_json::from_slice(&data["DEFAULT_LIVE_CONFIG"].0).unwrap();
    assert_eq!(live["endpoint_url"], "http://tator-seaweedfs:8333");

    // A re-run sends nothing when nothing changed.
    let writes = tator.writes().len();
    common::poke_and_settle(&ctx, &client, &ns, "tator").await;
    assert_eq!(tator.writes().len(), writes, "{:?}", tator.writes());

    // A changed entry is updated in place (found by name), not created again.
    let mut changed = bucket("media", true);
    changed["externalHost"] = json!("https://cdn.example.com/media");
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"buckets": [changed]}})),
    )
    .await
    .unwrap();
    wait_for("a PATCH of bucket 1", Duration::from_secs(60), || async {
        let w = tator.writes();
        w.iter()
            .any(|(m, p)| m == "PATCH" && p == "/rest/Bucket/1")
            .then_some(())
            .ok_or(format!("{w:?}"))
    })
    .await
    .unwrap();
    assert_eq!(
        tator.buckets.lock().unwrap()[&1]["external_host"],
        "https://cdn.example.com/media"
    );
    assert_eq!(tator.buckets.lock().unwrap().len(), 1);

    // The API goes down: the error is reported with its status code; nothing is lost.
    *tator.down.lock().unwrap() = true;
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"buckets": [bucket("media", true), bucket("other", false)]}}),
        ),
    )
    .await
    .unwrap();
    let td = wait_cond(&tds, "BucketsRegistered", "False", "ApiError", 60).await;
    let msg = cond(&td, "BucketsRegistered").unwrap().2;
    assert!(msg.contains("503"), "{msg}");
    assert_eq!(td.status.as_ref().unwrap().buckets.len(), 1);
    // ... and "other" is denied to this key: the preflight says so.
    let td = wait_cond(&tds, "ObjectStorageReady", "False", "AccessDenied", 60).await;
    assert!(cond(&td, "ObjectStorageReady").unwrap().2.contains("other"));
    *tator.down.lock().unwrap() = false;
    wait_for("two registrations", Duration::from_secs(90), || async {
        let td = tds.get("tator").await.map_err(|e| e.to_string())?;
        let n = td.status.as_ref().map_or(0, |s| s.buckets.len());
        (n == 2).then_some(()).ok_or(format!("{n}"))
    })
    .await
    .unwrap();

    // Removing entries: prune=false is only forgotten, prune=true is deleted in Tator.
    tds.patch(
        "tator",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"buckets": null, "apiAccess": {"tokenSecret": {"name": "tator-token", "key": "token"}, "url": format!("http://127.0.0.1:{api_port}")}}})),
    )
    .await
    .unwrap();
    wait_for("registrations removed", Duration::from_secs(60), || async {
        let td = tds.get("tator").await.map_err(|e| e.to_string())?;
        let n = td.status.as_ref().map_or(0, |s| s.buckets.len());
        (n == 0).then_some(()).ok_or(format!("{n}"))
    })
    .await
    .unwrap();
    let left: Vec<String> = tator
        .buckets
        .lock()
        .unwrap()
        .values()
        .map(|b| b["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["other"], "only the pruned entry is deleted in Tator");

    // No credential anywhere: pod specs, Jobs, Events, status, logs.
    let mut visible = String::new();
    for d in deploys.list(&ListParams::default()).await.unwrap().items {
        visible.push_str(&serde_json::to_string(&d.spec).unwrap());
    }
    for s in sts.list(&ListParams::default()).await.unwrap().items {
        visible.push_str(&serde_json::to_string(&s.spec).unwrap());
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    for j in jobs.list(&ListParams::default()).await.unwrap().items {
        visible.push_str(&serde_json::to_string(&j.spec).unwrap());
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    visible.push_str(
        &serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap(),
    );
    visible.push_str(&serde_json::to_string(&tds.get("tator").await.unwrap().status).unwrap());
    visible.push_str(&String::from_utf8_lossy(&logs.lock().unwrap()));
    assert!(
        visible.contains("reconcile"),
        "no operator log was captured"
    );
    for canary in [CANARY_KEY, CANARY_SECRET, TOKEN] {
        assert!(!visible.contains(canary), "{canary} leaked");
    }
    task.abort();
}
