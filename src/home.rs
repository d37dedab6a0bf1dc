//! The node's home: identity and per-node settings, shared by every folder it syncs.
//!
//! ```text
//! HOME/node.key     32-byte iroh secret key (mode 0600): the node's EndpointId
//! HOME/port         the UDP port bound last time, reused so peers' saved addresses stay valid
//! HOME/folders      registered folders, one absolute path per line
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use iroh::SecretKey;

/// An opened home directory.
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// The home given on the command line, or the XDG data dir.
    pub fn resolve(given: Option<PathBuf>) -> Result<PathBuf> {
        match given {
            Some(p) => Ok(p),
            None => Ok(dirs::data_dir()
                .context("no --home given and no XDG data directory; set TEATIME_HOME")?
                .join("teatime")),
        }
    }

    /// Opens the home, creating it (mode 0700) if needed.
    pub fn open(dir: PathBuf) -> Result<Home> {
        fs::create_dir_all(&dir).with_context(|| format!("creating home {}", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).ok();
        Ok(Home { dir })
    }

    /// The node's secret key, created on first use.
    pub fn secret_key(&self) -> Result<SecretKey> {
        let path = self.dir.join("node.key");
        match fs::read(&path) {
            Ok(bytes) => {
                let arr: [u8; 32] = bytes
                    .as_slice()
                    .try_into()
                    .with_context(|| format!("{} is not a 32-byte key", path.display()))?;
                Ok(SecretKey::from_bytes(&arr))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = SecretKey::generate();
                write_private(&path, &key.to_bytes())?;
                Ok(key)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The port bound last time, if any.
    pub fn last_port(&self) -> Option<u16> {
        fs::read_to_string(self.dir.join("port")).ok()?.trim().parse().ok()
    }

    /// Remembers the bound port.
    pub fn set_last_port(&self, port: u16) {
        // Best effort: losing it only means peers must learn the new address again.
        let _ = fs::write(self.dir.join("port"), port.to_string());
    }

    /// The registered folders.
    pub fn folders(&self) -> Vec<PathBuf> {
        fs::read_to_string(self.dir.join("folders"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    /// Refuses a folder inside another registered folder, or holding one: the inner
    /// one's files would be synced twice, by two folders with different peers.
    pub fn check_not_nested(&self, root: &Path) -> Result<()> {
        for other in self.folders() {
            if other == root {
                continue;
            }
            if root.starts_with(&other) {
                anyhow::bail!("{} is inside the shared folder {}", root.display(), other.display());
            }
            if other.starts_with(root) {
                anyhow::bail!("{} holds the shared folder {}", root.display(), other.display());
            }
        }
        Ok(())
    }

    /// Removes a folder from the registry.
    pub fn unregister_folder(&self, folder: &Path) -> Result<bool> {
        let path = self.dir.join("folders");
        let all = self.folders();
        let kept: Vec<&PathBuf> = all.iter().filter(|f| f.as_path() != folder).collect();
        if kept.len() == all.len() {
            return Ok(false);
        }
        let text: String = kept.iter().map(|f| format!("{}\n", f.display())).collect();
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(true)
    }

    /// The home directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a folder to the registry (idempotent).
    pub fn register_folder(&self, folder: &Path) -> Result<()> {
        let path = self.dir.join("folders");
        let current = fs::read_to_string(&path).unwrap_or_default();
        let line = folder.to_string_lossy();
        if current.lines().any(|l| l == line) {
            return Ok(());
        }
        let mut f = fs::OpenOptions::new().create(true).append(true).open(&path)?;
        writeln!(f, "{line}")?;
        Ok(())
    }
}

/// The node's display name: `TEATIME_NAME`, else the host name.
pub fn default_name() -> String {
    fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "teatime".to_string())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}
