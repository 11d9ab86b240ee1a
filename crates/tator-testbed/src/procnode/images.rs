//! The image table: how each container image the operator uses is provided on this machine.
//!
//! This is the only hand-written part of the end-to-end bed. A pod's command, arguments,
//! environment, user, working directory and volumes all come from the API server; an image only
//! says which host folders stand for the image's own files (bound read-only at their paths in the
//! image), its default `PATH`, working directory, entrypoint and command, and the users its
//! `/etc/passwd` has. Folders come from `tests/tools/e2e-images.sh` (Tator's source, venvs, the
//! UI's npm packages), the test-bed tools (`weed`) and Debian's packages (PostgreSQL 15 with
//! PostGIS and pgvector, Redis, NGINX). See docs/testing.md, "End-to-end bed".

use std::path::{Path, PathBuf};

const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where the table finds its folders.
#[derive(Clone, Debug)]
pub struct ImageSources {
    /// Output of `tests/tools/e2e-images.sh` (`--print-dir`).
    pub e2e_dir: PathBuf,
    /// The test-bed tools folder (`weed`).
    pub tools_bin: PathBuf,
    /// `tests/e2e/images` of this repository (small entrypoint scripts).
    pub scripts_dir: PathBuf,
    /// The tator-operator binary standing for the operator's image (`--operator-bin`).
    pub operator_bin: Option<PathBuf>,
}

/// One image as provided here.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Image {
    /// Host path → path in the image, bound read-only.
    pub files: Vec<(PathBuf, String)>,
    /// The image's environment (`PATH` and friends); the pod's env comes after it.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// Extra `/etc/passwd` lines (`name:x:uid:gid::home:shell`) the image has.
    pub passwd: Vec<String>,
}

/// The repository part of an image reference: no registry host, no tag or digest.
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match no_digest[last_slash..].rfind(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    repo.rsplit('/').next().unwrap_or(repo)
}

