//! `testbed container-init PLAN`: the last step before a container's program runs.
//!
//! The process node starts each container as
//! `setpriv --pdeathsig KILL nsenter --net=<pod netns> unshare --mount --pid --fork --kill-child
//! testbed container-init <plan.json>`, so this runs as PID 1 of a fresh PID namespace, in a
//! private mount namespace, inside the pod's network namespace. It builds the container's root
//! file system (an overlay of the host's `/` with the writes kept in memory, a fresh `/proc`,
//! `/tmp` and `/dev/shm`, then the image folders and volumes bound at their container paths),
//! changes root, takes the container's user and groups and `exec`s the program with exactly the
//! environment in the plan. With `--enter` (probes and `exec`), the namespaces are already the
//! container's (nsenter), so it only changes root and user before `exec`.

use std::{
    ffi::CString,
    os::fd::AsFd,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    unistd::{Gid, Uid, chdir, chroot, execve, setgid, setgroups, setuid},
};
use serde::{Deserialize, Serialize};

/// What a container needs at start; written by the process node, read by `container-init`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ContainerPlan {
    /// Folder of this container's run: the overlay's scratch and the new root live below it.
    pub state_dir: PathBuf,
    /// Mounts in order, after the overlay root and the standard file systems.
    pub mounts: Vec<MountSpec>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory in the container (created when missing, as container runtimes do).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// `readOnlyRootFilesystem`: only volumes (and `/dev/shm`) are writable.
    #[serde(default)]
    pub read_only_root: bool,
}

/// One mount at a container path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MountSpec {
    /// Host path (a folder or a file) bound at `target`.
    pub source: PathBuf,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

impl ContainerPlan {
    pub fn root(&self) -> PathBuf {
        self.state_dir.join("root")
    }
}

fn err(what: impl std::fmt::Display, e: impl std::fmt::Display) -> String {
    format!("container-init: {what}: {e}")
}

/// Runs the plan; returns only on failure (a message for the container's log).
pub fn run(plan_file: &Path, enter: bool) -> String {
    let plan: ContainerPlan = match std::fs::read(plan_file)
        .map_err(|e| err(plan_file.display(), e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| err(plan_file.display(), e)))
    {
        Ok(p) => p,
        Err(e) => return e,
    };
    let result = if enter { Ok(()) } else { build_root(&plan) };
    match result.and_then(|()| switch_and_exec(&plan)) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), String> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| {
        err(
            format!("binding {} at {}", source.display(), target.display()),
            e,
        )
    })
}

fn mount_fs(fstype: &str, target: &Path, data: &str) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| err(target.display(), e))?;
    mount(
        Some(fstype),
        target,
        Some(fstype),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(|e| err(format!("mounting {fstype} at {}", target.display()), e))
}

/// Where `path` (absolute, in the container) is below `root`, following symbolic links the
/// way the container would see them (an absolute link is relative to `root`, as after chroot):
/// `/var/run` links to `/run` on Debian, and must not lead to the host's `/run`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    let mut out = root.to_path_buf();
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(str::to_string)
        .collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        match c.as_str() {
            "." => continue,
            ".." => {
                if out != root {
                    out.pop();
                }
                continue;
            }
            _ => {}
        }
        let next = out.join(&c);
        match std::fs::read_link(&next) {
            Ok(target) if links < 40 => {
                links += 1;
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    out = root.to_path_buf();
                }
                pending.extend(
                    t.split('/')
                        .filter(|x| !x.is_empty())
                        .rev()
                        .map(str::to_string),
                );
            }
            _ => out = next,
        }
    }
    out
}

