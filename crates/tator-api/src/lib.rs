//! The `TatorDeployment` custom resource (`tator.io/v1alpha1`): types only.
//!
//! This crate holds the CRD types, their defaults and the label keys shared by the operator, the
//! CLI and the tests. It has no client and no runtime.
//!
//! Evolving the API (maintainer rules): add fields as `Option` or with a `serde(default)`, never
//! rename or remove a field within a version, prefer `BTreeMap` to `HashMap`, and put developer
//! notes in `//` comments: `///` text is the public schema description `kubectl explain` shows.

pub mod v1alpha1;

pub use v1alpha1::*;

/// API group of every Tator resource.
pub const GROUP: &str = "tator.io";

/// Recommended labels set on every child object.
pub mod labels {
    pub const NAME: &str = "app.kubernetes.io/name";
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const VERSION: &str = "app.kubernetes.io/version";
    /// Value of `app.kubernetes.io/managed-by` on every child.
    pub const MANAGER: &str = "tator-operator";
    /// Value of `app.kubernetes.io/name` on every child.
    pub const APP: &str = "tator";
}
