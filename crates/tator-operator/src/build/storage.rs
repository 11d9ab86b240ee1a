//! The shared ReadWriteMany volume and the generated Django secret key.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::{
        PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, VolumeResourceRequirements,
    },
    apimachinery::pkg::api::resource::Quantity,
};

use super::common::{DJANGO_SECRET_KEY, retained_meta};
use crate::validate::ValidatedTator;

pub const STORAGE: &str = "storage";

/// The shared claim the operator creates, unless the spec names an existing one. It carries no
/// owner reference: deleting the TatorDeployment keeps the files.
pub fn shared_claim(t: &ValidatedTator) -> Option<PersistentVolumeClaim> {
    let shared = &t.spec.storage.shared;
    if shared.existing_claim.is_some() {
        return None;
    }
    Some(PersistentVolumeClaim {
        metadata: retained_meta(t, t.child_name("shared"), STORAGE),
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

/// The Secret holding Django's secret key, created once with `key` and never rewritten. It
/// carries no owner reference: sessions and signed tokens survive re-creating the resource.
pub fn django_secret(t: &ValidatedTator, key: &str) -> Secret {
    Secret {
        metadata: retained_meta(t, t.child_name("django"), "api"),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            DJANGO_SECRET_KEY.to_string(),
            ByteString(key.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}
