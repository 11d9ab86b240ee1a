//! Readiness checks of managed dependencies against real servers: PostgreSQL 15 with PostGIS and
//! Redis from Debian's packages, started on loopback as an unprivileged user by the test bed.
//! Elasticsearch cannot run on this machine: its check is tested against a small HTTP stand-in
//! that answers `/_cluster/health` the way Elasticsearch documents it.
//!
//! The last test wires all three into a TatorDeployment on the real control plane and checks
//! that a canary password never shows up in the operator's logs, Events or status.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use serde_json::json;
use tator_api::{SslMode, TatorDeployment};
use tator_operator::checks::{
    ElasticsearchTarget, Password, PostgresTarget, RedisTarget, check_elasticsearch,
    check_postgres, check_redis,
};
use tator_testbed::{
    services::{Postgres, Redis},
    support::{base64, captured_logs, namespace, unused_port, wait_for},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CANARY: &str = "canary-Pw-7f3a9c1e";

fn pg_target(pg: &Postgres, password: &str, ssl: SslMode, extensions: &[&str]) -> PostgresTarget {
    PostgresTarget {
        host: "127.0.0.1".into(),
        port: pg.port,
        user: pg.user.clone(),
        password: Password::new(password.into()),
        database: pg.database.clone(),
        ssl_mode: ssl,
        ca_pem: None,
        extensions: extensions.iter().map(ToString::to_string).collect(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_checks_against_a_real_server() {
    let pg = tokio::task::spawn_blocking(|| Postgres::start("tator", CANARY, "tator_online"))
        .await
        .unwrap()
        .expect("PostgreSQL 15 (postgresql-15, postgresql-15-postgis-3) must be installed");
    let available = ["ltree", "postgis", "pg_trgm"];

    let ok = check_postgres(&pg_target(&pg, CANARY, SslMode::Prefer, &available)).await;
    assert!(ok.is_ok(), "{ok:?}");

    let err = check_postgres(&pg_target(&pg, "wrong", SslMode::Disable, &available))
        .await
        .unwrap_err();
    assert_eq!(err.reason, "AuthenticationFailed", "{err:?}");

    let missing = check_postgres(&pg_target(
        &pg,
        CANARY,
        SslMode::Disable,
        &["ltree", "postgis", "vector", "pg_trgm"],
    ))
    .await
    .unwrap_err();
    assert_eq!(missing.reason, "MissingExtension", "{missing:?}");
    assert!(
        missing.message.contains("vector") && !missing.message.contains("ltree"),
        "{missing:?}"
    );

    let tls = check_postgres(&pg_target(&pg, CANARY, SslMode::Require, &available))
        .await
        .unwrap_err();
    assert_eq!(tls.reason, "TLSError", "{tls:?}");

    let mut gone = pg_target(&pg, CANARY, SslMode::Disable, &available);
    gone.port = unused_port();
    let err = check_postgres(&gone).await.unwrap_err();
    assert_eq!(err.reason, "Unreachable", "{err:?}");

    for e in [err, missing, tls] {
        assert!(
            !e.message.contains(CANARY),
            "a message leaked the password: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_checks_against_a_real_server() {
    let redis = tokio::task::spawn_blocking(|| Redis::start(Some(CANARY)))
        .await
        .unwrap()
        .expect("redis-server must be installed");
    let target = |password: Option<&str>, port: u16| RedisTarget {
        host: "127.0.0.1".into(),
        port,
        tls: false,
        password: password.map(|p| Password::new(p.into())),
    };
    assert!(check_redis(&target(Some(CANARY), redis.port)).await.is_ok());
    let wrong = check_redis(&target(Some("wrong"), redis.port))
        .await
        .unwrap_err();
    assert_eq!(wrong.reason, "AuthenticationFailed", "{wrong:?}");
    assert!(
        !wrong.message.contains("wrong"),
        "the password was echoed: {wrong:?}"
    );
    let none = check_redis(&target(None, redis.port)).await.unwrap_err();
    assert_eq!(none.reason, "AuthenticationFailed", "{none:?}");
    let gone = check_redis(&target(Some(CANARY), unused_port()))
        .await
        .unwrap_err();
    assert_eq!(gone.reason, "Unreachable", "{gone:?}");
    let tls = RedisTarget {
        tls: true,
        ..target(Some(CANARY), redis.port)
    };
    assert_eq!(check_redis(&tls).await.unwrap_err().reason, "TLSError");
}

/// An HTTP stand-in for Elasticsearch's `GET /_cluster/health` (Elasticsearch cannot run here):
/// answers `{"status": <health>}`, or 401 without the expected basic credentials.
async fn es_stand_in(health: &'static str, basic: Option<&'static str>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let authorized = basic.is_none_or(|b| {
                    req.contains(&format!("authorization: Basic {b}"))
                        || req.contains(&format!("Authorization: Basic {b}"))
                });
                let (status, body) = if !req.starts_with("GET /_cluster/health") {
                    ("404 Not Found", "{}".to_string())
                } else if !authorized {
                    (
                        "401 Unauthorized",
                        r#"{"error":"unauthorized"}"#.to_string(),
                    )
                } else {
                    (
                        "200 OK",
                        format!(
                            r#"{{"cluster_name":"stand-in","status":"{health}","number_of_nodes":1}}"#
                        ),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elasticsearch_checks_against_a_stand_in() {
    let target = |port: u16, creds: Option<(&str, &str)>| ElasticsearchTarget {
        url: format!("http://127.0.0.1:{port}"),
        credentials: creds.map(|(u, p)| (u.to_string(), Password::new(p.to_string()))),
        ca_pem: None,
    };
    let green = es_stand_in("green", None).await;
    assert!(check_elasticsearch(&target(green, None)).await.is_ok());
    let yellow = es_stand_in("yellow", None).await;
    assert!(check_elasticsearch(&target(yellow, None)).await.is_ok());
    let red = es_stand_in("red", None).await;
    assert_eq!(
        check_elasticsearch(&target(red, None))
            .await
            .unwrap_err()
            .reason,
        "Unhealthy"
    );
    // "elastic:secret" in base64.
    let guarded = es_stand_in("green", Some("ZWxhc3RpYzpzZWNyZXQ=")).await;
    assert!(
        check_elasticsearch(&target(guarded, Some(("elastic", "secret"))))
            .await
            .is_ok()
    );
    let denied = check_elasticsearch(&target(guarded, Some(("elastic", "nope"))))
        .await
        .unwrap_err();
    assert_eq!(denied.reason, "AuthenticationFailed");
    let gone = check_elasticsearch(&target(unused_port(), None))
        .await
        .unwrap_err();
    assert_eq!(gone.reason, "Unreachable");
}

/// A hostile endpoint on loopback (fault injection, not a stand-in for a real service).
#[derive(Clone, Copy)]
enum Hostile {
    /// 200 with a body that never ends (about 1 GiB offered).
    EndlessBody,
    /// Accepts and never answers.
    Silent,
    /// 302 to `Location` (another listener).
    RedirectTo(u16),
}

async fn hostile(kind: Hostile) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = sock.read(&mut buf).await;
                match kind {
                    Hostile::Silent => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Hostile::RedirectTo(to) => {
                        let resp = format!(
                            "HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{to}/_cluster/health\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                    }
                    Hostile::EndlessBody => {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1073741824\r\n\r\n{\"status\":\"green\",\"x\":\"";
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'a'; 64 * 1024];
                        for _ in 0..(1 << 14) {
                            if sock.write_all(&chunk).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_endpoints_cost_bounded_memory_and_time_and_get_no_credentials() {
    let target = |port: u16| ElasticsearchTarget {
        url: format!("http://127.0.0.1:{port}"),
        credentials: Some(("elastic".into(), Password::new(CANARY.into()))),
        ca_pem: None,
    };
    // A body that never ends: read up to the bound, then refused.
    let endless = hostile(Hostile::EndlessBody).await;
    let before = tator_testbed::support::rss_mib();
    let started = std::time::Instant::now();
    let err = check_elasticsearch(&target(endless)).await.unwrap_err();
    let took = started.elapsed();
    let grew = tator_testbed::support::rss_mib() - before;
    eprintln!(
        "endless body: {} after {:.1} s, resident memory +{grew:.1} MiB",
        err.reason,
        took.as_secs_f64()
    );
    assert!(grew < 64.0, "memory grew by {grew:.1} MiB");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(!err.message.contains(CANARY), "{err:?}");
    // Silence: given up on within the check's timeout.
    let silent = hostile(Hostile::Silent).await;
    let started = std::time::Instant::now();
    let err = check_elasticsearch(&target(silent)).await.unwrap_err();
    let took = started.elapsed();
    eprintln!("silent: {} after {:.1} s", err.reason, took.as_secs_f64());
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // A redirect: not followed, so the credentials never reach the other listener.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere = listener.local_addr().unwrap().port();
    let redirect = hostile(Hostile::RedirectTo(elsewhere)).await;
    let err = check_elasticsearch(&target(redirect)).await.unwrap_err();
    eprintln!("redirect: {}: {}", err.reason, err.message);
    let reached = tokio::time::timeout(Duration::from_millis(500), listener.accept()).await;
    assert!(reached.is_err(), "the redirect was followed");
    assert!(!err.message.contains(CANARY), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_services_gate_migrations_and_never_leak_the_password() {
    let logs = captured_logs();
    let pg = tokio::task::spawn_blocking(|| Postgres::start("tator", CANARY, "tator_online"))
        .await
        .unwrap()
        .unwrap();
    let redis = tokio::task::spawn_blocking(|| Redis::start(Some(CANARY)))
        .await
        .unwrap()
        .unwrap();
    let es = es_stand_in("green", None).await;

    let client = common::cluster().await;
    let ns = namespace(&client, "op-managed", true).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, data) in [
        ("db", json!({"username": "tator", "password": CANARY})),
        ("cache", json!({"password": CANARY})),
    ] {
        let s: Secret =
            serde_json::from_value(json!({"metadata": {"name": name, "annotations": common::consent("*")}, "stringData": data}))
                .unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let (_ctx, task) = common::start_controller(&client, &ns);

    let tds: Api<TatorDeployment> = Api::namespaced(client.clone(), &ns);
    let td: TatorDeployment = serde_json::from_value(json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "postgres": {"external": {"host": "127.0.0.1", "port": pg.port, "sslMode": "disable",
                                           "credentialsSecret": {"name": "db"}}},
                 "redis": {"external": {"host": "127.0.0.1", "port": redis.port, "allowPlainTextCredentials": true, "passwordSecret": {"name": "cache", "key": "password"}}},
                 "elasticsearch": {"external": {"url": format!("http://127.0.0.1:{es}")}}}
    }))
    .unwrap();
    tds.create(&PostParams::default(), &td).await.unwrap();

    let cond = |td: &TatorDeployment, t: &str| {
        td.status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == t).cloned())
    };
    // Debian's PostgreSQL has no pgvector: the database check must say so, and hold migrations.
    let td = wait_for(
        "DatabaseReady=MissingExtension",
        Duration::from_secs(60),
        || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            match cond(&td, "DatabaseReady") {
                Some(c) if c.reason == "MissingExtension" => Ok(td),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let db = cond(&td, "DatabaseReady").unwrap();
    assert_eq!(db.status, "False");
    assert!(db.message.contains("vector"), "{}", db.message);
    let cache = cond(&td, "CacheReady").unwrap();
    assert_eq!(
        (cache.status.as_str(), cache.reason.as_str()),
        ("True", "Reachable"),
        "{}",
        cache.message
    );
    // Tator 1.5.0 does not use Elasticsearch: without the logging stack it is not checked.
    assert!(cond(&td, "SearchReady").is_none());
    let migrations = cond(&td, "Migrations").unwrap();
    assert_eq!(migrations.reason, "WaitingForDependencies");
    assert_eq!(cond(&td, "Ready").unwrap().status, "False");
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &ns);
    assert!(
        jobs.list(&ListParams::default().labels("app.kubernetes.io/component=migrations"))
            .await
            .unwrap()
            .items
            .is_empty(),
        "migrations ran before the database was ready"
    );
    // Nothing of a managed service is created in the cluster.
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let names: Vec<String> = deploys
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n.contains("redis") || n.contains("postgres")),
        "{names:?}"
    );
    // (The only StatefulSet is the in-cluster object store, which this spec keeps.)
    let sts: Api<k8s_openapi::api::apps::v1::StatefulSet> = Api::namespaced(client.clone(), &ns);
    let sts_names: Vec<String> = sts
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(sts_names, ["tator-seaweedfs"]);

    // A wrong password is reported as such (the check runs again on its backoff).
    let s: Secret = serde_json::from_value(
        json!({"metadata": {"name": "cache", "annotations": common::consent("*")}, "stringData": {"password": "not-the-password"}}),
    )
    .unwrap();
    secrets
        .replace("cache", &Default::default(), &s)
        .await
        .unwrap();
    wait_for(
        "CacheReady=AuthenticationFailed",
        Duration::from_secs(60),
        || async {
            let td = tds.get("tator").await.map_err(|e| e.to_string())?;
            match cond(&td, "CacheReady") {
                Some(c) if c.reason == "AuthenticationFailed" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();

    // The canary appears nowhere: status, Events, logs (raw or base64).
    let b64 = base64(CANARY);
    let status = serde_json::to_string(&tds.get("tator").await.unwrap().status).unwrap();
    assert!(
        !status.contains(CANARY) && !status.contains("not-the-password"),
        "status leaked a password"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let evs =
        serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap();
    assert!(!evs.contains(CANARY), "an Event leaked the password");
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(text.contains("reconcile"), "no operator log was captured");
    assert!(
        !text.contains(CANARY) && !text.contains(&b64),
        "the operator log leaked the password"
    );
    task.abort();
}
