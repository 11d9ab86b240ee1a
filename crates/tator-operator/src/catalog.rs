//! The release catalog: what each Tator release the operator knows is published as, and what it
//! needs from the pods around it.
//!
//! Tator tags its images `cvisionai/tator_*:<git commit>` (never `:1.5.0`), and its REST API
//! serves Django's static pages under `/static/<git commit>/` (`main/version.py`, baked into
//! the image), so the UI server must be started with that very path. `spec.version` stays the
//! release (compared as semver for upgrades and downgrades); the catalog turns it into the tag.
//!
//! Adding a release is one line in [`RELEASES`]. A release the catalog does not know runs only
//! with `spec.image.tag`, and then with the needs of [`ASSUMED`].

/// Maintenance jobs (keys of `builders::maintenance::JOBS`) of releases whose `compose/gunicorn.cron`
/// and `compose/postgis.cron` are those of 1.5.0. `move-backups` runs only with a backup bucket.
/// For 1.5.0 that is every job the API accepts; a later release with other crontabs lists its own.
pub const CRONS_1_5: &[&str] = tator_api::MAINTENANCE_JOB_NAMES;

/// What a release needs from the pods around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// PostgreSQL major of the release's database image (`containers/postgis/Dockerfile`): its
    /// pg_dump writes backups the release's pg_restore can read.
    pub postgres_major: u32,
    /// Whether the REST API or workers use Elasticsearch.
    pub elasticsearch: bool,
    /// The maintenance jobs the release has.
    pub crons: &'static [&'static str],
}

/// One release: `spec.version`, the image tag Tator published it as, and its needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    pub version: &'static str,
    pub tag: &'static str,
    pub needs: Needs,
}

const fn release(
    version: &'static str,
    tag: &'static str,
    postgres_major: u32,
    elasticsearch: bool,
    crons: &'static [&'static str],
) -> Release {
    Release {
        version,
        tag,
        needs: Needs {
            postgres_major,
            elasticsearch,
            crons,
        },
    }
}

/// Every release the operator knows, one per line: version, image tag (the release's full git
/// commit), PostgreSQL major of its tools, Elasticsearch used, maintenance jobs.
pub const RELEASES: &[Release] = &[release(
    "1.5.0",
    "dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a",
    14,
    false,
    CRONS_1_5,
)];

/// What a release the catalog does not know (run with `spec.image.tag`) is assumed to need:
/// those of 1.5.0.
pub const ASSUMED: Needs = RELEASES[0].needs;

/// The catalog's entry of a release.
pub fn lookup(version: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.version == version)
}

/// The catalog's image tag of a release, if it knows the release.
pub fn tag_of(version: &str) -> Option<&'static str> {
    lookup(version).map(|r| r.tag)
}

/// What a release needs: the catalog's entry, or [`ASSUMED`].
pub fn needs_of(version: &str) -> Needs {
    lookup(version).map_or(ASSUMED, |r| r.needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_1_5_0_is_tators_commit_without_elasticsearch() {
        let r = lookup("1.5.0").unwrap();
        assert_eq!(r.tag, "dfa5a45c8fd54e336e9de3d534f2bc684df9ce3a");
        assert_eq!(r.needs.postgres_major, 14);
        assert!(!r.needs.elasticsearch);
        assert!(!r.needs.crons.contains(&"prune-filebeat"));
        assert_eq!(ASSUMED, r.needs);
        assert!(lookup("1.5.1").is_none());
        assert_eq!(needs_of("9.9.9"), ASSUMED);
    }

    #[test]
    fn entries_are_well_formed_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for r in RELEASES {
            assert!(semver::Version::parse(r.version).is_ok(), "{}", r.version);
            assert!(seen.insert(r.version), "{} twice", r.version);
            // A full git commit: the UI's static path must equal main/version.py's Git.sha.
            assert_eq!(r.tag.len(), 40, "{}", r.version);
            assert!(
                r.tag
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
            for c in r.needs.crons {
                assert!(
                    tator_api::MAINTENANCE_JOB_NAMES.contains(c),
                    "{}: unknown job {c}",
                    r.version
                );
            }
        }
    }
}
