//! A headless Chromium for end-to-end tests, driven over the Chrome DevTools Protocol (CDP).
//!
//! [`Browser::start`] runs Debian's Chromium with a fresh profile under a folder the caller gives.
//! Names resolve only through the caller's host map and no proxy is used, so a page reaches the
//! loopback addresses a test maps and nothing else. [`Browser::new_page`] opens a tab whose
//! requests, failures and console errors are recorded in a [`PageReport`]. [`Page::goto`] and
//! [`Page::eval_and_wait_navigation`] return once the new document has loaded *and* no request
//! has been in flight for [`NETWORK_IDLE`]; [`Page::eval`] runs JavaScript.
//!
//! Why a pipe: with `--remote-debugging-pipe` Chromium reads commands from fd 3 and writes
//! answers and events to fd 4, one JSON object per message, each ended by a NUL byte. There is no
//! debugging port that other local processes or parallel tests could reach or collide with, no
//! websocket client to depend on, and end-of-file on fd 4 says at once that the browser died.
//!
//! Why no `pre_exec`: the workspace forbids `unsafe` code. The command pipe is the child's stdin
//! and the event pipe its stdout, and a `sh -c 'exec 3<&0 4>&1 …'` prefix moves them to fds 3 and
//! 4; `setpriv --pdeathsig KILL` (util-linux) then has the kernel kill the browser when the thread
//! that started it exits. That thread is the pipe's reader, which lives as long as the browser, so
//! a test process that crashes or is killed leaves no browser behind. The browser and its
//! renderers run in a process group of their own, which dropping the [`Browser`] kills and reaps.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, PipeReader, PipeWriter, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

/// The browser itself: `/usr/bin/chromium` is Debian's launcher script, which adds flags of its
/// own from `/etc/chromium.d` (remote extensions, GPU rasterization).
const CHROMIUM: [&str; 2] = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"];

/// Moves stdin and stdout to fds 3 and 4, sends stdout to the log, then runs its arguments with
/// a parent-death signal.
const FD_SHIM: &str = "exec 3<&0 4>&1 </dev/null >&2; exec setpriv --pdeathsig KILL -- \"$@\"";

/// For a browser that runs as root in a container and never leaves loopback: no sandbox (it needs
/// user namespaces or a setuid helper), no GPU, `/tmp` instead of a small `/dev/shm`, no proxy
/// (an `http_proxy` in the environment would send requests off the machine), and none of the
/// background services (updates, sync, metrics, translation…) that call Google.
const FLAGS: &str = "--headless --remote-debugging-pipe --no-sandbox --disable-gpu \
    --disable-dev-shm-usage --no-proxy-server --no-first-run --no-default-browser-check \
    --disable-background-networking --disable-component-update --disable-sync \
    --disable-default-apps --disable-extensions --disable-breakpad --metrics-recording-only \
    --disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,InterestFeedContentSuggestions";

/// How long no request may be in flight before a page counts as settled (Puppeteer's
/// `networkidle0` uses the same).
pub const NETWORK_IDLE: Duration = Duration::from_millis(500);

/// Bound on any single command, including the first one, which waits for the browser to start.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start a [`Browser`].
#[derive(Clone, Debug, Default)]
pub struct BrowserOptions {
    /// Folder in which a fresh profile folder (with `chromium.log`) is created.
    pub dir: PathBuf,
    /// Host name -> `"ip"` or `"ip:port"`. Every other host fails with `ERR_NAME_NOT_RESOLVED`,
    /// IP literals included: map `127.0.0.5` to itself to let a page use that address.
    pub hosts: Vec<(String, String)>,
    /// Origins such as `http://tator.example.com` to treat as secure contexts (without one,
    /// Chromium ignores COOP on plain HTTP and `crossOriginIsolated` stays false).
    pub secure_origins: Vec<String>,
}

