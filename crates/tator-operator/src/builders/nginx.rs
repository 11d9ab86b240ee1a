//! NGINX: the generated nginx.conf, its ConfigMap, the Deployment and the public Service.

use std::{collections::BTreeMap, fmt::Write};

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, ContainerPort, EmptyDirVolumeSource, HTTPGetAction,
            PodSpec, Probe, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume,
            VolumeMount,
        },
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{
    common::*,
    names::{API, API_PORT, NGINX, STUB_STATUS_PORT, UI, UI_PORT},
};
use crate::validate::ValidatedTator;

pub const HTTP_PORT: i32 = 8080;
pub const HTTPS_PORT: i32 = 8443;
/// Default NGINX image: the unprivileged build runs as uid 101 on unprivileged ports, which
/// PodSecurity `restricted` and a read-only root filesystem allow.
pub const DEFAULT_IMAGE: &str = "nginxinc/nginx-unprivileged:1.27-alpine";
const NGINX_UID: i64 = 101;

/// Everything the NGINX configuration depends on.
#[derive(Clone, Debug)]
pub struct NginxConfig {
    pub server_names: Vec<String>,
    pub api_upstream: String,
    pub ui_upstream: String,
    pub tls: bool,
    pub redirect_http: bool,
    pub maintenance: bool,
    /// Folder the TLS certificate and key are mounted in.
    pub ssl_dir: String,
    pub extra_routes: Vec<ProxyRoute>,
    /// Serve `stub_status` on 127.0.0.1:[`STUB_STATUS_PORT`] for the metrics exporter sidecar.
    pub stub_status: bool,
}

impl NginxConfig {
    pub fn from_spec(t: &ValidatedTator) -> Self {
        let mut server_names = vec![t.spec.domain.clone()];
        server_names.extend(t.spec.aliases.iter().cloned());
        Self {
            server_names,
            api_upstream: format!("{}:{API_PORT}", t.child_name(API)),
            ui_upstream: format!("{}:{UI_PORT}", t.child_name(UI)),
            tls: t.spec.tls.is_some(),
            redirect_http: t.spec.tls.as_ref().is_some_and(|t| t.redirect_http),
            maintenance: t.spec.nginx.maintenance,
            ssl_dir: "/ssl".into(),
            extra_routes: super::objects::objects_route(t)
                .into_iter()
                .chain(super::logging::routes(t))
                .chain(super::monitoring::routes(t))
                .collect(),
            stub_status: super::features::monitoring_enabled(t),
        }
    }
}

const PROXY_HEADERS: &str = "      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
";

fn guard_line(guard: Guard) -> &'static str {
    match guard {
        Guard::Open => "",
        Guard::Project => "      auth_request /auth-project;\n",
        Guard::Staff => "      auth_request /auth-admin;\n",
    }
}

/// The body of a location: 503 in maintenance mode, otherwise `body`.
fn serve(c: &NginxConfig, body: &str) -> String {
    if c.maintenance {
        "      return 503;\n".into()
    } else {
        body.to_string()
    }
}

/// Locations Tator's UI server answers (compose/nginx.conf.template): the pages, `/static`
/// (the UI bundles and Django's admin files under `/static/<tag>/`) and the favicon.
pub const UI_ROUTES: &str = "^/$|^/rest/?$|^/static|^/(callback|exchange|refresh|projects|token|organizations|registration|accept|account-profile|password-reset-request|password-reset|favicon\\.ico)|^/[0-9]+/";

/// REST endpoints that stream large bodies both ways: NGINX buffers neither.
pub const STREAMING_ROUTES: &str = "^/rest/(Localizations|Medias|States)";

/// Headers of every Tator page, file and API answer. The annotator needs SharedArrayBuffer,
/// which browsers give only to cross-origin-isolated pages. NGINX drops the server's
/// `add_header`s in a location that has its own, so HSTS is repeated here on HTTPS. The
/// upstream's own copies are hidden: Django sends `Cross-Origin-Opener-Policy` too, and a
/// header sent twice reads as a list, which browsers ignore (the page is then not isolated).
/// `always`: error answers (an API 400, a 404) are documents of the page's origin too.
fn isolation_headers(https: bool) -> String {
    let mut s = String::from(
        "      proxy_hide_header Cross-Origin-Opener-Policy;\n      proxy_hide_header Cross-Origin-Embedder-Policy;\n      add_header Cross-Origin-Opener-Policy same-origin always;\n      add_header Cross-Origin-Embedder-Policy credentialless always;\n",
    );
    if https {
        s.push_str("      add_header Strict-Transport-Security \"max-age=31536000\" always;\n");
    }
    s
}

