//! The node's config file, `HOME/config.toml`: defaults for every folder this node runs.
//! Command-line flags (and their environment variables) win over it.
//!
//! ```toml
//! network = "internet"      # internet | lan | loopback
//! relay = "https://relay.example.org"
//! relay_ca = "/etc/teatime/relay-ca.pem"   # trust a relay's private CA (or self-signed cert)
//! debounce_ms = 20          # quiet time after a file event before looking
//! rescan_secs = 3600        # full rescan behind the watcher (0: never)
//! rest_secs = 30            # quiet time before a folder drops its state from memory (0: never)
//! text_limit = 8388608      # bytes; for folders that do not set `text-limit` themselves
//! max_doc_bytes = 268435456 # bytes a peer may send for one document at once, inflated
//! min_disk_free = "1%"      # bytes or N%; for folders that do not set `min-disk-free` themselves
//! ```

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use iroh::RelayUrl;
use serde::Deserialize;

use crate::net::endpoint::NetworkMode;
use crate::replica::MinFree;

/// The file's name in the home.
pub const FILE: &str = "config.toml";

/// What the config file may set. Unknown keys are refused, so a typo is not silently
/// ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default network mode.
    pub network: Option<NetworkMode>,
    /// Default relay.
    pub relay: Option<RelayUrl>,
    /// PEM certificates to trust for the relay's TLS (a private CA).
    pub relay_ca: Option<std::path::PathBuf>,
    /// Watcher debounce, ms.
    pub debounce_ms: Option<u64>,
    /// Periodic full rescan, s (0: never).
    pub rescan_secs: Option<u64>,
    /// Quiet time before a folder's replica rests, s (0: never; see `replica/rest.rs`).
    pub rest_secs: Option<u64>,
    /// Default text size limit, bytes.
    pub text_limit: Option<u64>,
    /// Cap on one document's payload from a peer, inflated, bytes (see [`crate::intake`]).
    pub max_doc_bytes: Option<usize>,
    /// Default free space below which nothing is written: bytes, or `N%` of the disk.
    pub min_disk_free: Option<String>,
}

/// How a folder's replica paces its work.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Quiet time after the last watcher hint before scanning.
    pub debounce: Duration,
    /// Full rescan interval (`None`: never).
    pub rescan: Option<Duration>,
    /// Quiet time before the replica drops what grows with the folder (`None`: never).
    pub rest: Option<Duration>,
    /// Text size limit for folders that do not set one.
    pub text_limit: u64,
    /// Caps on what peers send before it is decoded.
    pub intake: crate::intake::Limits,
    /// Free space kept, for folders that do not set their own.
    pub min_disk_free: MinFree,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            debounce: Duration::from_millis(20),
            rescan: Some(Duration::from_secs(3600)),
            rest: Some(crate::replica::REST_AFTER),
            text_limit: crate::scan::DEFAULT_TEXT_LIMIT_BYTES,
            intake: crate::intake::Limits::default(),
            min_disk_free: MinFree::default(),
        }
    }
}

impl Config {
    /// Reads `HOME/config.toml` (absent: all defaults).
    pub fn load(home: &Path) -> Result<Config> {
        let path = home.join(FILE);
        let config: Config = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Config::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if let Some(v) = config.min_disk_free.as_deref().filter(|v| MinFree::parse(v).is_none()) {
            anyhow::bail!(
                "reading {}: min_disk_free is a number of bytes or a percentage (\"1%\"), not {v:?}",
                path.display()
            );
        }
        Ok(config)
    }

    /// The pacing it asks for.
    pub fn tuning(&self) -> Tuning {
        let d = Tuning::default();
        Tuning {
            debounce: self.debounce_ms.map_or(d.debounce, Duration::from_millis),
            rescan: match self.rescan_secs {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
                None => d.rescan,
            },
            rest: match self.rest_secs {
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s)),
                None => d.rest,
            },
            text_limit: self.text_limit.unwrap_or(d.text_limit),
            intake: crate::intake::Limits {
                max_bytes: self.max_doc_bytes.unwrap_or(d.intake.max_bytes),
                ..d.intake
            },
            min_disk_free: self.min_disk_free.as_deref().and_then(MinFree::parse).unwrap_or(d.min_disk_free),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_sets_defaults_and_typos_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Config::load(dir.path()).unwrap().network.is_none());
        std::fs::write(
            dir.path().join(FILE),
            "network = \"lan\"\ndebounce_ms = 50\nrescan_secs = 0\nmax_doc_bytes = 1024\nrest_secs = 2\n",
        )
        .unwrap();
        let c = Config::load(dir.path()).unwrap();
        assert_eq!(c.network, Some(NetworkMode::Lan));
        let t = c.tuning();
        assert_eq!((t.debounce, t.rescan, t.intake.max_bytes), (Duration::from_millis(50), None, 1024));
        assert_eq!(t.rest, Some(Duration::from_secs(2)));
        assert_eq!(t.min_disk_free, MinFree::Percent(1));
        std::fs::write(dir.path().join(FILE), "min_disk_free = \"65536\"\n").unwrap();
        assert_eq!(Config::load(dir.path()).unwrap().tuning().min_disk_free, MinFree::Bytes(65536));
        std::fs::write(dir.path().join(FILE), "min_disk_free = \"lots\"\n").unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("min_disk_free"), "{err}");
        std::fs::write(dir.path().join(FILE), "debounce = 50\n").unwrap();
        let err = format!("{:#}", Config::load(dir.path()).unwrap_err());
        assert!(err.contains("debounce"), "{err}");
    }
}
