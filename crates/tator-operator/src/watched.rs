//! A TatorDeployment as the controller watches it: decoded, or, when one object cannot be
//! decoded, its metadata and the reason.
//!
//! The API server accepts free-form fields (`podOverrides`) nested deeper than the JSON decoder
//! allows. Decoded as a plain `TatorDeployment`, one such object fails the decoding of the whole
//! list and watch, so no installation is reconciled at all. Each item is first taken as raw JSON
//! (skipping over nested values does not recurse), then decoded on its own: a failure stays with
//! that object, whose status says why.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::Resource;
use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::value::RawValue;
use tator_api::{TatorDeployment, TatorDeploymentStatus};

/// One watched TatorDeployment.
#[derive(Clone, Debug)]
pub enum Watched {
    /// The object, decoded.
    Decoded(Box<TatorDeployment>),
    /// An object that could not be decoded.
    Undecodable(Box<Unreadable>),
}

/// What could be read of an object that could not be decoded, and why.
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub metadata: ObjectMeta,
    pub status: Option<TatorDeploymentStatus>,
    /// The decoder's error.
    pub error: String,
}

impl<'de> Deserialize<'de> for Watched {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        match serde_json::from_str::<TatorDeployment>(raw.get()) {
            Ok(td) => Ok(Self::Decoded(Box::new(td))),
            Err(e) => {
                // Unknown fields (the spec) are skipped without recursion. The managed fields
                // mirror the spec's nesting, so metadata is read without them.
                #[derive(Deserialize)]
                struct Outline {
                    metadata: BTreeMap<String, Box<RawValue>>,
                    #[serde(default)]
                    status: Option<TatorDeploymentStatus>,
                }
                let mut outline: Outline =
                    serde_json::from_str(raw.get()).map_err(D::Error::custom)?;
                outline.metadata.remove("managedFields");
                let metadata = serde_json::to_string(&outline.metadata)
                    .and_then(|m| serde_json::from_str::<ObjectMeta>(&m))
                    .map_err(D::Error::custom)?;
                Ok(Self::Undecodable(Box::new(Unreadable {
                    metadata,
                    status: outline.status,
                    error: e.to_string(),
                })))
            }
        }
    }
}

impl From<TatorDeployment> for Watched {
    fn from(td: TatorDeployment) -> Self {
        Self::Decoded(Box::new(td))
    }
}

impl Resource for Watched {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        TatorDeployment::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        TatorDeployment::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        TatorDeployment::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        TatorDeployment::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        match self {
            Self::Decoded(td) => &td.metadata,
            Self::Undecodable(u) => &u.metadata,
        }
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::Decoded(td) => &mut td.metadata,
            Self::Undecodable(u) => &mut u.metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{ObjectList, WatchEvent};

    /// A TatorDeployment whose api.podOverrides nests `depth` objects.
    fn nested(name: &str, depth: usize) -> String {
        let overrides = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        let fields = format!("{}{{}}{}", "{\"f:a\":".repeat(depth), "}".repeat(depth));
        format!(
            r#"{{"apiVersion":"tator.io/v1alpha1","kind":"TatorDeployment","metadata":{{"name":"{name}","namespace":"ns","generation":3,"managedFields":[{{"manager":"kubectl","operation":"Update","fieldsType":"FieldsV1","fieldsV1":{{"f:spec":{{"f:api":{{"f:podOverrides":{fields}}}}}}}}}]}},"spec":{{"version":"1.5.0","domain":"a.example.com","api":{{"podOverrides":{overrides}}}}},"status":{{"phase":"Ready"}}}}"#
        )
    }

    #[test]
    fn one_undecodable_object_does_not_fail_the_list_or_the_watch() {
        // A plain TatorDeployment cannot be decoded at this depth: the whole list failed.
        assert!(serde_json::from_str::<TatorDeployment>(&nested("deep", 150)).is_err());
        let list = format!(
            r#"{{"apiVersion":"tator.io/v1alpha1","kind":"TatorDeploymentList","metadata":{{}},"items":[{},{}]}}"#,
            nested("fine", 3),
            nested("deep", 150)
        );
        let list: ObjectList<Watched> = serde_json::from_str(&list).unwrap();
        assert!(
            matches!(&list.items[0], Watched::Decoded(td) if td.metadata.name.as_deref() == Some("fine"))
        );
        match &list.items[1] {
            Watched::Undecodable(u) => {
                let Unreadable {
                    metadata,
                    status,
                    error,
                } = u.as_ref();
                assert_eq!(metadata.name.as_deref(), Some("deep"));
                assert_eq!(metadata.generation, Some(3));
                assert_eq!(
                    status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Ready")
                );
                assert!(error.contains("recursion limit"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        let event = format!(r#"{{"type":"MODIFIED","object":{}}}"#, nested("deep", 150));
        let event: WatchEvent<Watched> = serde_json::from_str(&event).unwrap();
        assert!(matches!(
            event,
            WatchEvent::Modified(Watched::Undecodable(_))
        ));
    }
}
