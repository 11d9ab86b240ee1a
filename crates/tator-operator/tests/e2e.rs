//! End-to-end journeys: Tator's own processes, started from the pod specs the operator applied,
//! on the test bed's process node (see `tator_testbed::procnode`), reached through the NGINX the
//! operator configured at the LoadBalancer address the test bed assigned.
//!
//! Nothing about a pod is written here: a regression in what the operator applies breaks these
//! tests. They need `make e2e-images` (Tator's source, venvs and UI packages as host folders).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{collections::BTreeSet, path::Path, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    batch::v1::{CronJob, Job},
    core::v1::{Secret, Service},
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::Value;
use tator_api::TatorDeployment;
use tator_testbed::{
    browser::{Browser, BrowserOptions},
    support::{FIELD_MANAGER, TestCluster, install_crds, namespace, wait_for, workspace_root},
};

const HOST: &str = "tator.example.com";
const ADMIN: &str = "boss";
const ADMIN_PASSWORD: &str = "e2e-Admin-Secret-1";

/// The last lines of every container log of the process node, for failure messages.
fn logs(cluster: &TestCluster) -> String {
    let mut out = String::new();
    let pods = cluster.dir.join("procnode/pods");
    let mut files: Vec<_> = walk(&pods);
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out.push_str(&format!(
            "\n--- {}\n{tail}\n",
            f.strip_prefix(&pods).unwrap_or(f).display()
        ));
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name()
                .is_some_and(|n| n == "containers" || n == "volumes")
            {
                continue;
            }
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn condition(td: &TatorDeployment, kind: &str) -> Option<(String, String, String)> {
    td.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Applies an example with two additions a user would make: the first administrator from a
/// Secret, and the DNS name of the load balancer as external-dns publishes it (the test bed
/// resolves it, in pods too, as a cluster's DNS would).
async fn apply_example(client: &Client, ns: &str, file: &str) -> String {
    let text = std::fs::read_to_string(workspace_root().join(file)).unwrap();
    let mut td: Value = serde_yaml::from_str(&text).unwrap();
    td["metadata"]["namespace"] = Value::String(ns.to_string());
    td["spec"]["admin"] = serde_json::json!({"secretName": "tator-admin"});
    td["spec"]["nginx"]["service"]["annotations"] =
        serde_json::json!({tator_testbed::procnode::EXTERNAL_DNS: HOST});
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let admin = Secret {
        metadata: ObjectMeta {
            name: Some("tator-admin".into()),
            annotations: Some(common::consent_map("*")),
            ..Default::default()
        },
        string_data: Some(
            [("username", ADMIN), ("password", ADMIN_PASSWORD)]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    };
    secrets
        .create(&PostParams::default(), &admin)
        .await
        .unwrap();
    let name = td["metadata"]["name"].as_str().unwrap().to_string();
    let api: Api<TatorDeployment> = Api::namespaced(client.clone(), ns);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&td),
    )
    .await
    .unwrap();
    name
}

/// `helm install` of the operator's chart into `ns`, waiting for the operator to be ready.
fn install_operator(cluster: &TestCluster, ns: &str) {
    let chart = workspace_root().join("charts/tator-operator");
    let out = common::helm(
        &cluster.dir,
        Some(&cluster.kubeconfig),
        &[
            "install",
            "tator-operator",
            chart.to_str().unwrap(),
            "--namespace",
            ns,
            "--wait",
            "--timeout",
            "180s",
        ],
    );
    let ok = out.status.success();
    assert!(
        ok,
        "helm install: {}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        logs(cluster)
    );
}

/// The address and port NGINX answers on: the LoadBalancer Service's ingress address.
async fn load_balancer(client: &Client, ns: &str, name: &str) -> String {
    let svcs: Api<Service> = Api::namespaced(client.clone(), ns);
    wait_for(
        "the NGINX LoadBalancer address",
        Duration::from_secs(60),
        || {
            let svcs = svcs.clone();
            async move {
                let s = svcs
                    .get(&format!("{name}-nginx"))
                    .await
                    .map_err(|e| e.to_string())?;
                let ip = s
                    .status
                    .and_then(|s| s.load_balancer)
                    .and_then(|l| l.ingress)
                    .and_then(|i| i.into_iter().next())
                    .and_then(|i| i.ip)
                    .ok_or("no ingress address yet")?;
                let port = s
                    .spec
                    .and_then(|s| s.ports)
                    .and_then(|p| p.into_iter().next())
                    .map(|p| p.port)
                    .unwrap_or(80);
                Ok(format!("{ip}:{port}"))
            }
        },
    )
    .await
    .unwrap()
}

fn http() -> reqwest::Client {
    // Plain HTTP only; reqwest still wants a TLS configuration.
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

async fn get(c: &reqwest::Client, base: &str, path: &str) -> reqwest::Response {
    c.get(format!("http://{base}{path}"))
        .header("Host", HOST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn rest(
    c: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    rest_at(c, base, HOST, method, path, token, body).await
}

/// A REST call to the installation whose domain is `host`, at `base` (its load balancer).
async fn rest_at(
    c: &reqwest::Client,
    base: &str,
    host: &str,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c
        .request(method.clone(), format!("http://{base}{path}"))
        .header("Host", host);
    if !token.is_empty() {
        r = r.header("Authorization", format!("Token {token}"));
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A small PNG, made by ffmpeg (the tool Tator's images use).
fn test_image(dir: &Path) -> Vec<u8> {
    let file = dir.join("reef.png");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=160x120",
            "-frames:v",
            "1",
        ])
        .arg(&file)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg makes a test image (is ffmpeg installed?)");
    std::fs::read(&file).unwrap()
}

/// A short test video (3 s of 640x480 at 30 fps, H.264), made by ffmpeg.
fn test_video(dir: &Path) -> Vec<u8> {
    let file = dir.join("reef.mp4");
    let ok = std::process::Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x480:rate=30",
            "-t",
            "3",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&file)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg makes a test video (is ffmpeg installed?)");
    std::fs::read(&file).unwrap()
}

/// GET of a presigned URL of the installation, through its load balancer.
async fn get_presigned(c: &reqwest::Client, base: &str, url: &str) -> (u16, Vec<u8>) {
    let url = reqwest::Url::parse(url).unwrap();
    let r = c
        .get(format!(
            "http://{base}{}?{}",
            url.path(),
            url.query().unwrap_or_default()
        ))
        .header("Host", url.host_str().unwrap_or(HOST))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.bytes().await.unwrap_or_default().to_vec())
}

/// A video uploaded the way Tator's clients upload one (presigned PUT through /objects/, then
/// `POST /rest/Transcodes`): the REST API hands it to the transcode service, a worker runs
/// ffmpeg, and the Media gets streaming and archival files that download through /objects/;
/// Tator's job list shows the job succeeded.
async fn video_journey(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    cluster: &TestCluster,
) -> Upload {
    let (s, video_type) = rest(
        c,
        base,
        reqwest::Method::POST,
        &format!("/rest/MediaTypes/{project}"),
        token,
        // An archival copy is made only when the type says how (H.264 here).
        Some(
            serde_json::json!({"name": "Videos", "dtype": "video", "attribute_types": [],
            "archive_config": [{"encode": {"vcodec": "h264", "crf": 28, "preset": "ultrafast"}}]}),
        ),
    )
    .await;
    assert_eq!(s, 201, "video type: {video_type}");
    let video_type = video_type["id"].as_i64().unwrap();
    let video = test_video(&cluster.dir);
    let size = video.len();
    let url = upload_file(c, base, token, project, "reef.mp4", video).await;
    let gid = "6f1c2a3e-0d4b-4c5a-9e7f-1a2b3c4d5e6f";
    let uid = "0a9b8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d";
    let (s, started) = rest(
        c,
        base,
        reqwest::Method::POST,
        &format!("/rest/Transcodes/{project}"),
        token,
        Some(
            serde_json::json!({"type": video_type, "gid": gid, "uid": uid,
            "url": url, "size": size, "section": "e2e",
            "name": "reef.mp4", "md5": md5sum(&cluster.dir.join("reef.mp4"))}),
        ),
    )
    .await;
    assert_eq!(s, 201, "transcode: {started}{}", logs(cluster));
    let media = started["object"]["spec"]["media_id"].as_i64().unwrap();
    let files = wait_for(
        "a worker to transcode the video",
        Duration::from_secs(300),
        || async move {
            let (s, m) = rest(
                c,
                base,
                reqwest::Method::GET,
                &format!("/rest/Media/{media}?presigned=3600"),
                token,
                None,
            )
            .await;
            let files = &m["media_files"];
            let has = |k: &str| {
                files
                    .get(k)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            };
            if s == 200 && has("streaming") && has("archival") {
                Ok(files.clone())
            } else {
                Err(format!("{s} {files}"))
            }
        },
    )
    .await;
    let files = match files {
        Ok(f) => f,
        Err(e) => panic!("{e}{}", logs(cluster)),
    };
    let streaming = files["streaming"].as_array().unwrap();
    for f in streaming {
        assert!(
            f["resolution"][0].as_i64().unwrap_or_default() > 0,
            "streaming file without a resolution: {files}"
        );
    }
    let (s, bytes) = get_presigned(c, base, streaming[0]["path"].as_str().unwrap()).await;
    assert_eq!(s, 200, "streaming file download: {files}");
    assert!(
        bytes.len() > 1000 && &bytes[4..8] == b"ftyp",
        "the streaming file is an MP4 ({} bytes)",
        bytes.len()
    );
    let (s, bytes) = get_presigned(c, base, files["archival"][0]["path"].as_str().unwrap()).await;
    assert_eq!(s, 200, "archival file download: {files}");
    assert!(!bytes.is_empty());
    // Tator asks the transcode service for its jobs: this one succeeds (the worker still makes
    // thumbnails after the files are recorded).
    wait_transcode(
        c,
        base,
        token,
        project,
        (gid, uid),
        "succeeded",
        120,
        cluster,
    )
    .await;
    Upload {
        video_type,
        url,
        size,
        md5: md5sum(&cluster.dir.join("reef.mp4")),
    }
}

/// Uploads `bytes` as `filename` the way Tator's clients do (presigned PUT through /objects/)
/// and returns its download URL.
async fn upload_file(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    filename: &str,
    bytes: Vec<u8>,
) -> String {
    let (s, info) = rest(
        c,
        base,
        reqwest::Method::GET,
        &format!("/rest/UploadInfo/{project}?expiration=3600&num_parts=1&filename={filename}"),
        token,
        None,
    )
    .await;
    assert_eq!(s, 200, "upload info: {info}");
    let url = reqwest::Url::parse(info["urls"][0].as_str().unwrap()).unwrap();
    let put = c
        .put(format!(
            "http://{base}{}?{}",
            url.path(),
            url.query().unwrap_or_default()
        ))
        .header("Host", HOST)
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200, "presigned PUT of {filename}");
    let (s, download) = rest(
        c,
        base,
        reqwest::Method::POST,
        &format!("/rest/DownloadInfo/{project}?expiration=3600"),
        token,
        Some(serde_json::json!({"keys": [info["key"]]})),
    )
    .await;
    assert_eq!(s, 201, "download info: {download}");
    download[0]["url"].as_str().unwrap().to_string()
}

/// The status of one transcode job in Tator's list (None: not listed).
async fn job_status(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    gid: &str,
    uid: &str,
) -> Option<String> {
    let (_, jobs) = rest(
        c,
        base,
        reqwest::Method::GET,
        &format!("/rest/Transcodes/{project}?gid={gid}"),
        token,
        None,
    )
    .await;
    jobs.as_array()?
        .iter()
        .find(|j| j["job"]["uid"] == uid)
        .and_then(|j| j["job"]["status"].as_str().map(String::from))
}

/// Waits until one transcode job has `status` in Tator's list (panics with the pod logs).
#[allow(clippy::too_many_arguments)]
async fn wait_transcode(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    (gid, uid): (&str, &str),
    status: &str,
    seconds: u64,
    cluster: &TestCluster,
) {
    let reached = wait_for(
        &format!("transcode job {uid} to be {status} in Tator's list"),
        Duration::from_secs(seconds),
        || async {
            let st = job_status(c, base, token, project, gid, uid).await;
            (st.as_deref() == Some(status))
                .then_some(())
                .ok_or(format!("{st:?}"))
        },
    )
    .await;
    if let Err(e) = reached {
        panic!("{e}{}", logs(cluster));
    }
}

/// A worker killed (`kill -9`) in the middle of a transcode: the job is not silently lost.
/// Tator's job list shows it running, then failed once a worker's maintenance finds its
/// heartbeat expired; the restarted worker goes on with other jobs.
async fn killed_worker_journey(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    upload: &Upload,
    cluster: &TestCluster,
) {
    // A minute of 720p: long enough to be caught in the middle.
    let file = cluster.dir.join("long.mp4");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc=size=1280x720:rate=30")
        .args(["-t", "60", "-pix_fmt", "yuv420p"])
        .arg(&file)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "ffmpeg makes the long video");
    let bytes = std::fs::read(&file).unwrap();
    let size = bytes.len();
    let url = upload_file(c, base, token, project, "long.mp4", bytes).await;
    let gid = "5d4c3b2a-1f0e-4d9c-8b7a-6f5e4d3c2b1a";
    let uid = "9f8e7d6c-5b4a-4392-8a1b-0c9d8e7f6a5b";
    let (s, started) = rest(
        c,
        base,
        reqwest::Method::POST,
        &format!("/rest/Transcodes/{project}"),
        token,
        Some(
            serde_json::json!({"type": upload.video_type, "gid": gid, "uid": uid, "url": url,
            "size": size, "section": "killed", "name": "long.mp4", "md5": md5sum(&file)}),
        ),
    )
    .await;
    assert_eq!(s, 201, "transcode: {started}");
    wait_transcode(c, base, token, project, (gid, uid), "running", 120, cluster).await;
    // The worker and its work horse (the process running the job), as the node would lose them.
    let killed = std::process::Command::new("pkill")
        .args([
            "-KILL",
            "-f",
            "rq worker --url redis://tator-transcode-queue",
        ])
        .status()
        .unwrap();
    assert!(killed.success(), "no worker process to kill");
    wait_transcode(c, base, token, project, (gid, uid), "failed", 300, cluster).await;
}

/// An uploaded video, ready to be transcoded again.
struct Upload {
    video_type: i64,
    url: String,
    size: usize,
    md5: String,
}

/// Replicas of a Deployment (spec).
async fn replicas(api: &Api<Deployment>, name: &str) -> i32 {
    api.get(name)
        .await
        .ok()
        .and_then(|d| d.spec)
        .and_then(|s| s.replicas)
        .unwrap_or(-1)
}

/// Turns on autoscaling of one worker Deployment (`spec` is the part of the TatorDeployment's
/// spec that holds it, applied under its own field manager) and waits until the idle workers
/// are down to zero. Returns the Deployment's name.
async fn autoscale_to_zero(
    client: &Client,
    ns: &str,
    name: &str,
    workers: &str,
    spec: Value,
    cluster: &TestCluster,
) -> String {
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    tds.patch(
        name,
        &PatchParams::apply(&format!("e2e-{workers}-scaling")),
        &Patch::Apply(&patch),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = format!("{name}-{workers}");
    let idle = wait_for(
        &format!("idle {workers}s to go to zero"),
        Duration::from_secs(120),
        || async {
            let n = replicas(&deployments, &deployment).await;
            (n == 0).then_some(()).ok_or(format!("{n} replicas"))
        },
    )
    .await;
    if let Err(e) = idle {
        panic!("{e}{}", logs(cluster));
    }
    deployment
}

/// The workers scale on the queue: autoscaling on (at most 3, back to none after 20 s idle);
/// idle, they go to zero; 20 transcodes at once bring them to 3 within 60 s of the queue
/// growing; every transcode succeeds exactly once (20 Media, each with its files, 20 jobs
/// succeeded in Tator's list); then they go back to zero.
#[allow(clippy::too_many_arguments)]
async fn scaling_journey(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    project: i64,
    upload: &Upload,
    client: &Client,
    ns: &str,
    name: &str,
    cluster: &TestCluster,
) {
    const JOBS: usize = 20;
    const MAX: i32 = 3;
    let workers = autoscale_to_zero(
        client,
        ns,
        name,
        "transcode-worker",
        serde_json::json!({"transcodes": {"workers": {"autoscaling": {
            "minReplicas": 0, "maxReplicas": MAX, "cooldownSeconds": 20, "scaler": "Operator"}}}}),
        cluster,
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let started = std::time::Instant::now();
    let mut media = Vec::new();
    for i in 0..JOBS {
        let uid = format!("0a9b8c7d-6e5f-4a3b-8c2d-{i:012}");
        let (s, job) = rest(
            c,
            base,
            reqwest::Method::POST,
            &format!("/rest/Transcodes/{project}"),
            token,
            Some(serde_json::json!({"type": upload.video_type,
                "gid": "7e2d3b4f-1a5c-4d6e-8f9a-0b1c2d3e4f5a", "uid": uid, "url": upload.url,
                "size": upload.size, "section": "scaling", "name": format!("reef-{i}.mp4"),
                "md5": upload.md5})),
        )
        .await;
        assert_eq!(s, 201, "transcode {i}: {job}");
        media.push(job["object"]["spec"]["media_id"].as_i64().unwrap());
    }
    let up = wait_for(
        "the workers to reach their maximum",
        Duration::from_secs(60),
        || async {
            let n = replicas(&deployments, &workers).await;
            (n == MAX).then_some(()).ok_or(format!("{n} replicas"))
        },
    )
    .await;
    if let Err(e) = up {
        panic!("{e}{}", logs(cluster));
    }
    println!(
        "scaling: {JOBS} jobs queued, workers at {MAX} after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Done when Tator's list shows every job succeeded (a job ends after its last file).
    let done = wait_for(
        "every transcode to succeed",
        Duration::from_secs(600),
        || async {
            let (_, jobs) = rest(
                c,
                base,
                reqwest::Method::GET,
                &format!("/rest/Transcodes/{project}?gid=7e2d3b4f-1a5c-4d6e-8f9a-0b1c2d3e4f5a"),
                token,
                None,
            )
            .await;
            let states: Vec<&str> = jobs
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|j| j["job"]["status"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            let succeeded = states.iter().filter(|s| **s == "succeeded").count();
            if states.contains(&"failed") {
                return Err(format!("a job failed: {states:?}"));
            }
            (succeeded == JOBS)
                .then_some(())
                .ok_or(format!("{succeeded} of {JOBS} succeeded: {states:?}"))
        },
    )
    .await;
    if let Err(e) = done {
        panic!("{e}{}", logs(cluster));
    }
    // Exactly once: each Media has one set of files (a second run would add another), and
    // Tator's list holds each job once, succeeded.
    for m in &media {
        let (_, body) = rest(
            c,
            base,
            reqwest::Method::GET,
            &format!("/rest/Media/{m}"),
            token,
            None,
        )
        .await;
        let files = &body["media_files"];
        let resolutions: Vec<&Value> = files["streaming"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| &f["resolution"])
            .collect();
        let distinct: BTreeSet<String> = resolutions.iter().map(|r| r.to_string()).collect();
        assert_eq!(distinct.len(), resolutions.len(), "media {m}: {files}");
        assert_eq!(
            files["archival"].as_array().map(Vec::len),
            Some(1),
            "media {m}: {files}"
        );
    }
    let (s, jobs) = rest(
        c,
        base,
        reqwest::Method::GET,
        &format!("/rest/Transcodes/{project}?gid=7e2d3b4f-1a5c-4d6e-8f9a-0b1c2d3e4f5a"),
        token,
        None,
    )
    .await;
    assert_eq!(s, 200, "{jobs}");
    let jobs = jobs.as_array().unwrap();
    let uids: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j["job"]["status"] == "succeeded")
        .filter_map(|j| j["job"]["uid"].as_str())
        .collect();
    assert_eq!((jobs.len(), uids.len()), (JOBS, JOBS), "{jobs:?}");
    let down = wait_for(
        "the workers to go back to zero after the cool-down",
        Duration::from_secs(120),
        || async {
            let n = replicas(&deployments, &workers).await;
            (n == 0).then_some(()).ok_or(format!("{n} replicas"))
        },
    )
    .await;
    if let Err(e) = down {
        panic!("{e}{}", logs(cluster));
    }
}

fn md5sum(file: &Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Every `/static/...` URL a page links (src= and href=).
fn static_links(html: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            if let Some(url) = part.split('"').next()
                && url.starts_with("/static/")
            {
                out.insert(url.to_string());
            }
        }
    }
    out
}

fn isolation_headers(r: &reqwest::Response, what: &str) {
    // Exactly one value each: a second copy (say, Django's COOP plus NGINX's) makes the browser
    // read a list, which it ignores, and the page is not cross-origin isolated.
    let values = |n: &str| {
        r.headers()
            .get_all(n)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        values("cross-origin-opener-policy"),
        ["same-origin"],
        "{what}: Cross-Origin-Opener-Policy"
    );
    assert_eq!(
        values("cross-origin-embedder-policy"),
        ["credentialless"],
        "{what}: Cross-Origin-Embedder-Policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimal_example_runs_tator_and_serves_its_pages() {
    let cluster = TestCluster::start_with(
        "e2e",
        &[
            "--process-node",
            "--operator-bin",
            env!("CARGO_BIN_EXE_tator-operator"),
        ],
    )
    .expect("a cluster with a process node");
    let client = cluster.client().await.unwrap();
    install_crds(&client, &workspace_root().join("crds"))
        .await
        .unwrap();
    let ns = namespace(&client, "e2e", true).await.unwrap();
    // The operator runs in the cluster as its chart installs it (two replicas, leader election,
    // the chart's ServiceAccount and Role): it reaches the API server through the `kubernetes`
    // Service and Tator's REST API through the API Service, as it does in a real cluster.
    install_operator(&cluster, &ns);
    let name = apply_example(&client, &ns, "deploy/examples/minimal.yaml").await;

    // Journey 1: Ready means Tator's processes answer.
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let td = wait_ready(&cluster, &client, &ns, &name).await;
    assert_eq!(
        td.status.as_ref().and_then(|s| s.observed_generation),
        td.metadata.generation
    );
    // The migrations Job ran Tator's migrations against the empty database before the API
    // started (the Job is gone once it succeeded; the condition records it).
    let migrations = condition(&td, "Migrations");
    assert!(
        matches!(&migrations, Some((s, r, _)) if s == "True" && r == "UpToDate"),
        "Migrations: {migrations:?}"
    );

    // Journey 2: the login page, everything it links, the UI pages, and the isolation headers.
    let base = load_balancer(&client, &ns, &name).await;
    let c = http();
    let login = get(&c, &base, "/accounts/login/").await;
    assert_eq!(login.status(), 200, "login page{}", logs(&cluster));
    isolation_headers(&login, "/accounts/login/");
    let html = login.text().await.unwrap();
    let links = static_links(&html);
    assert!(
        !links.is_empty(),
        "the login page links static files:\n{html}"
    );
    for link in &links {
        let r = get(&c, &base, link).await;
        assert_eq!(r.status(), 200, "{link} (linked from the login page)");
    }
    for page in [
        "/registration",
        "/accept",
        "/account-profile",
        "/password-reset-request",
        "/password-reset",
        "/favicon.ico",
    ] {
        let r = get(&c, &base, page).await;
        assert_eq!(r.status(), 200, "UI page {page}");
        isolation_headers(&r, page);
    }
    let api = get(&c, &base, "/rest/Organizations").await;
    isolation_headers(&api, "/rest/Organizations");
    // Tator answers an anonymous list with 400 and says why.
    let status = api.status();
    let body = api.text().await.unwrap();
    assert!(
        status.is_client_error() && body.contains("credentials were not provided"),
        "Tator's REST API answers and wants a login: {status} {body}"
    );

    // Journey 3: the administrator from the Secret logs in, creates an organization and a
    // project, and uploads an image the way Tator's clients do (a presigned PUT through
    // /objects/, then /rest/Medias); the image_jobs worker makes its image and thumbnail.
    let (s, body) = rest(
        &c,
        &base,
        reqwest::Method::POST,
        "/rest/Token",
        "",
        Some(serde_json::json!({"username": ADMIN, "password": ADMIN_PASSWORD})),
    )
    .await;
    assert_eq!(s, 201, "token: {body}{}", logs(&cluster));
    let token = body["token"].as_str().unwrap().to_string();
    let post = |path: &'static str, body: Value| {
        let (c, base, token) = (c.clone(), base.clone(), token.clone());
        async move { rest(&c, &base, reqwest::Method::POST, path, &token, Some(body)).await }
    };
    let (s, org) = post(
        "/rest/Organizations",
        serde_json::json!({"name": "Reef lab"}),
    )
    .await;
    assert_eq!(s, 201, "organization: {org}");
    let org = org["id"].as_i64().unwrap();
    let (s, project) = post(
        "/rest/Projects",
        serde_json::json!({"name": "Reef survey", "summary": "e2e", "organization": org}),
    )
    .await;
    assert_eq!(s, 201, "project: {project}");
    let project = project["id"].as_i64().unwrap();
    let (s, media_type) = rest(
        &c,
        &base,
        reqwest::Method::POST,
        &format!("/rest/MediaTypes/{project}"),
        &token,
        Some(serde_json::json!({"name": "Images", "dtype": "image", "attribute_types": []})),
    )
    .await;
    assert_eq!(s, 201, "media type: {media_type}");
    let media_type = media_type["id"].as_i64().unwrap();
    // The image workers scale on their queue in Tator's Redis (password and all): idle, none
    // runs, so the import below proves the operator's scaler started one for the job.
    // Opt-in: at most 1, back to none after 20 s idle.
    autoscale_to_zero(
        &client,
        &ns,
        &name,
        "image-worker",
        serde_json::json!({"workers": {"image": {"autoscaling": {
            "minReplicas": 0, "maxReplicas": 1, "cooldownSeconds": 20, "scaler": "Operator"}}}}),
        &cluster,
    )
    .await;
    let (s, info) = rest(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/rest/UploadInfo/{project}?expiration=3600&num_parts=1&filename=reef.png"),
        &token,
        None,
    )
    .await;
    assert_eq!(s, 200, "upload info: {info}");
    let url = reqwest::Url::parse(info["urls"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        url.host_str(),
        Some(HOST),
        "uploads go through the installation's own address"
    );
    assert!(url.path().starts_with("/objects/"), "{url}");
    let image = test_image(&cluster.dir);
    let put = c
        .put(format!(
            "http://{base}{}?{}",
            url.path(),
            url.query().unwrap_or_default()
        ))
        .header("Host", HOST)
        .body(image.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        put.status(),
        200,
        "presigned PUT: {}",
        put.text().await.unwrap_or_default()
    );
    let key = info["key"].as_str().unwrap();
    let (s, download) = rest(
        &c,
        &base,
        reqwest::Method::POST,
        &format!("/rest/DownloadInfo/{project}?expiration=3600"),
        &token,
        Some(serde_json::json!({"keys": [key]})),
    )
    .await;
    assert_eq!(s, 201, "download info: {download}");
    let md5 = md5sum(&cluster.dir.join("reef.png"));
    let (s, created) = rest(&c, &base, reqwest::Method::POST, &format!("/rest/Medias/{project}"), &token, Some(serde_json::json!([{"type": media_type, "name": "reef.png", "md5": md5, "url": download[0]["url"], "section": "e2e"}]))).await;
    assert_eq!(s, 201, "media: {created}");
    let media = created["id"][0].as_i64().unwrap();
    let files = wait_for(
        "the image_jobs worker to import the image",
        Duration::from_secs(180),
        || {
            let (c, base, token) = (c.clone(), base.clone(), token.clone());
            async move {
                let (s, m) = rest(
                    &c,
                    &base,
                    reqwest::Method::GET,
                    &format!("/rest/Media/{media}"),
                    &token,
                    None,
                )
                .await;
                let files = &m["media_files"];
                if s == 200
                    && files
                        .get("thumbnail")
                        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()))
                {
                    Ok(files.clone())
                } else {
                    Err(format!("{s} {files}"))
                }
            }
        },
    )
    .await;
    let files = match files {
        Ok(f) => f,
        Err(e) => panic!("{e}{}", logs(&cluster)),
    };
    // The thumbnail downloads through /media or /objects, as the UI fetches it.
    let thumb = files["thumbnail"][0]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(!thumb.is_empty(), "thumbnail path: {files}");

    // Journey 3b: a video upload transcodes (tator-transcode, its queue, an ffmpeg worker).
    let upload = video_journey(&c, &base, &token, project, &cluster).await;
    // Journey 3c: a worker killed mid-transcode: the job is reported failed, not lost.
    killed_worker_journey(&c, &base, &token, project, &upload, &cluster).await;
    // Journey 3d: workers follow the queue (the operator's own scaler), nothing lost or doubled.
    scaling_journey(
        &c, &base, &token, project, &upload, &client, &ns, &name, &cluster,
    )
    .await;

    // Journey 4: a bucket in spec.buckets is registered in Tator by the operator (in the
    // cluster, through the API Service), with the administrator's token from a Secret.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (secret, data) in [
        ("tator-api-token", vec![("token", token.clone())]),
        (
            "reef-archive-credentials",
            vec![
                ("accessKeyId", "reef-archive".to_string()),
                ("secretAccessKey", "reef-archive-secret".to_string()),
            ],
        ),
    ] {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(secret.into()),
                annotations: Some(common::consent_map(&name)),
                ..Default::default()
            },
            string_data: Some(data.into_iter().map(|(k, v)| (k.to_string(), v)).collect()),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let bucket_spec = serde_json::json!({
        "apiVersion": "tator.io/v1alpha1",
        "kind": "TatorDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "apiAccess": {"tokenSecret": {"name": "tator-api-token", "key": "token"}},
            "buckets": [{
                "name": "reef-archive",
                "organization": org,
                "storeType": "MINIO",
                "endpoint": format!("http://{name}-seaweedfs:8333"),
                "credentialsSecret": "reef-archive-credentials",
            }],
        },
    });
    tds.patch(
        &name,
        &PatchParams::apply("e2e-buckets"),
        &Patch::Apply(&bucket_spec),
    )
    .await
    .unwrap();
    let registered = wait_for(
        "the operator to register spec.buckets in Tator",
        Duration::from_secs(120),
        || {
            let tds = tds.clone();
            let name = name.clone();
            async move {
                let td = tds.get(&name).await.map_err(|e| e.to_string())?;
                let status = td.status.clone().unwrap_or_default();
                match (condition(&td, "BucketsRegistered"), status.buckets.first()) {
                    (Some((s, _, _)), Some(b)) if s == "True" => Ok(b.clone()),
                    (c, _) => Err(format!("BucketsRegistered: {c:?}")),
                }
            }
        },
    )
    .await;
    let registered = match registered {
        Ok(b) => b,
        Err(e) => panic!("{e}{}", logs(&cluster)),
    };
    assert_eq!(
        (registered.name.as_str(), registered.organization),
        ("reef-archive", org)
    );
    let (s, listed) = rest(
        &c,
        &base,
        reqwest::Method::GET,
        &format!("/rest/Buckets/{org}"),
        &token,
        None,
    )
    .await;
    assert_eq!(s, 200, "buckets: {listed}");
    let in_tator: Vec<(i64, String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_i64().unwrap_or_default(),
                b["name"].as_str().unwrap_or_default().to_string(),
                b["endpoint_url"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        in_tator,
        [(
            registered.id,
            "reef-archive".to_string(),
            format!("http://{name}-seaweedfs:8333")
        )],
        "Tator's /rest/Buckets/{org} holds the registration recorded in status"
    );

    // Journey 7: a real browser loads the login page, logs in and opens the project.
    browser_journey(&cluster, &base, project).await;

    // Journey 5: each maintenance CronJob's Job, made from its own spec, exits 0 (after the
    // upload, so that the nightly backup holds the project).
    let dump = maintenance_jobs_run(&cluster, &client, &ns, &name).await;

    // Journey 6: the nightly dump restores into an empty database, and a Tator started on it
    // serves the project with the same token.
    restore_and_serve(&cluster, &client, &ns, &name, &dump, &token, project).await;
}

/// Journey 7: Debian's Chromium, headless, through NGINX at the installation's name: the login
/// page, the administrator's login, the projects page it leads to and the project's page load with
/// no failed request and no console error, cross-origin isolated (what the annotator's
/// SharedArrayBuffer needs). The name resolves to the load balancer; every other name fails, so
/// nothing leaves the machine.
async fn browser_journey(cluster: &TestCluster, base: &str, project: i64) {
    let origin = format!("http://{HOST}");
    let browser = Browser::start(BrowserOptions {
        dir: cluster.dir.clone(),
        hosts: vec![(HOST.to_string(), base.to_string())],
        // Chromium isolates only secure contexts; a real installation is served over HTTPS.
        secure_origins: vec![origin.clone()],
    })
    .await
    .unwrap();
    let page = browser.new_page().await.unwrap();
    let timeout = Duration::from_secs(90);
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        panic!("{what}: {e}{}", logs(cluster));
    };
    if let Err(e) = page
        .goto(&format!("{origin}/accounts/login/"), timeout)
        .await
    {
        fail("the login page", &e);
    }
    let isolated = page.eval("crossOriginIsolated").await.unwrap();
    assert_eq!(
        isolated,
        Value::Bool(true),
        "the login page is cross-origin isolated"
    );
    let login = format!(
        "document.querySelector('#id_username').value = {};
         document.querySelector('#id_password').value = {};
         document.querySelector('form.login__form').submit();",
        Value::String(ADMIN.into()),
        Value::String(ADMIN_PASSWORD.into())
    );
    if let Err(e) = page.eval_and_wait_navigation(&login, timeout).await {
        fail("logging in", &e);
    }
    let path = page.eval("location.pathname").await.unwrap();
    assert_eq!(path, Value::String("/projects".into()), "after the login");
    if let Err(e) = page
        .goto(&format!("{origin}/{project}/project-detail"), timeout)
        .await
    {
        fail("the project page", &e);
    }
    let isolated = page.eval("crossOriginIsolated").await.unwrap();
    assert_eq!(
        isolated,
        Value::Bool(true),
        "the project page is cross-origin isolated"
    );
    let report = page.report();
    assert!(
        report.failed_requests.is_empty() && report.console_errors.is_empty(),
        "the browser saw failed requests {:#?} and console errors {:#?}",
        report.failed_requests,
        report.console_errors
    );
    let elsewhere: Vec<&String> = report
        .requests
        .iter()
        .filter(|u| {
            !(u.starts_with(&format!("{origin}/"))
                || u.starts_with("data:")
                || u.starts_with("blob:"))
        })
        .collect();
    assert!(
        elsewhere.is_empty(),
        "requests to other hosts: {elsewhere:#?}"
    );
}

