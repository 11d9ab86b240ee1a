//! cert-manager Certificate for the NGINX entry point, when the spec names an issuer.

use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    core::ObjectMeta,
};
use serde_json::json;

use super::{common::child_meta, features::tls_secret_name, names::TLS};
use crate::validate::ValidatedTator;

/// cert-manager's Certificate resource (`cert-manager.io/v1`).
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// A Certificate for the domain and its aliases, when `tls.issuerRef` is set.
pub fn certificate(t: &ValidatedTator) -> Option<DynamicObject> {
    let tls = t.spec.tls.as_ref()?;
    let issuer = tls.issuer_ref.as_ref()?;
    let mut dns_names = vec![t.spec.domain.clone()];
    dns_names.extend(t.spec.aliases.iter().cloned());
    let meta: ObjectMeta = child_meta(t, t.child_name(TLS), TLS, None);
    let mut obj = DynamicObject::new(&t.child_name(TLS), &certificate_resource()).data(json!({
        "spec": {
            "secretName": tls_secret_name(t),
            "dnsNames": dns_names,
            "issuerRef": {"name": issuer.name, "kind": issuer.kind.as_str(), "group": issuer.group},
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "secretTemplate": {"labels": meta.labels.clone().unwrap_or_default()},
        }
    }));
    obj.metadata = meta;
    Some(obj)
}

/// Ready condition of a live Certificate: `Ok(())`, or the reason it is not ready.
pub fn certificate_ready(cert: &DynamicObject) -> Result<(), String> {
    let conditions = cert.data["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match conditions.iter().find(|c| c["type"] == "Ready") {
        Some(c) if c["status"] == "True" => Ok(()),
        Some(c) => Err(c["message"].as_str().unwrap_or("not ready").to_string()),
        None => Err("cert-manager has not issued it yet".into()),
    }
}