impl ImageSources {
    /// The image as provided here, or `None` when the table does not know it (the container
    /// then waits with reason `ErrImagePull`, as it would for an image that does not exist).
    pub fn image(&self, reference: &str) -> Option<Image> {
        let e2e = |p: &str| self.e2e_dir.join(p);
        let path_with = |dir: &Path| format!("{}:{SYSTEM_PATH}", dir.display());
        let image = match repository(reference) {
            // Tator's REST API, workers, migrations and crons: Tator's source at /tator_online
            // and its pinned requirements (the image installs them into the system Python).
            "tator_online" => Image {
                files: [(e2e("tator_online"), "/tator_online".to_string())]
                    .into_iter()
                    .chain(venv(&e2e("tator-venv")))
                    .collect(),
                env: vec![
                    ("PATH".into(), path_with(&e2e("tator-venv/bin"))),
                    ("PYTHONUNBUFFERED".into(), "1".into()),
                ],
                workdir: "/tator_online".into(),
                ..Default::default()
            },
            // Tator's UI server: ui/ and tator-js under /tator_online, Node from Debian.
            "tator_ui" => Image {
                files: vec![(e2e("tator_ui"), "/tator_online".into())],
                env: vec![("PATH".into(), SYSTEM_PATH.into())],
                workdir: "/tator_online/ui".into(),
                ..Default::default()
            },
            // The transcode service (tator-transcode): its source at the image's WORKDIR and
            // its venv, started with `uvicorn main:app` as the image's CMD says.
            "tator_transcode" => Image {
                files: [(e2e("tator-transcode"), "/usr/src/app".to_string())]
                    .into_iter()
                    .chain(venv(&e2e("tator-transcode/venv")))
                    .collect(),
                env: vec![
                    ("PATH".into(), path_with(&e2e("tator-transcode/venv/bin"))),
                    ("PYTHONUNBUFFERED".into(), "1".into()),
                ],
                workdir: "/usr/src/app".into(),
                cmd: ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8080"]
                    .map(String::from)
                    .to_vec(),
                ..Default::default()
            },
            // The transcode worker (tator_client): Tator's scripts/transcoder at /scripts, a
            // venv with the image's requirements and tator-py, Bento4's mp4dump at
            // /opt/cvision/bin (where the image's base has it), ffmpeg from Debian.
            "tator_client" => Image {
                files: [
                    (e2e("tator-client/scripts"), "/scripts".to_string()),
                    (e2e("tator-client/bin"), "/opt/cvision/bin".to_string()),
                ]
                .into_iter()
                .chain(venv(&e2e("tator-client-venv")))
                .collect(),
                env: vec![(
                    "PATH".into(),
                    format!(
                        "/opt/cvision/bin:{}",
                        path_with(&e2e("tator-client-venv/bin"))
                    ),
                )],
                workdir: "/scripts".into(),
                ..Default::default()
            },
            // PostgreSQL with PostGIS and pgvector (Debian's PostgreSQL 15, pgvector built by
            // e2e-images.sh) behind the postgres image's entrypoint.
            "tator_postgis" | "postgres" | "postgis" => Image {
                files: [(
                    self.scripts_dir.join("postgres-entrypoint.sh"),
                    "/usr/local/bin/docker-entrypoint.sh".to_string(),
                )]
                .into_iter()
                .chain(staged_files(&e2e("pgvector")))
                .collect(),
                env: vec![
                    (
                        "PATH".into(),
                        format!("/usr/lib/postgresql/15/bin:{SYSTEM_PATH}"),
                    ),
                    ("PGDATA".into(), "/var/lib/postgresql/data".into()),
                ],
                workdir: "/".into(),
                entrypoint: vec!["docker-entrypoint.sh".into()],
                cmd: vec!["postgres".into()],
                passwd: vec!["postgres:x:999:999::/var/lib/postgresql:/bin/sh".into()],
            },
            // Redis from Debian.
            "redis" => Image {
                env: vec![("PATH".into(), SYSTEM_PATH.into())],
                workdir: "/data".into(),
                cmd: vec!["redis-server".into()],
                passwd: vec!["redis:x:999:1000::/data:/bin/sh".into()],
                ..Default::default()
            },
            // NGINX from Debian (the generated nginx.conf is mounted by the pod).
            "nginx" | "nginx-unprivileged" => Image {
                env: vec![("PATH".into(), SYSTEM_PATH.into())],
                workdir: "/".into(),
                cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                passwd: vec!["nginx:x:101:101::/nonexistent:/bin/false".into()],
                ..Default::default()
            },
            // SeaweedFS: `weed` built from its Go module by tests/tools/build.sh.
            "seaweedfs" => Image {
                files: vec![(self.tools_bin.join("weed"), "/usr/bin/weed".into())],
                env: vec![("PATH".into(), SYSTEM_PATH.into())],
                workdir: "/".into(),
                entrypoint: vec!["weed".into()],
                ..Default::default()
            },
            // The operator (Dockerfile: distroless, the binary at /usr/local/bin, uid 65532),
            // when the cluster was given a binary for it.
            "tator-operator" => Image {
                files: vec![(
                    self.operator_bin.clone()?,
                    "/usr/local/bin/tator-operator".into(),
                )],
                env: vec![("PATH".into(), SYSTEM_PATH.into())],
                workdir: "/".into(),
                entrypoint: vec!["/usr/local/bin/tator-operator".into()],
                cmd: vec!["run".into()],
                passwd: vec!["nonroot:x:65532:65532::/home/nonroot:/sbin/nologin".into()],
            },
            _ => return None,
        };
        Some(image)
    }
}

