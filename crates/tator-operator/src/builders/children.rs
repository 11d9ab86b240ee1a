//! [`Children`]: every object the builders produce for one TatorDeployment, in apply order, and
//! the applied-hash annotation that lets apply tell an unchanged child from one to send.
//!
//! [`child_kinds!`] is the one table of child kinds. `Children` (here), the controller's caches
//! and watches (`cache`, `controller`), apply, hold and prune (`apply`) and the third-party CRDs
//! the operator watches (`controller::crds`) are all generated from it: a new kind is one line.

use serde::Serialize;

use super::common::short_hash;

/// Annotation on every applied child: a hash of what the operator sent.
pub const APPLIED_HASH_ANNOTATION: &str = "tator.io/applied-hash";

/// Hash of an object as the operator sends it.
pub fn applied_hash<K: Serialize>(obj: &K) -> String {
    serde_json::to_vec(obj)
        .map(|b| short_hash(&b, 16))
        .unwrap_or_default()
}

/// The table of child kinds, in apply order (prune goes the other way). `child_kinds!(m, args…)`
/// calls `m!([args…] entries…)` with one entry per kind, `field: Type => handling;`, where
/// handling is how the controller keeps and compares the kind:
///
/// - `composed`: Secrets whose values the operator composes. Not watched (that would take the
///   right to list every Secret), so compared by a read; never pruned (owner references remove
///   them with the installation); never printed by `render`.
/// - `whole`: watched and kept whole, compared field by field; a change reconciles the owner.
/// - `labelled`: as `whole`, but a change reconciles the installation named by the instance
///   label (claims: a retaining deletion policy leaves them without an owner).
/// - `slim`: watched as metadata, replicas and status, compared by generation (`cache`).
/// - `meta`: watched as metadata only, compared by generation.
/// - `crd(resource, "Kind")`: a third-party kind, applied when its CRD is installed; the
///   operator watches the CRD, not the objects, and reads them before writing.
macro_rules! child_kinds {
    ($then:ident $(, $($extra:tt)*)?) => {
        $then! {
            [$($($extra)*)?]
            /// Secrets whose values the operator composes (object storage).
            secrets: ::k8s_openapi::api::core::v1::Secret => composed;
            service_accounts: ::k8s_openapi::api::core::v1::ServiceAccount => whole;
            roles: ::k8s_openapi::api::rbac::v1::Role => whole;
            role_bindings: ::k8s_openapi::api::rbac::v1::RoleBinding => whole;
            claims: ::k8s_openapi::api::core::v1::PersistentVolumeClaim => labelled;
            config_maps: ::k8s_openapi::api::core::v1::ConfigMap => whole;
            /// cert-manager Certificates (applied when its CRDs exist).
            certificates: ::kube::api::DynamicObject
                => crd($crate::builders::tls::certificate_resource, "Certificate");
            services: ::k8s_openapi::api::core::v1::Service => whole;
            jobs: ::k8s_openapi::api::batch::v1::Job => whole;
            /// Tator's maintenance CronJobs.
            cron_jobs: ::k8s_openapi::api::batch::v1::CronJob => meta;
            stateful_sets: ::k8s_openapi::api::apps::v1::StatefulSet => slim;
            daemon_sets: ::k8s_openapi::api::apps::v1::DaemonSet => whole;
            deployments: ::k8s_openapi::api::apps::v1::Deployment => slim;
            autoscalers: ::k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler => whole;
            disruption_budgets: ::k8s_openapi::api::policy::v1::PodDisruptionBudget => whole;
            network_policies: ::k8s_openapi::api::networking::v1::NetworkPolicy => whole;
            /// prometheus-operator ServiceMonitors and PodMonitors (applied when its CRDs exist).
            service_monitors: ::kube::api::DynamicObject
                => crd($crate::builders::monitoring::service_monitor_resource, "ServiceMonitor");
            pod_monitors: ::kube::api::DynamicObject
                => crd($crate::builders::monitoring::pod_monitor_resource, "PodMonitor");
            /// KEDA ScaledObjects (applied when its CRDs exist).
            scaled_objects: ::kube::api::DynamicObject
                => crd($crate::builders::queue_workers::scaled_object_resource, "ScaledObject");
            /// Argo WorkflowTemplates (applied when Argo's CRDs exist).
            workflow_templates: ::kube::api::DynamicObject
                => crd($crate::builders::workflows::workflow_template_resource, "WorkflowTemplate");
        }
    };
}
pub(crate) use child_kinds;

macro_rules! define_children {
    ([] $( $(#[$doc:meta])* $field:ident : $ty:ty => $how:ident $(($($arg:tt)*))? ; )*) => {
        /// Every child the operator applies for one TatorDeployment, one list per kind of
        /// [`child_kinds!`], in apply order.
        #[derive(Clone, Debug, Default)]
        pub struct Children {
            $( $(#[$doc])* pub $field: Vec<$ty>, )*
        }

        impl Children {
            /// Adds another set of children (applied after these).
            pub fn extend(&mut self, other: Children) {
                $( self.$field.extend(other.$field); )*
            }

            /// Stamps every object with a hash of itself ([`APPLIED_HASH_ANNOTATION`]), so
            /// that apply can tell an unchanged child from one to send.
            pub fn stamp_applied_hashes(&mut self) {
                $( stamp(&mut self.$field); )*
            }

            /// Every object as JSON, in apply order, composed Secrets left out (they carry
            /// credentials).
            pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
                let mut out = Vec::new();
                $(
                    if stringify!($how) != "composed" {
                        for o in &self.$field {
                            out.push(serde_json::to_value(o)?);
                        }
                    }
                )*
                Ok(out)
            }
        }
    };
}
child_kinds!(define_children);

fn stamp<K: kube::Resource + Serialize>(objs: &mut [K]) {
    for o in objs {
        let h = applied_hash(o);
        o.meta_mut()
            .annotations
            .get_or_insert_with(Default::default)
            .insert(APPLIED_HASH_ANNOTATION.into(), h);
    }
}