fn locations(c: &NginxConfig, https: bool) -> String {
    let mut s = String::new();
    let headers = isolation_headers(https);
    let proxy = |upstream: &str| format!("      proxy_pass http://{upstream};\n{PROXY_HEADERS}");
    s.push_str(
        "    location = /healthz {\n      access_log off;\n      return 200 \"ok\\n\";\n    }\n",
    );
    s.push_str("    location = /maintenance.html {\n      root /static;\n      internal;\n    }\n");
    s.push_str("    location ~* (phpinfo\\.php|wp-login\\.php|phpmyadmin|HNAP1) {\n      return 404;\n    }\n");
    s.push_str("    location ^~ /docs {\n      return 301 https://tator.io/docs;\n    }\n");
    s.push_str("    location ^~ /media/working/ {\n      return 403;\n    }\n");
    let _ = write!(
        s,
        "    location ^~ /media/ {{\n{}    }}\n",
        serve(
            c,
            &format!(
                "{}      alias /media/;\n{headers}",
                guard_line(Guard::Project)
            )
        )
    );
    for r in &c.extra_routes {
        let body = if r.object_store {
            format!(
                "      proxy_pass http://{};\n      proxy_http_version 1.1;\n      proxy_request_buffering off;\n      proxy_buffering off;\n",
                r.upstream
            )
        } else {
            proxy(&r.upstream)
        };
        let mut body = body;
        for (name, value) in &r.headers {
            let _ = writeln!(body, "      proxy_set_header {name} \"{value}\";");
        }
        let _ = write!(
            s,
            "    location ^~ {} {{\n{}    }}\n",
            r.path,
            serve(c, &format!("{}{body}", guard_line(r.guard)))
        );
    }
    // Auth subrequests: the backend answers 2xx to allow, 401/403 to deny.
    for (path, target) in [
        ("/auth-project", "auth-project"),
        ("/auth-admin", "auth-admin"),
    ] {
        let _ = write!(
            s,
            "    location = {path} {{\n      internal;\n      proxy_pass http://tator_api/{target};\n      proxy_pass_request_body off;\n      proxy_set_header Content-Length \"\";\n      proxy_set_header X-Original-URI $request_uri;\n      proxy_set_header Authorization $http_authorization;\n      proxy_set_header Host $host;\n    }}\n"
        );
    }
    let _ = write!(
        s,
        "    location ~ {STREAMING_ROUTES} {{\n{}    }}\n",
        serve(
            c,
            &format!(
                "{}{headers}      proxy_buffering off;\n      proxy_request_buffering off;\n",
                proxy("tator_api")
            )
        )
    );
    let _ = write!(
        s,
        "    location ~ {UI_ROUTES} {{\n{}    }}\n",
        serve(c, &format!("{}{headers}", proxy("tator_ui")))
    );
    let _ = write!(
        s,
        "    location / {{\n{}    }}\n",
        serve(c, &format!("{}{headers}", proxy("tator_api")))
    );
    s
}