/// Every file of a staged install (`make install DESTDIR=<dir>`), at its path below `/`: how
/// the tator_postgis image's pgvector reaches its containers and no other process.
fn staged_files(dir: &Path) -> Vec<(PathBuf, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push((p.clone(), format!("/{}", rel.display())));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A venv and the Python installation it was made from, bound at their own paths (a venv's
/// scripts name its interpreter by absolute path).
fn venv(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = vec![(dir.to_path_buf(), dir.display().to_string())];
    let home = std::fs::read_to_string(dir.join("pyvenv.cfg"))
        .ok()
        .and_then(|cfg| {
            cfg.lines()
                .find_map(|l| l.strip_prefix("home = ").map(|h| PathBuf::from(h.trim())))
        });
    // `home` is the interpreter's bin folder; its parent is the installation's prefix.
    if let Some(prefix) = home.as_deref().and_then(Path::parent)
        && !prefix.starts_with("/usr")
    {
        out.push((prefix.to_path_buf(), prefix.display().to_string()));
    }
    out
}

/// The program and arguments Kubernetes runs: `command` replaces the entrypoint, `args` the
/// image's command; with `command` and no `args`, the image's command is dropped.
pub fn argv(image: &Image, command: Option<&[String]>, args: Option<&[String]>) -> Vec<String> {
    let (entry, default_args): (&[String], &[String]) = match command {
        Some(c) => (c, &[]),
        None => (&image.entrypoint, &image.cmd),
    };
    let mut out = entry.to_vec();
    out.extend_from_slice(args.unwrap_or(default_args));
    out
}

impl ImageSources {
    /// The folders of this checkout: `TATOR_E2E_DIR` or `tests/tools/e2e-images.sh --print-dir`,
    /// the test-bed tools, and `tests/e2e/images`. Fails with the command to run when the
    /// images were not built.
    pub fn locate(binaries: &crate::Binaries) -> Result<Self, crate::Error> {
        let root = crate::support::workspace_root();
        let e2e_dir = match std::env::var_os("TATOR_E2E_DIR") {
            Some(d) => PathBuf::from(d),
            None => {
                let script = root.join("tests/tools/e2e-images.sh");
                let out = std::process::Command::new("bash")
                    .arg(&script)
                    .arg("--print-dir")
                    .output()
                    .map_err(|source| crate::Error::Spawn {
                        process: script.display().to_string(),
                        source,
                    })?;
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        if !e2e_dir.join(".complete").is_file() {
            return Err(crate::Error::Binaries(format!(
                "the end-to-end images are not built in {}; run `make e2e-images` (tests/tools/e2e-images.sh) first",
                e2e_dir.display()
            )));
        }
        Ok(Self {
            e2e_dir,
            tools_bin: binaries.bin_dir.clone(),
            scripts_dir: root.join("tests/e2e/images"),
            operator_bin: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_drops_registry_tag_and_digest() {
        assert_eq!(
            repository("cvisionai/tator_online:dfa5a45c"),
            "tator_online"
        );
        assert_eq!(
            repository("registry.example.com:5000/a/tator_ui:1"),
            "tator_ui"
        );
        assert_eq!(repository("redis:7.4-alpine"), "redis");
        assert_eq!(repository("nginx@sha256:abc"), "nginx");
        assert_eq!(
            repository("nginxinc/nginx-unprivileged"),
            "nginx-unprivileged"
        );
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = Image {
            entrypoint: vec!["docker-entrypoint.sh".into()],
            cmd: vec!["postgres".into()],
            ..Default::default()
        };
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            argv(&img, None, None),
            s(&["docker-entrypoint.sh", "postgres"])
        );
        assert_eq!(
            argv(&img, None, Some(&s(&["postgres", "-c", "x=1"]))),
            s(&["docker-entrypoint.sh", "postgres", "-c", "x=1"])
        );
        assert_eq!(argv(&img, Some(&s(&["sh"])), None), s(&["sh"]));
        assert_eq!(
            argv(&img, Some(&s(&["sh"])), Some(&s(&["-c", "true"]))),
            s(&["sh", "-c", "true"])
        );
    }

    #[test]
    fn unknown_images_are_not_provided() {
        let s = ImageSources {
            e2e_dir: "/e".into(),
            tools_bin: "/t".into(),
            scripts_dir: "/s".into(),
            operator_bin: None,
        };
        assert!(
            s.image("docker.elastic.co/elasticsearch/elasticsearch:8")
                .is_none()
        );
        assert!(s.image("cvisionai/tator_online:abc").is_some());
        // The transcode service and worker: their folders at the images' paths.
        let service = s.image("cvisionai/tator_transcode:abc").unwrap();
        assert_eq!(
            service.files[0],
            ("/e/tator-transcode".into(), "/usr/src/app".into())
        );
        assert_eq!(service.workdir, "/usr/src/app");
        let worker = s.image("cvisionai/tator_client:abc").unwrap();
        assert_eq!(
            worker.files[0],
            ("/e/tator-client/scripts".into(), "/scripts".into())
        );
        assert!(
            worker.env[0]
                .1
                .starts_with("/opt/cvision/bin:/e/tator-client-venv/bin:")
        );
        // The operator's image exists only when a binary stands for it.
        assert!(s.image("cvisionai/tator-operator:0.1.0").is_none());
        let with = ImageSources {
            operator_bin: Some("/bin/op".into()),
            ..s
        };
        let op = with.image("cvisionai/tator-operator:0.1.0").unwrap();
        assert_eq!(op.files[0].1, "/usr/local/bin/tator-operator");
    }
}