/// Waits for `Ready=True` of the TatorDeployment `name`, with the process logs on failure.
async fn wait_ready(
    cluster: &TestCluster,
    client: &Client,
    ns: &str,
    name: &str,
) -> TatorDeployment {
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), ns);
    let ready = wait_for(
        "Ready=True with Tator's processes running",
        Duration::from_secs(900),
        || {
            let tds = tds.clone();
            let name = name.to_string();
            async move {
                let td = tds.get(&name).await.map_err(|e| e.to_string())?;
                match condition(&td, "Ready") {
                    Some((s, _, _)) if s == "True" => Ok(td),
                    other => Err(format!("Ready: {other:?}")),
                }
            }
        },
    )
    .await;
    match ready {
        Ok(td) => td,
        Err(e) => panic!("{name}: {e}\nprocess logs:{}", logs(cluster)),
    }
}

/// Whether a Job succeeded (`Some(true)`), failed (`Some(false)`) or is still running (`None`).
fn finished(job: &Job) -> Option<bool> {
    let st = job.status.as_ref()?;
    if st.succeeded.unwrap_or(0) >= 1 {
        return Some(true);
    }
    st.conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Failed" && c.status == "True")
        .then_some(false)
}

/// Waits for a Job to succeed; panics with the process logs when it fails.
async fn wait_job(cluster: &TestCluster, jobs: &Api<Job>, name: &str) {
    let outcome = wait_for(&format!("Job {name}"), Duration::from_secs(300), || {
        let jobs = jobs.clone();
        let name = name.to_string();
        async move {
            let job = jobs.get(&name).await.map_err(|e| e.to_string())?;
            finished(&job).ok_or_else(|| format!("{:?}", job.status))
        }
    })
    .await;
    match outcome {
        Ok(true) => {}
        Ok(false) => panic!("Job {name} failed{}", job_logs(cluster, name)),
        Err(e) => panic!("{e}{}", job_logs(cluster, name)),
    }
}