/// Renders nginx.conf.
pub fn render_conf(c: &NginxConfig) -> String {
    let names = c.server_names.join(" ");
    let mut s = String::new();
    s.push_str(
        "# Generated by tator-operator. Edits are overwritten.
worker_processes auto;
pid /tmp/nginx.pid;
error_log /dev/stderr warn;

events {
  worker_connections 1024;
}

http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log /dev/stdout;
  client_body_temp_path /tmp/client_temp;
  proxy_temp_path /tmp/proxy_temp;
  fastcgi_temp_path /tmp/fastcgi_temp;
  uwsgi_temp_path /tmp/uwsgi_temp;
  scgi_temp_path /tmp/scgi_temp;
  server_names_hash_bucket_size 128;
  server_tokens off;
  sendfile on;
  client_max_body_size 0;
  proxy_request_buffering off;
  proxy_ignore_client_abort on;
  proxy_http_version 1.1;
  proxy_connect_timeout 1200s;
  proxy_send_timeout 1200s;
  proxy_read_timeout 1200s;
  send_timeout 1200s;
  gzip on;
  gzip_types application/json text/css application/javascript;

  map $http_upgrade $connection_upgrade {
    default upgrade;
    '' '';
  }
",
    );
    let _ = write!(
        s,
        "
  upstream tator_api {{
    server {};
  }}

  upstream tator_ui {{
    server {};
  }}
",
        c.api_upstream, c.ui_upstream
    );
    let maintenance = if c.maintenance {
        "    error_page 503 /maintenance.html;\n"
    } else {
        ""
    };
    if c.tls && c.redirect_http {
        let _ = write!(
            s,
            "
  server {{
    listen {HTTP_PORT} default_server;
    server_name {names};
    location = /healthz {{
      access_log off;
      return 200 \"ok\\n\";
    }}
    location ^~ /.well-known/acme-challenge/ {{
      alias /static/challenges/;
    }}
    location / {{
      return 301 https://$host$request_uri;
    }}
  }}
"
        );
    } else {
        let _ = write!(
            s,
            "
  server {{
    listen {HTTP_PORT} default_server;
    server_name {names};
{maintenance}{}  }}
",
            locations(c, false)
        );
    }
    if c.tls {
        let _ = write!(
            s,
            "
  server {{
    listen {HTTPS_PORT} ssl http2 default_server;
    server_name {names};
    ssl_certificate {dir}/tls.crt;
    ssl_certificate_key {dir}/tls.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers HIGH:!aNULL:!MD5;
    ssl_session_cache shared:SSL:10m;
    add_header Strict-Transport-Security \"max-age=31536000\" always;
{maintenance}{}  }}
",
            locations(c, true),
            dir = c.ssl_dir
        );
    }
    if c.stub_status {
        let _ = write!(
            s,
            "
  server {{
    listen 127.0.0.1:{STUB_STATUS_PORT};
    access_log off;
    location = /stub_status {{
      stub_status;
    }}
    location / {{
      return 404;
    }}
  }}
"
        );
    }
    s.push_str("}\n");
    s
}

/// The ConfigMap holding nginx.conf.
pub fn config_map(t: &ValidatedTator, conf: &str) -> ConfigMap {
    ConfigMap {
        metadata: child_meta(t, t.child_name("nginx-conf"), NGINX, None),
        data: Some(BTreeMap::from([(
            "nginx.conf".to_string(),
            conf.to_string(),
        )])),
        ..Default::default()
    }
}

