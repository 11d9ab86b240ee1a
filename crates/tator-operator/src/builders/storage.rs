//! The shared ReadWriteMany volume and the generated Django secret key.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{
        PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::common::data_meta;
use crate::validate::ValidatedTator;

pub const STORAGE: &str = "storage";

/// The shared claim the operator creates, unless the spec names an existing one. Owned (deleted
/// with the TatorDeployment) only with `deletionPolicy: Delete`.
pub fn shared_claim(t: &ValidatedTator) -> Option<PersistentVolumeClaim> {
    let shared = &t.spec.storage.shared;
    if shared.existing_claim.is_some() {
        return None;
    }
    Some(PersistentVolumeClaim {
        metadata: data_meta(t, t.child_name("shared"), STORAGE),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteMany".into()]),
            storage_class_name: shared.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(shared.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })
}

/// A generated Secret with its values. Created once and never rewritten.
pub fn generated_secret(meta: kube::api::ObjectMeta, values: BTreeMap<String, String>) -> Secret {
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        data: Some(
            values
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}
