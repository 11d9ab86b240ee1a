//! The headless browser driver against a small HTTP server on loopback: a cross-origin-isolated
//! page, a form post, a page with a console error, a 404 and a name that must not resolve, and
//! no browser process left after the drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::json;
use tator_testbed::{
    browser::{Browser, BrowserError, BrowserOptions},
    support::wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(30);

const HOME: &str = r#"<!doctype html><html><head><title>home</title><link rel="icon" href="data:,">
<script src="/ok.js"></script></head>
<body><form id="f" method="post" action="/next"><input name="q"></form></body></html>"#;

const NEXT: &str = r#"<!doctype html><html><head><title>next</title><link rel="icon" href="data:,">
</head><body>posted</body></html>"#;

const BAD: &str = r#"<!doctype html><html><head><title>bad</title><link rel="icon" href="data:,">
</head><body><script>console.error("boom")</script>
<img src="/missing.png"><img src="http://example.invalid/x.png"></body></html>"#;

/// Serves the pages above on a loopback port; returns the port and the bodies of POSTs.
fn serve() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let posted = Arc::new(Mutex::new(Vec::new()));
    let bodies = posted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let bodies = bodies.clone();
            std::thread::spawn(move || answer(stream, &bodies));
        }
    });
    (port, posted)
}

fn answer(mut stream: TcpStream, posted: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    // Chromium opens spare connections that it may close without a request.
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut words = line.split_whitespace();
    let (method, path) = (
        words.next().unwrap_or("").to_string(),
        words.next().unwrap_or("").to_string(),
    );
    let mut length = 0;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    if method == "POST" {
        posted
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(&body).into_owned());
    }
    let isolated = "cross-origin-opener-policy: same-origin\r\ncross-origin-embedder-policy: credentialless\r\n";
    let (status, kind, headers, content) = match (method.as_str(), path.as_str()) {
        ("GET", "/") => ("200 OK", "text/html", isolated, HOME),
        ("GET", "/ok.js") => ("200 OK", "text/javascript", "", "window.okLoaded = 42;"),
        ("POST", "/next") => ("200 OK", "text/html", "", NEXT),
        ("GET", "/bad") => ("200 OK", "text/html", "", BAD),
        _ => ("404 Not Found", "text/plain", "", "not found"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{content}",
        content.len()
    );
}

/// PIDs of processes whose command line mentions `dir` (zombies have none).
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            pids.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

/// The host of an `http(s)://host[:port]/…` URL.
fn host(url: &str) -> &str {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or("");
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

#[tokio::test]
async fn browser_loads_pages_posts_forms_and_reports_failures() {
    let started = Instant::now();
    let (port, posted) = serve();
    let site = format!("http://site.test:{port}");
    let browser = Browser::start(BrowserOptions {
        dir: std::env::temp_dir().join("tator-browser-test"),
        hosts: vec![("site.test".into(), format!("127.0.0.1:{port}"))],
        secure_origins: vec![site.clone()],
    })
    .await
    .unwrap();
    let profile = browser.dir().to_path_buf();
    let page = browser.new_page().await.unwrap();

    page.goto(&format!("{site}/"), TIMEOUT).await.unwrap();
    let report = page.report();
    assert!(report.failed_requests.is_empty(), "{report:#?}");
    assert!(report.console_errors.is_empty(), "{report:#?}");
    assert_eq!(page.eval("crossOriginIsolated").await.unwrap(), json!(true));
    assert_eq!(page.eval("window.okLoaded").await.unwrap(), json!(42));
    assert_eq!(page.eval("Promise.resolve(7)").await.unwrap(), json!(7));
    match page.eval("null.x").await {
        Err(BrowserError::Js(text)) => assert!(text.contains("TypeError"), "{text}"),
        other => panic!("expected a JavaScript error, got {other:?}"),
    }

    page.eval_and_wait_navigation(
        "document.querySelector('input').value = 'hello'; document.getElementById('f').submit()",
        TIMEOUT,
    )
    .await
    .unwrap();
    assert_eq!(
        page.eval("location.pathname").await.unwrap(),
        json!("/next")
    );
    assert_eq!(*posted.lock().unwrap(), vec!["q=hello".to_string()]);

    page.goto(&format!("{site}/bad"), TIMEOUT).await.unwrap();
    let report = page.report();
    assert!(
        report
            .console_errors
            .iter()
            .any(|e| e == "console.error: boom"),
        "{report:#?}"
    );
    assert!(
        report
            .failed_requests
            .contains(&format!("{site}/missing.png: 404")),
        "{report:#?}"
    );
    let unresolved = "GET http://example.invalid/x.png: net::ERR_NAME_NOT_RESOLVED";
    assert!(
        report.failed_requests.iter().any(|f| f == unresolved),
        "{report:#?}"
    );
    // Nothing reached a host outside the map: any other host must have failed to resolve.
    for url in report.requests.iter().filter(|u| !u.starts_with("data:")) {
        let failed = format!("GET {url}: net::ERR_NAME_NOT_RESOLVED");
        assert!(
            host(url) == "site.test" || report.failed_requests.contains(&failed),
            "{url} was fetched: {report:#?}"
        );
    }
    match page.goto("http://elsewhere.test/", TIMEOUT).await {
        Err(BrowserError::Navigate { error, .. }) => {
            assert_eq!(error, "net::ERR_NAME_NOT_RESOLVED")
        }
        other => panic!("expected a navigation error, got {other:?}"),
    }

    assert!(
        !processes_mentioning(&profile).is_empty(),
        "the browser runs with its profile"
    );
    drop(page);
    drop(browser);
    wait_for(
        "no process using the profile",
        Duration::from_secs(10),
        || async {
            match processes_mentioning(&profile) {
                pids if pids.is_empty() => Ok(()),
                pids => Err(format!("PIDs {pids:?}")),
            }
        },
    )
    .await
    .unwrap();
    std::fs::remove_dir_all(&profile).unwrap();
    eprintln!("browser test took {:.1} s", started.elapsed().as_secs_f64());
}
