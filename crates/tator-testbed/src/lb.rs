//! A load-balancer status controller for the test bed, in the spirit of cloud-provider-kind.
//!
//! It gives each `type: LoadBalancer` Service without a `loadBalancerClass` an ingress address
//! from the loopback block `127.1.0.0/16` (or the requested `loadBalancerIP` when that is a
//! loopback address), so status URLs can be shown and tested. Nothing listens on these
//! addresses: they are names, not endpoints. Services with a `loadBalancerClass` belong to another
//! implementation and are left alone, as a cloud provider would.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use tracing::{debug, warn};

/// Picks addresses, stable per Service for the life of the controller.
#[derive(Default)]
pub struct Allocator {
    next: u32,
    by_service: BTreeMap<String, Ipv4Addr>,
}

impl Allocator {
    /// The address for `key` (namespace/name): the requested one if it is loopback, otherwise the
    /// next free one from 127.1.0.0/16.
    pub fn address(&mut self, key: &str, requested: Option<&str>) -> Ipv4Addr {
        if let Some(ip) = requested
            .and_then(|r| r.parse::<Ipv4Addr>().ok())
            .filter(Ipv4Addr::is_loopback)
        {
            self.by_service.insert(key.to_string(), ip);
            return ip;
        }
        if let Some(ip) = self.by_service.get(key) {
            return *ip;
        }
        self.next += 1;
        let n = self.next % 65534 + 1;
        let ip = Ipv4Addr::new(127, 1, (n >> 8) as u8, (n & 0xff) as u8);
        self.by_service.insert(key.to_string(), ip);
        ip
    }
}

fn wants_address(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer") && spec.load_balancer_class.is_none()
}

fn current_ingress(svc: &Service) -> Option<String> {
    svc.status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?
        .first()?
        .ip
        .clone()
}

/// Runs until the task is aborted.
pub async fn run(client: Client) {
    let api: Api<Service> = Api::all(client.clone());
    // Each cluster starts at its own place in the block: with a process node, something listens
    // on these addresses, and two clusters on one machine must not hand out the same one.
    let alloc = Arc::new(Mutex::new(Allocator {
        next: (std::process::id() % 4000) * 16,
        ..Default::default()
    }));
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(stream);
    while let Some(item) = stream.next().await {
        let svc = match item {
            Ok(svc) => svc,
            Err(e) => {
                debug!(error = %e, "service watch error");
                continue;
            }
        };
        if !wants_address(&svc) {
            continue;
        }
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let requested = svc.spec.as_ref().and_then(|s| s.load_balancer_ip.clone());
        let ip = match alloc.lock() {
            Ok(mut a) => a.address(&format!("{ns}/{name}"), requested.as_deref()),
            Err(_) => continue,
        };
        if current_ingress(&svc).as_deref() == Some(ip.to_string().as_str()) {
            continue;
        }
        let patch = serde_json::json!({
            "status": {"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}}
        });
        let ns_api: Api<Service> = Api::namespaced(client.clone(), &ns);
        if let Err(e) = ns_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            warn!(service = %format!("{ns}/{name}"), error = %e, "could not set load-balancer status");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_stable_loopback_addresses() {
        let mut a = Allocator::default();
        let first = a.address("ns/a", None);
        assert!(first.is_loopback());
        assert_eq!(a.address("ns/a", None), first);
        assert_ne!(a.address("ns/b", None), first);
        assert_eq!(
            a.address("ns/c", Some("127.9.9.9")),
            Ipv4Addr::new(127, 9, 9, 9)
        );
        // A non-loopback request is never honoured.
        assert!(a.address("ns/d", Some("10.0.0.5")).is_loopback());
    }
}