/// The NGINX Deployment. Its pod template carries the hash of nginx.conf so a change rolls it.
pub fn deployment(t: &ValidatedTator, conf: &str) -> Deployment {
    let s = &t.spec.nginx;
    let image = s
        .pod
        .image
        .clone()
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string());
    let mut c = container(NGINX, image, t.spec.image.pull_policy.as_str(), true);
    let mut ports = vec![ContainerPort {
        name: Some("http".into()),
        container_port: HTTP_PORT,
        ..Default::default()
    }];
    let mut mounts = vec![
        VolumeMount {
            name: "conf".into(),
            mount_path: "/etc/nginx/nginx.conf".into(),
            sub_path: Some("nginx.conf".into()),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    mounts.extend(shared_mounts(
        &[("static", "/static"), ("media", "/media")],
        true,
    ));
    let mut volumes = vec![
        Volume {
            name: "conf".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: t.child_name("nginx-conf"),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
        shared_volume(t),
    ];
    if let Some(secret) = super::features::tls_secret_name(t) {
        ports.push(ContainerPort {
            name: Some("https".into()),
            container_port: HTTPS_PORT,
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: "/ssl".into(),
            read_only: Some(true),
            ..Default::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    c.ports = Some(ports);
    c.volume_mounts = Some(mounts);
    let probe = |initial: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz".into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        initial_delay_seconds: Some(initial),
        period_seconds: Some(10),
        ..Default::default()
    };
    c.readiness_probe = Some(probe(2));
    c.liveness_probe = Some(probe(10));
    c.resources = Some(resources_or(&s.pod, requirements("250m", "256Mi", "1Gi")));
    let mut containers = vec![c];
    containers.extend(super::monitoring::nginx_exporter(t));
    let spec = PodSpec {
        // Nothing in this pod calls the Kubernetes API: no token in it.
        automount_service_account_token: Some(false),
        containers,
        volumes: Some(volumes),
        security_context: Some(pod_security(NGINX_UID)),
        topology_spread_constraints: Some(spread(t, NGINX)),
        ..Default::default()
    };
    let annotations = BTreeMap::from([(
        CONFIG_HASH_ANNOTATION.to_string(),
        short_hash(conf.as_bytes(), 16),
    )]);
    Deployment {
        metadata: child_meta(t, t.child_name(NGINX), NGINX, None),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: label_selector(t, NGINX),
            strategy: Some(zero_downtime()),
            progress_deadline_seconds: Some(t.spec.progress_deadline_seconds),
            template: pod_template(t, NGINX, None, spec, annotations, &s.pod),
            ..Default::default()
        }),
        status: None,
    }
}

/// The public Service in front of NGINX.
pub fn service(t: &ValidatedTator) -> Service {
    let svc = &t.spec.nginx.service;
    let mut meta = child_meta(t, t.child_name(NGINX), NGINX, None);
    if !svc.annotations.is_empty() {
        meta.annotations = Some(svc.annotations.clone());
    }
    let mut ports = vec![ServicePort {
        name: Some("http".into()),
        port: 80,
        target_port: Some(IntOrString::String("http".into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    if t.spec.tls.is_some() {
        ports.push(ServicePort {
            name: Some("https".into()),
            port: 443,
            target_port: Some(IntOrString::String("https".into())),
            protocol: Some("TCP".into()),
            ..Default::default()
        });
    }
    let external = svc.type_ != tator_api::ServiceType::ClusterIP;
    Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(svc.type_.as_str().into()),
            selector: Some(selector_labels(t, NGINX)),
            ports: Some(ports),
            load_balancer_class: svc.load_balancer_class.clone(),
            load_balancer_ip: svc.load_balancer_ip.clone(),
            external_traffic_policy: external.then(|| svc.external_traffic_policy.as_str().into()),
            ..Default::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_fixtures::minimal, validate::validate};

    fn conf(tls: bool, maintenance: bool) -> String {
        let mut td = minimal("1.5.0");
        if tls {
            td.spec.tls = Some(tator_api::TlsSettings {
                secret_name: Some("tls".into()),
                issuer_ref: None,
                redirect_http: true,
            });
        }
        td.spec.nginx.maintenance = maintenance;
        let t = validate(&td).unwrap();
        let mut c = NginxConfig::from_spec(&t);
        c.extra_routes.push(ProxyRoute {
            path: "/logs/".into(),
            upstream: "kibana:5601".into(),
            guard: Guard::Staff,
            object_store: false,
            headers: vec![],
        });
        render_conf(&c)
    }

    #[test]
    fn routes_are_guarded() {
        let c = conf(false, false);
        let media = c.split("location ^~ /media/ {").nth(1).unwrap();
        assert!(
            media
                .split('}')
                .next()
                .unwrap()
                .contains("auth_request /auth-project;")
        );
        let logs = c.split("location ^~ /logs/ {").nth(1).unwrap();
        assert!(
            logs.split('}')
                .next()
                .unwrap()
                .contains("auth_request /auth-admin;")
        );
        assert!(c.contains("client_max_body_size 0;"));
        assert!(c.contains("proxy_read_timeout 1200s;"));
        assert!(c.contains("server tator-api:8000;"));
    }

    #[test]
    fn objects_route_keeps_the_signed_host_and_has_no_auth() {
        let c = conf(false, false);
        let objects = c
            .split("location ^~ /objects/ {")
            .nth(1)
            .expect("the in-cluster store adds /objects/")
            .split('}')
            .next()
            .unwrap();
        // The trailing slash strips /objects; nginx then sends Host: tator-seaweedfs:8333, the
        // host Tator signed presigned URLs for.
        assert!(
            objects.contains("proxy_pass http://tator-seaweedfs:8333/;"),
            "{objects}"
        );
        assert!(!objects.contains("auth_request"), "{objects}");
        assert!(!objects.contains("proxy_set_header Host"), "{objects}");
        assert!(
            objects.contains("proxy_request_buffering off;"),
            "{objects}"
        );
    }

    /// The body of the location block that starts with `head`.
    fn block<'a>(conf: &'a str, head: &str) -> &'a str {
        conf.split(&format!("{head} {{"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {head} in {conf}"))
            .split("\n    }")
            .next()
            .unwrap()
    }

    #[test]
    fn routes_follow_tators_nginx_template() {
        let c = conf(false, false);
        // /static is the UI server's (its bundles and Django's admin files), not the volume's.
        assert!(!c.contains("alias /static/"), "{c}");
        let ui = block(&c, &format!("location ~ {UI_ROUTES}"));
        assert!(ui.contains("proxy_pass http://tator_ui;"), "{ui}");
        for route in [
            "^/static",
            "registration",
            "accept",
            "account-profile",
            "password-reset-request",
            "password-reset",
            "favicon\\.ico",
            "callback",
            "exchange",
            "refresh",
            "projects",
            "token",
            "organizations",
            "^/$",
            "^/rest/?$",
            "^/[0-9]+/",
        ] {
            assert!(UI_ROUTES.contains(route), "{route}");
        }
        let streaming = block(&c, &format!("location ~ {STREAMING_ROUTES}"));
        assert!(streaming.contains("proxy_pass http://tator_api;"));
        assert!(streaming.contains("proxy_buffering off;"));
        assert!(streaming.contains("proxy_request_buffering off;"));
        // Checked before the UI's regex (NGINX takes the first regex that matches).
        assert!(c.find(STREAMING_ROUTES) < c.find(UI_ROUTES));
        assert!(block(&c, "location ^~ /docs").contains("return 301"));
        assert!(block(&c, "location ^~ /media/working/").contains("return 403;"));
    }

    #[test]
    fn every_tator_route_is_cross_origin_isolated_and_keeps_hsts() {
        for tls in [false, true] {
            let mut td = minimal("1.5.0");
            if tls {
                td.spec.tls = Some(tator_api::TlsSettings {
                    secret_name: Some("tls".into()),
                    issuer_ref: None,
                    redirect_http: false,
                });
            }
            let c = render_conf(&NginxConfig::from_spec(&validate(&td).unwrap()));
            let ui = format!("location ~ {UI_ROUTES}");
            let streaming = format!("location ~ {STREAMING_ROUTES}");
            for head in ["location ^~ /media/", &ui, &streaming, "location /"] {
                let servers = c.matches(&format!("{head} {{")).count();
                assert_eq!(servers, if tls { 2 } else { 1 }, "{head}");
                for (i, body) in c.split(&format!("{head} {{")).skip(1).enumerate() {
                    let body = body.split("\n    }").next().unwrap();
                    assert!(
                        body.contains("add_header Cross-Origin-Opener-Policy same-origin always;"),
                        "{head}: {body}"
                    );
                    assert!(
                        body.contains(
                            "add_header Cross-Origin-Embedder-Policy credentialless always;"
                        ),
                        "{head}: {body}"
                    );
                    // Exactly one copy reaches the browser: the upstream's is hidden.
                    assert!(
                        body.contains("proxy_hide_header Cross-Origin-Opener-Policy;"),
                        "{head}: {body}"
                    );
                    // A location's own add_header hides the server's: HSTS is repeated on HTTPS.
                    let https = tls && i == 1;
                    assert_eq!(
                        body.contains("Strict-Transport-Security"),
                        https,
                        "{head}: {body}"
                    );
                }
            }
        }
    }

    #[test]
    fn tls_adds_https_server_and_redirect() {
        let c = conf(true, false);
        assert!(c.contains("listen 8443 ssl"));
        assert!(c.contains("return 301 https://$host$request_uri;"));
        assert!(!conf(false, false).contains("ssl_certificate"));
    }

    #[test]
    fn maintenance_answers_503_everywhere_but_health() {
        let c = conf(false, true);
        assert!(c.contains("error_page 503 /maintenance.html;"));
        assert!(!c.contains("proxy_pass http://tator_ui;"));
        assert!(c.contains("return 200 \"ok\\n\";"));
    }

    #[test]
    fn config_change_changes_pod_template_hash() {
        let t = validate(&minimal("1.5.0")).unwrap();
        let a = deployment(&t, "a");
        let b = deployment(&t, "b");
        let hash = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
    }
}