/// The whole logs (up to 300 lines each) of the pods of Job `job`.
fn job_logs(cluster: &TestCluster, job: &str) -> String {
    let pods = cluster.dir.join("procnode/pods");
    let mut out = String::new();
    for f in walk(&pods) {
        let pod_dir = f
            .strip_prefix(&pods)
            .ok()
            .and_then(|p| p.components().next())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .unwrap_or_default();
        if !pod_dir.contains(&format!("_{job}-")) || f.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(300)..].join("\n");
        out.push_str(&format!("\n--- {}\n{tail}\n", f.display()));
    }
    out
}

/// Journey 6. The dump goes into an empty database of a PostgreSQL server standing for a managed
/// one (the PostGIS image, started here as a plain Deployment), restored by a Job made from the
/// backup CronJob's own spec (its image's pg_restore, its volumes). A second TatorDeployment uses
/// that server as `postgres.external`: once Ready, it serves the project and the media of journey
/// 3 to the administrator's token, which the restored database holds.
async fn restore_and_serve(
    cluster: &TestCluster,
    client: &Client,
    ns: &str,
    name: &str,
    dump: &str,
    token: &str,
    project: i64,
) {
    const DB: &str = "managed-db";
    const DB_PASSWORD: &str = "e2e-Managed-Db-1";
    const RESTORED: &str = "restored";
    const RESTORED_HOST: &str = "restored.example.com";
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": DB, "annotations": common::consent("*")},
        "stringData": {"username": "tator", "password": DB_PASSWORD},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let restricted = serde_json::json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
    let db: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": DB},
        "spec": {
            "selector": {"matchLabels": {"app": DB}},
            "template": {
                "metadata": {"labels": {"app": DB}},
                "spec": {
                    "securityContext": {
                        "runAsNonRoot": true, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "postgres",
                        "image": "postgis/postgis:15-3.4",
                        "env": [
                            {"name": "POSTGRES_USER", "valueFrom": {"secretKeyRef": {"name": DB, "key": "username"}}},
                            {"name": "POSTGRES_PASSWORD", "valueFrom": {"secretKeyRef": {"name": DB, "key": "password"}}},
                            {"name": "POSTGRES_DB", "value": "tator_online"},
                            {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                        ],
                        "ports": [{"name": "postgres", "containerPort": 5432}],
                        "readinessProbe": {
                            "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", "tator", "-d", "tator_online"]},
                            "periodSeconds": 2,
                        },
                        "securityContext": restricted,
                        // The socket folder (the image's /var/run/postgresql) on a volume, as
                        // the operator's own PostgreSQL pod has it.
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                            {"name": "run", "mountPath": "/var/run/postgresql"},
                        ],
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}, {"name": "run", "emptyDir": {}}],
                },
            },
        },
    }))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &db)
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": DB},
        "spec": {"selector": {"app": DB}, "ports": [{"name": "postgres", "port": 5432, "targetPort": "postgres"}]},
    }))
    .unwrap();
    Api::<Service>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let up = wait_for(
        "the managed database stand-in",
        Duration::from_secs(120),
        || {
            let deployments = deployments.clone();
            async move {
                let d = deployments.get(DB).await.map_err(|e| e.to_string())?;
                match d.status.and_then(|s| s.ready_replicas) {
                    Some(n) if n >= 1 => Ok(()),
                    other => Err(format!("ready replicas: {other:?}")),
                }
            }
        },
    )
    .await;
    if let Err(e) = up {
        panic!("{e}{}", logs(cluster));
    }

    // The restore: the backup CronJob's Job with pg_restore in place of pg_dump.
    let crons: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let backup = crons
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance={name},tator.io/maintenance-job=backup-database"
        )))
        .await
        .unwrap()
        .items
        .into_iter()
        .next()
        .expect("the backup CronJob");
    let mut spec = backup.spec.unwrap().job_template.spec.unwrap();
    let pod = spec.template.spec.as_mut().unwrap();
    let container = &mut pod.containers[0];
    container.command = Some(
        [
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname=tator_online",
            dump,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    container.args = None;
    container.env = Some(
        serde_json::from_value(serde_json::json!([
            {"name": "PGHOST", "value": format!("{DB}.{ns}.svc")},
            {"name": "PGPORT", "value": "5432"},
            {"name": "PGSSLMODE", "value": "disable"},
            {"name": "PGUSER", "valueFrom": {"secretKeyRef": {"name": DB, "key": "username"}}},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": DB, "key": "password"}}},
        ]))
        .unwrap(),
    );
    container.env_from = None;
    // One attempt: a retry would restore over what the failed one left.
    pod.restart_policy = Some("Never".into());
    spec.backoff_limit = Some(0);
    let job = Job {
        metadata: ObjectMeta {
            name: Some("restore".into()),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    jobs.create(&PostParams::default(), &job).await.unwrap();
    wait_job(cluster, &jobs, "restore").await;

    // A second installation on the restored database (managed PostgreSQL).
    let td = serde_json::json!({
        "apiVersion": "tator.io/v1alpha1",
        "kind": "TatorDeployment",
        "metadata": {"name": RESTORED, "namespace": ns},
        "spec": {
            "version": "1.5.0",
            "domain": RESTORED_HOST,
            "postgres": {"external": {
                "host": format!("{DB}.{ns}.svc"),
                "port": 5432,
                "sslMode": "disable",
                "credentialsSecret": {"name": DB},
            }},
        },
    });
    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), ns);
    tds.patch(
        RESTORED,
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&td),
    )
    .await
    .unwrap();
    let td = wait_ready(cluster, client, ns, RESTORED).await;
    let migrations = condition(&td, "Migrations");
    assert!(
        matches!(&migrations, Some((s, r, _)) if s == "True" && r == "UpToDate"),
        "Migrations on the restored database: {migrations:?}"
    );
    let base = load_balancer(client, ns, RESTORED).await;
    let c = http();
    let (s, p) = rest_at(
        &c,
        &base,
        RESTORED_HOST,
        reqwest::Method::GET,
        &format!("/rest/Project/{project}"),
        token,
        None,
    )
    .await;
    assert_eq!(
        (s, p["name"].as_str()),
        (200, Some("Reef survey")),
        "the restored installation serves the project: {p}"
    );
    let (s, media) = rest_at(
        &c,
        &base,
        RESTORED_HOST,
        reqwest::Method::GET,
        &format!("/rest/Medias/{project}"),
        token,
        None,
    )
    .await;
    let names: BTreeSet<&str> = media
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["name"].as_str()).collect())
        .unwrap_or_default();
    // Every Media of the earlier journeys: the image, the videos and the 20 scaling transcodes.
    let mut expected: BTreeSet<String> = ["reef.png", "reef.mp4", "long.mp4"]
        .map(String::from)
        .into();
    expected.extend((0..20).map(|i| format!("reef-{i}.mp4")));
    let expected: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    assert_eq!((s, names), (200, expected), "media: {media}");
}