/// Everything that can go wrong while driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    #[error("could not {action}: {source}")]
    Io {
        action: String,
        source: std::io::Error,
    },
    #[error("the browser is gone ({reason}); {log}")]
    Gone { reason: String, log: String },
    #[error("{method} failed: {message}")]
    Protocol { method: String, message: String },
    #[error("navigation to {url} failed: {error}")]
    Navigate { url: String, error: String },
    #[error("JavaScript threw: {0}")]
    Js(String),
    #[error("timed out waiting for {what} (last seen: {last}); {log}")]
    Timeout {
        what: String,
        last: String,
        log: String,
    },
}

/// What a page saw since it was created.
#[derive(Clone, Debug, Default)]
pub struct PageReport {
    /// `"METHOD url: errorText"` for requests that failed (except canceled ones) and
    /// `"url: status"` for responses with a status of 400 or more.
    pub failed_requests: Vec<String>,
    /// `console.error` and `console.assert` calls, uncaught exceptions, and browser log entries
    /// of level error (such as "Failed to load resource").
    pub console_errors: Vec<String>,
    /// The URL of every request, in order.
    pub requests: Vec<String>,
}

/// A running Chromium; dropping it kills its process group.
pub struct Browser {
    conn: Arc<Conn>,
    child: Child,
    dir: PathBuf,
}

/// One tab, attached with a CDP session of its own.
pub struct Page {
    conn: Arc<Conn>,
    session: String,
    state: Arc<Mutex<PageState>>,
}

/// The connection, shared by the reader thread, the [`Browser`] and its pages.
struct Conn {
    writer: Mutex<PipeWriter>,
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>,
    pages: Mutex<HashMap<String, Arc<Mutex<PageState>>>>,
    /// Why the browser is gone, once it is.
    gone: Mutex<Option<String>>,
    /// Bumped after every event, so that waiters look at their page again.
    events: watch::Sender<u64>,
    log: PathBuf,
}

#[derive(Default)]
struct PageState {
    report: PageReport,
    /// requestId -> "METHOD url".
    in_flight: HashMap<String, String>,
    last_activity: Option<Instant>,
    main_frame: String,
    url: String,
    /// Loader (document) the main frame last committed, and the last one whose load event fired.
    committed: String,
    loaded: String,
    crashed: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io(action: &str) -> impl FnOnce(std::io::Error) -> BrowserError + '_ {
    move |source| BrowserError::Io {
        action: action.to_string(),
        source,
    }
}

impl Browser {
    /// Starts Chromium and waits until it answers `Browser.getVersion`.
    pub async fn start(o: BrowserOptions) -> Result<Browser, BrowserError> {
        std::fs::create_dir_all(&o.dir).map_err(io("create the browser folder"))?;
        let dir = tempfile::Builder::new()
            .prefix("chromium-")
            .tempdir_in(&o.dir)
            .map_err(io("create the profile folder"))?
            .keep();
        let log = dir.join("chromium.log");
        let log_file = std::fs::File::create(&log).map_err(io("create chromium.log"))?;
        let chromium = CHROMIUM.iter().find(|p| Path::new(p).is_file());
        let chromium =
            chromium.ok_or_else(|| io("find Chromium")(std::io::ErrorKind::NotFound.into()))?;
        let (commands, command_writer) = std::io::pipe().map_err(io("create a pipe"))?;
        let (event_reader, events) = std::io::pipe().map_err(io("create a pipe"))?;
        let mut command = Command::new("sh");
        command
            .args(["-c", FD_SHIM, "sh", chromium])
            .args(flags(&o, &dir))
            .stdin(commands)
            .stdout(events)
            .stderr(log_file)
            .process_group(0);
        let conn = Arc::new(Conn {
            writer: Mutex::new(command_writer),
            next_id: AtomicU64::new(1),
            pending: Mutex::default(),
            pages: Mutex::default(),
            gone: Mutex::default(),
            events: watch::Sender::new(0),
            log,
        });
        let (tx, rx) = oneshot::channel();
        let reader = conn.clone();
        let thread = std::thread::Builder::new().name("chromium-cdp".into());
        thread
            .spawn(move || {
                let spawned = command.spawn();
                // Closes our copies of the child's ends: end-of-file now means it is gone.
                drop(command);
                match tx.send(spawned) {
                    Err(Ok(mut orphan)) => stop(&mut orphan),
                    _ => read_loop(&reader, event_reader),
                }
            })
            .map_err(io("start the CDP reader thread"))?;
        let spawned = rx
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("no thread")));
        let child = spawned.map_err(io("start Chromium"))?;
        let browser = Browser { conn, child, dir };
        browser.call("Browser.getVersion", json!({})).await?;
        Ok(browser)
    }

    async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.conn.call(None, method, params, COMMAND_TIMEOUT).await
    }

    /// The profile folder (`--user-data-dir`), which also holds `chromium.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens a blank tab with the Page, Runtime, Network and Log domains enabled.
    pub async fn new_page(&self) -> Result<Page, BrowserError> {
        let target = json!({"url": "about:blank"});
        let created = self.call("Target.createTarget", target).await?;
        let target = json!({"targetId": created["targetId"], "flatten": true});
        let attached = self.call("Target.attachToTarget", target).await?;
        let session = attached["sessionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let state = Arc::new(Mutex::new(PageState::default()));
        lock(&self.conn.pages).insert(session.clone(), state.clone());
        let page = Page {
            conn: self.conn.clone(),
            session,
            state,
        };
        for method in ["Page", "Runtime", "Network", "Log"].map(|d| format!("{d}.enable")) {
            page.call(&method, json!({})).await?;
        }
        // Lifecycle events name their loader, so a wait can tell which document loaded.
        page.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))
            .await?;
        Ok(page)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kills the process group of `child` (the browser and its renderers) and reaps the browser.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// The command line after the binary.
