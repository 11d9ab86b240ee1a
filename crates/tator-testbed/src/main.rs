//! `testbed`: run the local control plane for people and tests.
//!
//! - `testbed up --dir D` starts a cluster in the background (or reuses the running one) and
//!   prints `export KUBECONFIG=…` and `export PATH=…` lines to paste or `eval`.
//! - `testbed down --dir D` stops it and waits until every process has exited.
//! - `testbed serve --dir D` runs a cluster in the foreground until SIGINT/SIGTERM (or, with
//!   `--watch-stdin`, until its stdin closes: how tests tie a cluster to their own life; a line
//!   `restart <process>...` on stdin restarts control-plane processes, for fault tests).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use nix::{sys::signal::Signal, unistd::Pid};
use std::os::unix::process::CommandExt;
use tator_testbed::{Binaries, Cluster, ClusterOptions, support::READY_FILE};
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "A local Kubernetes control plane for Tator operator tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a cluster in the foreground until interrupted.
    Serve {
        #[arg(long)]
        dir: PathBuf,
        /// Also stop when standard input closes.
        #[arg(long)]
        watch_stdin: bool,
        /// Remove the folder after stopping (for throw-away test clusters).
        #[arg(long)]
        remove_dir: bool,
        /// Run pods for real on a process node (needs `tests/tools/e2e-images.sh`) instead of
        /// kwok's fake nodes.
        #[arg(long)]
        process_node: bool,
        /// With --process-node: the tator-operator binary that stands for the operator's image
        /// (for the operator installed in the cluster by its chart).
        #[arg(long, requires = "process_node")]
        operator_bin: Option<PathBuf>,
    },
    /// Start a cluster in the background (or reuse a running one) and print export lines.
    Up {
        #[arg(long)]
        dir: PathBuf,
        /// Run pods for real on a process node (see `serve --process-node`).
        #[arg(long)]
        process_node: bool,
        /// See `serve --operator-bin`.
        #[arg(long, requires = "process_node")]
        operator_bin: Option<PathBuf>,
    },
    /// Internal: the last step of starting a process-node container (see procnode::init).
    #[command(hide = true)]
    ContainerInit {
        /// Enter a running container (probes) instead of building its root.
        #[arg(long)]
        enter: bool,
        plan: PathBuf,
    },
    /// Stop the cluster started by `up`.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    // Runs before anything else: a single-threaded process that becomes the container.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("container-init") {
        let enter = args.iter().any(|a| a == "--enter");
        let plan = args.last().map(PathBuf::from).unwrap_or_default();
        eprintln!("{}", tator_testbed::procnode::init::run(&plan, enter));
        return ExitCode::from(127);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve {
            dir,
            watch_stdin,
            remove_dir,
            process_node,
            operator_bin,
        } => serve(
            &dir,
            watch_stdin,
            remove_dir,
            process_node,
            operator_bin.as_deref(),
        ),
        Cmd::Up {
            dir,
            process_node,
            operator_bin,
        } => up(&dir, process_node, operator_bin.as_deref()),
        Cmd::ContainerInit { .. } => Ok(()),
        Cmd::Down { dir } => down(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(
    dir: &Path,
    watch_stdin: bool,
    remove_dir: bool,
    process_node: bool,
    operator_bin: Option<&Path>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join(READY_FILE));
        // Every start is a fresh cluster: no state from an earlier run. That includes the
        // process node's volumes: a database left in a claim folder by an earlier cluster would
        // meet the new cluster's freshly generated password and refuse it.
        let _ = std::fs::remove_dir_all(dir.join("etcd"));
        let _ = std::fs::remove_dir_all(dir.join("procnode"));
        std::fs::write(dir.join("pid"), std::process::id().to_string())?;
        let binaries = Binaries::locate()?;
        let mut options = ClusterOptions::new(dir);
        if process_node {
            options.nodes = Vec::new();
            let mut images = tator_testbed::procnode::ImageSources::locate(&binaries)?;
            images.operator_bin = operator_bin.map(Path::to_path_buf);
            options.process_node = Some(images);
        }
        let mut cluster = match Cluster::start(options, binaries.clone()).await {
            Ok(c) => c,
            Err(e) => {
                // Every process already stopped with the failed start: leave no pid behind.
                let _ = std::fs::remove_file(dir.join("pid"));
                return Err(e.into());
            }
        };
        std::fs::write(dir.join("bin-dir"), binaries.bin_dir.display().to_string())?;
        std::fs::write(dir.join(READY_FILE), &cluster.server)?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // With --watch-stdin, standard input carries commands, one per line: `restart <process>...`
        // restarts control-plane processes (fault tests), `halt <process>...` stops them until
        // `resume`; each writes the number of commands done to the file `restarts`. Anything
        // else, or end of input, stops the cluster.
        let (tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
        if watch_stdin {
            std::thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match std::io::stdin().read_line(&mut line) {
                        Ok(0) | Err(_) => {
                            let _ = tx.send(None);
                            return;
                        }
                        Ok(_) => {
                            if tx.send(Some(line.trim().to_string())).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
        let mut restarts = 0u32;
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { info!("SIGINT: stopping"); break; }
                cmd = commands.recv(), if watch_stdin => match cmd.flatten() {
                    Some(c) if c.starts_with("restart ") => {
                        let names: Vec<&str> = c.split_whitespace().skip(1).collect();
                        if let Err(e) = cluster.restart(&names).await {
                            tracing::error!(error = %e, "restart failed: stopping");
                            break;
                        }
                        restarts += 1;
                        std::fs::write(dir.join("restarts"), restarts.to_string())?;
                    }
                    Some(c) if c.starts_with("halt ") => {
                        let names: Vec<&str> = c.split_whitespace().skip(1).collect();
                        cluster.halt(&names);
                        restarts += 1;
                        std::fs::write(dir.join("restarts"), restarts.to_string())?;
                    }
                    Some(c) if c == "resume" => {
                        if let Err(e) = cluster.resume().await {
                            tracing::error!(error = %e, "resume failed: stopping");
                            break;
                        }
                        restarts += 1;
                        std::fs::write(dir.join("restarts"), restarts.to_string())?;
                    }
                    _ => { info!("stdin closed: stopping"); break; }
                },
            }
        }
        let _ = std::fs::remove_file(dir.join(READY_FILE));
        cluster.stop();
        let _ = std::fs::remove_file(dir.join("pid"));
        info!("every process stopped");
        if remove_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    })
}

fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    nix::sys::signal::kill(Pid::from_raw(pid), None).ok()?;
    Some(pid)
}

fn print_exports(dir: &Path) -> anyhow::Result<()> {
    let bin_dir = std::fs::read_to_string(dir.join("bin-dir"))?;
    let dir = std::fs::canonicalize(dir)?;
    println!("export KUBECONFIG={}", dir.join("kubeconfig").display());
    println!("export PATH={}:$PATH", bin_dir.trim());
    Ok(())
}

fn up(dir: &Path, process_node: bool, operator_bin: Option<&Path>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if running_pid(dir).is_some() && dir.join(READY_FILE).is_file() {
        eprintln!(
            "testbed: reusing the cluster already running in {}",
            dir.display()
        );
        return print_exports(dir);
    }
    let log = dir.join("testbed.log");
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--dir")
        .arg(dir)
        .args(process_node.then_some("--process-node"))
        .args(
            operator_bin
                .map(|b| vec![std::ffi::OsStr::new("--operator-bin"), b.as_os_str()])
                .unwrap_or_default(),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("starting the cluster supervisor")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !dir.join(READY_FILE).is_file() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "the cluster supervisor exited ({status}); see {}:\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not become ready in 120 s; see {}",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "testbed: cluster ready in {:.1} s (log: {})",
        started.elapsed().as_secs_f64(),
        log.display()
    );
    print_exports(dir)
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(pid) = running_pid(dir) else {
        eprintln!("testbed: no cluster running in {}", dir.display());
        return Ok(());
    };
    let pid = Pid::from_raw(pid);
    nix::sys::signal::kill(pid, Signal::SIGTERM)?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while nix::sys::signal::kill(pid, None).is_ok() {
        if Instant::now() > deadline {
            bail!("the cluster supervisor (pid {pid}) did not stop within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("testbed: cluster in {} stopped", dir.display());
    Ok(())
}