/// Journey 5: a Job from each maintenance CronJob exits 0. Returns the backup's dump (its path
/// on the shared volume, from the backup folder).
async fn maintenance_jobs_run(
    cluster: &TestCluster,
    client: &Client,
    ns: &str,
    name: &str,
) -> String {
    let crons: Api<CronJob> = Api::namespaced(client.clone(), ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let list = crons
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={name}")))
        .await
        .unwrap();
    assert!(
        list.items.len() >= 10,
        "maintenance CronJobs: {}",
        list.items.len()
    );
    let mut started = Vec::new();
    for cron in &list.items {
        let template = cron.spec.as_ref().unwrap().job_template.clone();
        let job_name = format!("{}-once", cron.metadata.name.as_deref().unwrap());
        let job = Job {
            metadata: ObjectMeta {
                name: Some(job_name.clone()),
                labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
                annotations: Some(
                    [(
                        "cronjob.kubernetes.io/instantiate".to_string(),
                        "manual".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            spec: template.spec,
            status: None,
        };
        jobs.create(&PostParams::default(), &job).await.unwrap();
        started.push(job_name);
    }
    let outcome = wait_for(
        "every maintenance Job to finish",
        Duration::from_secs(600),
        || {
            let jobs = jobs.clone();
            let started = started.clone();
            async move {
                let mut pending = Vec::new();
                let mut failed = Vec::new();
                for n in &started {
                    let j = jobs.get(n).await.map_err(|e| e.to_string())?;
                    match finished(&j) {
                        Some(true) => {}
                        Some(false) => failed.push(n.clone()),
                        None => pending.push(n.clone()),
                    }
                }
                if !pending.is_empty() {
                    return Err(format!("still running: {pending:?}"));
                }
                Ok(failed)
            }
        },
    )
    .await;
    match outcome {
        Ok(failed) => assert!(
            failed.is_empty(),
            "maintenance Jobs failed: {failed:?}{}",
            logs(cluster)
        ),
        Err(e) => panic!("{e}{}", logs(cluster)),
    }

    let backups = cluster
        .dir
        .join(format!("procnode/claims/{ns}/{name}-shared/backup"));
    let dump = std::fs::read_dir(&backups)
        .unwrap_or_else(|e| panic!("{}: {e}", backups.display()))
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sql"))
        .unwrap_or_else(|| panic!("no dump in {}", backups.display()));
    format!("/backup/{}", dump.file_name().unwrap().to_string_lossy())
}