fn flags(o: &BrowserOptions, dir: &Path) -> Vec<String> {
    let mut flags: Vec<String> = FLAGS.split_whitespace().map(String::from).collect();
    let map = o
        .hosts
        .iter()
        .map(|(name, to)| format!("MAP {name} {to}, "));
    let rules: String = map.collect();
    flags.push(format!("--host-resolver-rules={rules}MAP * ~NOTFOUND"));
    flags.push(format!("--user-data-dir={}", dir.display()));
    if !o.secure_origins.is_empty() {
        let origins = o.secure_origins.join(",");
        flags.push(format!(
            "--unsafely-treat-insecure-origin-as-secure={origins}"
        ));
    }
    flags
}

fn read_loop(conn: &Conn, pipe: PipeReader) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    let reason = loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) => break "it closed the DevTools pipe".to_string(),
            Err(e) => break format!("reading the DevTools pipe failed: {e}"),
            Ok(_) => {}
        }
        let message = buf.strip_suffix(&[0]).unwrap_or(&buf);
        match serde_json::from_slice(message) {
            Ok(message) => conn.dispatch(&message),
            Err(e) => tracing::warn!("unreadable CDP message: {e}"),
        }
    };
    *lock(&conn.gone) = Some(reason);
    // Dropping the senders wakes every caller, which then reports why the browser is gone.
    lock(&conn.pending).clear();
    conn.events.send_modify(|n| *n += 1);
}

impl Conn {
    fn dispatch(&self, message: &Value) {
        if let Some(id) = message["id"].as_u64() {
            if let Some(tx) = lock(&self.pending).remove(&id) {
                let _ = tx.send(match message.get("error") {
                    Some(e) => Err(e["message"].as_str().unwrap_or("error").to_string()),
                    None => Ok(message["result"].clone()),
                });
            }
        } else if let (Some(session), Some(method)) =
            (message["sessionId"].as_str(), message["method"].as_str())
        {
            let page = lock(&self.pages).get(session).cloned();
            if let Some(page) = page {
                lock(&page).apply(method, &message["params"]);
                self.events.send_modify(|n| *n += 1);
            }
        }
    }

    /// The end of `chromium.log`, without the complaints about the missing D-Bus that fill it.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(":ERROR:dbus/"))
            .collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    fn gone(&self, reason: Option<&str>) -> BrowserError {
        let gone = lock(&self.gone).clone();
        let reason = reason.map(String::from).or(gone).unwrap_or_default();
        let log = self.log_tail();
        BrowserError::Gone { reason, log }
    }

