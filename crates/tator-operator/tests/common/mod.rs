//! Set-up shared by the operator's integration tests; each test file includes it with
//! `mod common;`.

#![allow(dead_code, clippy::expect_used)]

use std::{sync::Arc, time::Duration};

use kube::Client;
use tator_operator::controller::{self, Context, Settings};
use tator_testbed::support::{install_crds, shared_client, workspace_root};

/// The shared test cluster, with this repository's CRDs (`crds/`) installed.
pub async fn cluster() -> Client {
    let client = shared_client()
        .await
        .expect("the shared test cluster must start");
    install_crds(&client, &workspace_root().join("crds"))
        .await
        .expect("the CRDs in crds/ must install");
    client
}

/// An in-process controller watching one namespace (concurrency 2, resync every 10 minutes),
/// with its context.
pub fn start_controller(client: &Client, ns: &str) -> (Arc<Context>, tokio::task::JoinHandle<()>) {
    let settings = Settings {
        namespace: Some(ns.to_string()),
        concurrency: 2,
        resync: Duration::from_secs(600),
    };
    let ctx = Arc::new(Context::new(client.clone(), settings));
    let task = tokio::spawn(controller::run(ctx.clone()));
    (ctx, task)
}