fn build_root(plan: &ContainerPlan) -> Result<(), String> {
    // Nothing mounted here may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| err("making / private", e))?;
    let layers = plan.state_dir.join("layers");
    mount_fs("tmpfs", &layers, "mode=0755,size=2g")?;
    for d in ["upper", "work"] {
        std::fs::create_dir_all(layers.join(d)).map_err(|e| err(d, e))?;
    }
    let root = plan.root();
    std::fs::create_dir_all(&root).map_err(|e| err(root.display(), e))?;
    let options = format!(
        "lowerdir=/,upperdir={},workdir={}",
        layers.join("upper").display(),
        layers.join("work").display()
    );
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| err("mounting the overlay root", e))?;
    mount_fs("proc", &root.join("proc"), "")?;
    bind(Path::new("/dev"), &root.join("dev"), true)?;
    bind(Path::new("/sys"), &root.join("sys"), true)?;
    mount_fs("tmpfs", &root.join("dev/shm"), "mode=1777,size=64m")?;
    if !plan.read_only_root {
        // The image's own /tmp and /run start empty, as in a container.
        mount_fs("tmpfs", &root.join("tmp"), "mode=1777,size=2g")?;
        mount_fs("tmpfs", &root.join("run"), "mode=0755,size=64m")?;
    }
    for m in &plan.mounts {
        let target = under(&root, &m.target);
        let is_dir = m.source.is_dir();
        if is_dir {
            std::fs::create_dir_all(&target).map_err(|e| err(target.display(), e))?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|e| err(parent.display(), e))?;
            }
            if !target.exists() {
                std::fs::write(&target, b"").map_err(|e| err(target.display(), e))?;
            }
        }
        bind(&m.source, &target, true)?;
        if m.read_only {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err(format!("making {} read-only", m.target), e))?;
        }
        // The container's user must be able to walk to its mounts (the host keeps, say, the
        // image cache below a private home folder): open the folders above, in the overlay only.
        let mut dir = target.parent();
        while let Some(d) = dir {
            if d == root {
                break;
            }
            if let Ok(meta) = std::fs::metadata(d) {
                let mode = meta.permissions().mode();
                if mode & 0o001 == 0 {
                    let _ =
                        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011));
                }
            }
            dir = d.parent();
        }
    }
    if plan.read_only_root {
        mount(
            None::<&str>,
            &root,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| err("making the root read-only", e))?;
    }
    Ok(())
}

fn switch_and_exec(plan: &ContainerPlan) -> Result<std::convert::Infallible, String> {
    let root = plan.root();
    chroot(&root).map_err(|e| err("chroot", e))?;
    let cwd = if plan.cwd.is_empty() { "/" } else { &plan.cwd };
    let _ = std::fs::create_dir_all(cwd);
    chdir(cwd).map_err(|e| err(format!("chdir {cwd}"), e))?;
    // The container's output pipes belong to its user, as runc arranges: a program may open
    // /dev/stdout or /dev/stderr again (NGINX does), which checks the pipe's owner.
    for fd in [std::io::stdout().as_fd(), std::io::stderr().as_fd()] {
        let is_pipe = nix::sys::stat::fstat(fd)
            .map(|st| st.st_mode & S_IFMT == S_IFIFO)
            .unwrap_or(false);
        if is_pipe {
            let _ = nix::unistd::fchown(
                fd,
                Some(Uid::from_raw(plan.uid)),
                Some(Gid::from_raw(plan.gid)),
            );
        }
    }
    let groups: Vec<Gid> = plan.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    setgroups(&groups).map_err(|e| err("setgroups", e))?;
    setgid(Gid::from_raw(plan.gid)).map_err(|e| err("setgid", e))?;
    setuid(Uid::from_raw(plan.uid)).map_err(|e| err("setuid", e))?;
    // A change of user clears the parent-death signal that `unshare --kill-child` set: set it
    // again, so the container (and with it its PID namespace) dies with its `unshare`.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| err("prctl(PR_SET_PDEATHSIG)", e))?;
    let Some(program) = plan.argv.first() else {
        return Err(err("the plan", "no command"));
    };
    let path = plan
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let resolved = resolve(program, path, cwd)
        .ok_or_else(|| err(format!("exec {program}"), "not found in PATH"))?;
    let c = |s: &str| CString::new(s).map_err(|e| err("argument with a NUL byte", e));
    let argv = plan
        .argv
        .iter()
        .map(|a| c(a))
        .collect::<Result<Vec<_>, _>>()?;
    let env = plan
        .env
        .iter()
        .map(|(k, v)| c(&format!("{k}={v}")))
        .collect::<Result<Vec<_>, _>>()?;
    let file = c(&resolved.display().to_string())?;
    execve(&file, &argv, &env).map_err(|e| err(format!("exec {}", resolved.display()), e))
}

/// The file-type bits of a mode, and their value for a pipe.
const S_IFMT: u32 = 0o170000;
const S_IFIFO: u32 = 0o010000;

/// The program a container runtime would start for `program` with the container's `PATH`.
pub fn resolve(program: &str, path: &str, cwd: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = if program.starts_with('/') {
            PathBuf::from(program)
        } else {
            Path::new(cwd).join(program)
        };
        return Some(p);
    }
    path.split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_through_the_container_path() {
        assert_eq!(
            resolve("sh", "/nonexistent:/bin", "/"),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(resolve("nope-not-here", "/bin", "/"), None);
        assert_eq!(
            resolve("./x", "/bin", "/work"),
            Some(PathBuf::from("/work/./x"))
        );
    }

    #[test]
    fn container_paths_stay_below_the_root() {
        assert_eq!(
            under(Path::new("/r"), "/tator_online/main"),
            PathBuf::from("/r/tator_online/main")
        );
    }
}