    async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = session.into();
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        let written = lock(&self.writer).write_all(&bytes);
        if lock(&self.gone).is_some() || written.is_err() {
            lock(&self.pending).remove(&id);
            return Err(self.gone(None));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(message))) => Err(BrowserError::Protocol {
                method: method.into(),
                message,
            }),
            Ok(Err(_)) => Err(self.gone(None)),
            Err(_) => {
                lock(&self.pending).remove(&id);
                let (what, last) = (format!("the answer to {method}"), "no answer".into());
                Err(BrowserError::Timeout {
                    what,
                    last,
                    log: self.log_tail(),
                })
            }
        }
    }
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value, BrowserError> {
        self.call_within(method, params, COMMAND_TIMEOUT).await
    }

    async fn call_within(
        &self,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        self.conn
            .call(Some(&self.session), method, params, timeout)
            .await
    }

    /// Navigates, then waits for the load event of the new document and for network idle.
    pub async fn goto(&self, url: &str, timeout: Duration) -> Result<(), BrowserError> {
        let deadline = Instant::now() + timeout;
        // Page.navigate answers once the server responds, so it gets the same deadline.
        let started = self
            .call_within("Page.navigate", json!({"url": url}), timeout)
            .await;
        let started = started.map_err(|e| match e {
            BrowserError::Timeout { log, .. } => {
                let (what, last) = (format!("{url} to load"), "no response".into());
                BrowserError::Timeout { what, last, log }
            }
            e => e,
        });
        if started.is_err() {
            // Frees the session for the next command, which would wait for the navigation.
            let _ = self.call("Page.stopLoading", json!({})).await;
        }
        let started = started?;
        if let Some(error) = started["errorText"].as_str() {
            let (url, error) = (url.into(), error.into());
            return Err(BrowserError::Navigate { url, error });
        }
        // No loader: a same-document navigation (to a fragment), which loads nothing.
        let loader = started["loaderId"].as_str();
        let loaded = |s: &PageState| loader.is_none_or(|l| s.loaded == l);
        self.settle(&format!("{url} to load"), deadline, loaded)
            .await
    }

    /// Runs `js` (awaiting a returned promise) and returns its value as JSON (`null` for
    /// `undefined`); an uncaught exception is an error with its text.
    pub async fn eval(&self, js: &str) -> Result<Value, BrowserError> {
        let params = json!({"expression": js, "returnByValue": true, "awaitPromise": true});
        let answer = self.call("Runtime.evaluate", params).await?;
        if let Some(details) = answer.get("exceptionDetails") {
            return Err(BrowserError::Js(exception_text(details)));
        }
        let result = &answer["result"];
        let value = result
            .get("value")
            .or_else(|| result.get("unserializableValue"));
        Ok(value.cloned().unwrap_or(Value::Null))
    }

    /// Runs `js` (which submits a form, sets `location`…), then waits for the main frame to
    /// commit a new document, for its load event and for network idle. Waiting for "the next
    /// navigation" in a separate call would race with a fast server, so the two go together.
    pub async fn eval_and_wait_navigation(
        &self,
        js: &str,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let deadline = Instant::now() + timeout;
        let before = lock(&self.state).committed.clone();
        let value = match self.eval(js).await {
            Ok(value) => value,
            // The new document may replace the old one before the evaluation reports back.
            Err(BrowserError::Protocol { message, .. })
                if message.contains("navigated or closed") || message.contains("destroyed") =>
            {
                Value::Null
            }
            Err(e) => return Err(e),
        };
        let loaded = |s: &PageState| s.committed != before && s.loaded == s.committed;
        self.settle("a navigation started by the script", deadline, loaded)
            .await?;
        Ok(value)
    }

    /// Everything seen since the page was created.
    pub fn report(&self) -> PageReport {
        lock(&self.state).report.clone()
    }

    /// Waits until `loaded` holds and no request has been in flight for [`NETWORK_IDLE`].
    async fn settle(
        &self,
        what: &str,
        deadline: Instant,
        loaded: impl Fn(&PageState) -> bool,
    ) -> Result<(), BrowserError> {
        let mut events = self.conn.events.subscribe();
        loop {
            events.borrow_and_update();
            if lock(&self.conn.gone).is_some() {
                return Err(self.conn.gone(None));
            }
            let now = Instant::now();
            let (idle_at, crashed, last) = {
                let s = lock(&self.state);
                let mut in_flight: Vec<&String> = s.in_flight.values().collect();
                in_flight.sort();
                let fired = if s.loaded == s.committed { "" } else { "not " };
                let last = format!(
                    "main frame at {:?}, its load event {fired}fired, in flight: {in_flight:?}",
                    s.url
                );
                let idle = loaded(&s) && s.in_flight.is_empty();
                let idle_at = idle.then(|| s.last_activity.map_or(now, |t| t + NETWORK_IDLE));
                (idle_at, s.crashed, last)
            };
            if crashed {
                return Err(self.conn.gone(Some("the page's renderer crashed")));
            }
            if idle_at.is_some_and(|t| t <= now) {
                return Ok(());
            }
            if now >= deadline {
                let (what, log) = (what.to_string(), self.conn.log_tail());
                return Err(BrowserError::Timeout { what, last, log });
            }
            let wake = idle_at.map_or(deadline, |t| t.min(deadline));
            let _ = tokio::time::timeout_at(wake.into(), events.changed()).await;
        }
    }
}

