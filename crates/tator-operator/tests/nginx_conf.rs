//! The generated nginx.conf passes `nginx -t` with Debian's nginx.
//!
//! `nginx -t` resolves upstream host names, so each check runs in a private mount namespace
//! (`unshare -m`) whose /etc/hosts maps the Service names to 127.0.0.1: the machine's own
//! /etc/hosts is untouched, and /etc/resolv.conf points at loopback so nothing else is asked. nginx must be installed (`.ci/run` installs
//! it); a missing nginx fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use tator_operator::{
    builders::{
        common::{Guard, ProxyRoute},
        nginx::{NginxConfig, render_conf},
    },
    validate::validate,
};

fn config(tls: bool, maintenance: bool, ssl_dir: &str) -> String {
    let td: tator_api::TatorDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator", "namespace": "ns", "uid": "u"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com", "aliases": ["tator.lab.example.com"],
                 "tls": if tls { serde_json::json!({"secretName": "tls"}) } else { serde_json::Value::Null },
                 "nginx": {"maintenance": maintenance}}
    }))
    .unwrap();
    let t = validate(&td).unwrap();
    let mut c = NginxConfig::from_spec(&t);
    c.ssl_dir = ssl_dir.into();
    c.extra_routes.push(ProxyRoute {
        path: "/logs/".into(),
        upstream: "tator-kibana:5601".into(),
        guard: Guard::Staff,
        object_store: false,
        headers: vec![],
    });
    render_conf(&c)
}

/// nginx.conf as the operator generates it with logging and monitoring on (the operator's own
/// Prometheus: no prometheus-operator), so /logs/, /grafana/ and /prometheus/ and the
/// stub_status server come from the builders themselves.
fn observability_config(tls: bool, ssl_dir: &str) -> String {
    let td: tator_api::TatorDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "tator.io/v1alpha1", "kind": "TatorDeployment",
        "metadata": {"name": "tator", "namespace": "ns", "uid": "u"},
        "spec": {"version": "1.5.0", "domain": "tator.example.com",
                 "tls": if tls { serde_json::json!({"secretName": "tls"}) } else { serde_json::Value::Null },
                 "logging": {"enabled": true}, "monitoring": {"enabled": true}}
    }))
    .unwrap();
    let t = validate(&td).unwrap();
    let mut c = NginxConfig::from_spec(&t);
    c.ssl_dir = ssl_dir.into();
    render_conf(&c)
}

/// The body of `location ^~ <path> {` up to its closing brace.
fn location<'a>(conf: &'a str, path: &str) -> &'a str {
    conf.split(&format!("location ^~ {path} {{"))
        .nth(1)
        .unwrap_or_else(|| panic!("no location {path} in\n{conf}"))
        .split('}')
        .next()
        .unwrap()
}

fn nginx_t(conf: &str, dir: &std::path::Path) -> (bool, String) {
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let hosts = dir.join("hosts");
    std::fs::write(
        &hosts,
        "127.0.0.1 localhost tator-api tator-ui tator-kibana tator-seaweedfs tator-grafana tator-prometheus\n",
    )
    .unwrap();
    // Names missing from hosts must not reach a real DNS server: point the resolver at loopback.
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let script = format!(
        "mount --bind {} /etc/hosts && mount --bind {} /etc/resolv.conf && nginx -t -q -c {} -g 'error_log stderr;'",
        hosts.display(),
        resolv.display(),
        conf_path.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare and nginx must be installed (see README prerequisites)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generated_configs_pass_nginx_t() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["tator.example.com".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), key.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.signing_key.serialize_pem()).unwrap();
    let ssl = dir.path().display().to_string();
    for (tls, maintenance) in [(false, false), (true, false), (false, true), (true, true)] {
        let conf = config(tls, maintenance, &ssl);
        // The default in-cluster object store adds the public /objects/ route.
        assert!(conf.contains("location ^~ /objects/"));
        let (ok, err) = nginx_t(&conf, dir.path());
        assert!(
            ok,
            "nginx -t failed (tls={tls}, maintenance={maintenance}):\n{err}"
        );
    }
}

#[test]
fn nginx_t_really_checks_the_config() {
    // The harness itself must be able to fail: a broken config and an unresolvable upstream.
    let dir = tempfile::tempdir().unwrap();
    let broken = config(false, false, "/nonexistent")
        .replace("worker_connections 1024;", "worker_connections;");
    assert!(!nginx_t(&broken, dir.path()).0);
    let unknown = config(false, false, "/nonexistent").replace(
        "server tator-api:8000;",
        "server no-such-host.invalid:8000;",
    );
    let (ok, err) = nginx_t(&unknown, dir.path());
    assert!(!ok && err.contains("host not found"), "{err}");
}

#[test]
fn observability_routes_pass_nginx_t_and_are_staff_only() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["tator.example.com".into()]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), key.cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.signing_key.serialize_pem()).unwrap();
    let ssl = dir.path().display().to_string();
    for tls in [false, true] {
        let conf = observability_config(tls, &ssl);
        for path in ["/logs/", "/grafana/", "/prometheus/"] {
            let body = location(&conf, path);
            assert!(
                body.contains("auth_request /auth-admin;"),
                "{path} must be staff-only:\n{body}"
            );
        }
        assert!(location(&conf, "/logs/").contains("proxy_pass http://tator-kibana:5601;"));
        assert!(
            location(&conf, "/prometheus/").contains("proxy_pass http://tator-prometheus:9090/;")
        );
        // Grafana's auth proxy gets its user only from NGINX, after the staff check.
        assert!(
            location(&conf, "/grafana/")
                .contains("proxy_set_header X-WEBAUTH-USER \"tator-staff\";")
        );
        // stub_status answers on loopback only.
        assert!(conf.contains("listen 127.0.0.1:8081;") && conf.contains("stub_status;"));
        let (ok, err) = nginx_t(&conf, dir.path());
        assert!(ok, "nginx -t failed (tls={tls}):\n{err}\n{conf}");
    }
}