impl PageState {
    fn apply(&mut self, method: &str, p: &Value) {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        match method {
            "Network.requestWillBeSent" => {
                let url = text(&p["request"]["url"]);
                let request = format!("{} {url}", text(&p["request"]["method"]));
                self.report.requests.push(url);
                self.in_flight.insert(text(&p["requestId"]), request);
                self.last_activity = Some(Instant::now());
            }
            "Network.responseReceived" => {
                let status = p["response"]["status"].as_u64().unwrap_or(0);
                if status >= 400 {
                    let url = text(&p["response"]["url"]);
                    self.report.failed_requests.push(format!("{url}: {status}"));
                }
            }
            "Network.loadingFinished" | "Network.loadingFailed" => {
                let id = text(&p["requestId"]);
                let request = self.in_flight.remove(&id).unwrap_or(id);
                self.last_activity = Some(Instant::now());
                if method == "Network.loadingFailed" && p["canceled"] != true {
                    let error = text(&p["errorText"]);
                    self.report
                        .failed_requests
                        .push(format!("{request}: {error}"));
                }
            }
            "Runtime.consoleAPICalled" if p["type"] == "error" || p["type"] == "assert" => {
                let args = p["args"].as_array().map(Vec::as_slice).unwrap_or_default();
                let words: Vec<String> = args.iter().map(remote_object_text).collect();
                let line = format!("console.{}: {}", text(&p["type"]), words.join(" "));
                self.report.console_errors.push(line);
            }
            "Runtime.exceptionThrown" => {
                let line = exception_text(&p["exceptionDetails"]);
                self.report.console_errors.push(line);
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => {
                let entry = &p["entry"];
                let line = format!("{} ({})", text(&entry["text"]), text(&entry["url"]));
                self.report.console_errors.push(line);
            }
            "Page.frameNavigated" if p["frame"].get("parentId").is_none() => {
                self.main_frame = text(&p["frame"]["id"]);
                self.committed = text(&p["frame"]["loaderId"]);
                self.url = text(&p["frame"]["url"]);
            }
            "Page.lifecycleEvent" if p["name"] == "load" && p["frameId"] == self.main_frame => {
                self.loaded = text(&p["loaderId"]);
            }
            "Inspector.targetCrashed" => self.crashed = true,
            _ => {}
        }
    }
}

/// A console argument as text: strings as they are, other values as JSON, objects by their
/// description.
fn remote_object_text(o: &Value) -> String {
    match o.get("value") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => o["description"].as_str().unwrap_or("?").to_string(),
    }
}

/// The text of CDP `exceptionDetails`: the error's description (message and stack) if any.
fn exception_text(details: &Value) -> String {
    let exception = &details["exception"];
    match exception["description"].as_str() {
        Some(description) => description.to_string(),
        None => format!(
            "{} {}",
            details["text"].as_str().unwrap_or("exception"),
            remote_object_text(exception)
        ),
    }
}
