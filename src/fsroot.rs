//! The folder as a directory handle: every write teatime makes inside the folder (the
//! materialisation in [`crate::apply`], binary content in [`crate::blob`], reverts, stale
//! temp files) happens relative to a file descriptor of the folder root, opened once.
//!
//! The kernel resolves every path beneath it with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: no absolute path, no `..` out of the
//! folder, no symlink anywhere on the way. A directory swapped for a symlink between a
//! check and a write (T9) makes the operation fail; it never escapes. There is no fallback
//! to path-based calls: on a kernel without openat2 (before Linux 5.6) [`Root::open`]
//! fails with [`OpenRootError::NoOpenat2`].
//!
//! [`Root::dir`] opens a directory beneath the root as a [`Dir`]; a `Dir`'s operations take
//! one name (never a path) and act on that entry itself, never through a final symlink
//! (`O_NOFOLLOW`, and rename and unlink act on a link, not its target).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;
use teatime_crdt::path::TEMP_PREFIX;

/// How every path beneath the root is resolved.
const BENEATH: ResolveFlags =
    ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Why the folder root could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenRootError {
    /// The kernel has no openat2, and teatime does not write through path-based calls.
    #[error(
        "this kernel lacks openat2 (Linux 5.6 or later is needed): teatime refuses to write to the folder without it"
    )]
    NoOpenat2,
    /// The folder itself could not be opened.
    #[error("opening the folder {0}: {1}")]
    Open(PathBuf, #[source] io::Error),
}

/// The folder root, pinned by a directory descriptor (cheap to clone).
#[derive(Clone)]
pub struct Root {
    fd: Arc<OwnedFd>,
    path: PathBuf,
}

/// A directory beneath the root, pinned by a descriptor.
pub struct Dir {
    fd: OwnedFd,
}

impl Root {
    /// Opens the folder at `path` (a root that is itself a symlink is resolved here, once)
    /// and checks that the kernel can resolve paths beneath it.
    pub fn open(path: &Path) -> Result<Root, OpenRootError> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(path, flags, Mode::empty())
            .map_err(|e| OpenRootError::Open(path.to_path_buf(), e.into()))?;
        match rustix::fs::openat2(&fd, ".", flags, Mode::empty(), BENEATH) {
            Ok(_) => Ok(Root { fd: Arc::new(fd), path: path.to_path_buf() }),
            Err(Errno::NOSYS) => Err(OpenRootError::NoOpenat2),
            Err(e) => Err(OpenRootError::Open(path.to_path_buf(), e.into())),
        }
    }

    /// The folder's path (for messages and for reads that do not go through the handle).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory at `rel` (components joined by `/`; `""` is the root itself).
    pub fn dir(&self, rel: &str) -> io::Result<Dir> {
        let target = if rel.is_empty() { "." } else { rel };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::openat2(&*self.fd, target, flags, Mode::empty(), BENEATH) {
            Ok(fd) => Ok(Dir { fd }),
            Err(e) => Err(resolve_error(rel, e)),
        }
    }

    /// The status of the entry at `rel` itself (`""`: the root), not following a symlink.
    pub fn stat(&self, rel: &str) -> io::Result<rustix::fs::Stat> {
        if rel.is_empty() {
            return Ok(rustix::fs::fstat(&*self.fd)?);
        }
        let (dir, name) = self.parent(rel)?;
        dir.stat(name)
    }

    /// Bytes available to teatime on the folder's file system, and its size.
    pub fn free_space(&self) -> io::Result<(u64, u64)> {
        let st = rustix::fs::fstatvfs(&*self.fd)?;
        Ok((st.f_bavail.saturating_mul(st.f_frsize), st.f_blocks.saturating_mul(st.f_frsize)))
    }

    /// The directory holding `rel`, and `rel`'s last component.
    pub fn parent<'a>(&self, rel: &'a str) -> io::Result<(Dir, &'a str)> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        Ok((self.dir(parent)?, name))
    }

    /// The directory at `rel`, created (with its missing parents) if need be.
    pub fn create_dir_all(&self, rel: &str) -> io::Result<Dir> {
        let mut dir = self.dir("")?;
        for name in rel.split('/').filter(|c| !c.is_empty()) {
            match dir.mkdir(name, 0o755) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            dir = dir.subdir(name)?;
        }
        Ok(dir)
    }
}

impl Dir {
    /// The subdirectory `name` (not through a symlink).
    pub fn subdir(&self, name: &str) -> io::Result<Dir> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match rustix::fs::openat2(&self.fd, one_name(name)?, flags, Mode::empty(), BENEATH) {
            Ok(fd) => Ok(Dir { fd }),
            Err(e) => Err(resolve_error(name, e)),
        }
    }

    /// The status of the entry `name` itself (a symlink is reported as one): one
    /// `fstatat`, for walks over many entries.
    pub fn stat(&self, name: &str) -> io::Result<rustix::fs::Stat> {
        Ok(rustix::fs::statat(&self.fd, one_name(name)?, AtFlags::SYMLINK_NOFOLLOW)?)
    }

    /// The metadata of the entry `name` itself (a symlink is reported as one).
    pub fn metadata(&self, name: &str) -> io::Result<fs::Metadata> {
        let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = rustix::fs::openat(&self.fd, one_name(name)?, flags, Mode::empty())?;
        File::from(fd).metadata()
    }

    /// Opens the regular file `name` for reading.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        // NONBLOCK: a FIFO put there must not hang the replica.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        regular(rustix::fs::openat(&self.fd, one_name(name)?, flags, Mode::empty())?)
    }

    /// Opens the regular file `name` for reading and writing, creating it if asked.
    pub fn open_rw(&self, name: &str, create: bool) -> io::Result<File> {
        let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        if create {
            flags |= OFlags::CREATE;
        }
        regular(rustix::fs::openat(&self.fd, one_name(name)?, flags, Mode::from_raw_mode(0o644))?)
    }

    /// Creates a fresh temp file (reserved prefix, `O_EXCL | O_NOFOLLOW`) with `mode`.
    pub fn create_temp(&self, mode: u32) -> io::Result<(String, File)> {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let name = format!("{TEMP_PREFIX}.{:016x}", rand::random::<u64>());
            match rustix::fs::openat(&self.fd, name.as_str(), flags, Mode::from_raw_mode(mode & 0o777)) {
                Ok(fd) => return Ok((name, File::from(fd))),
                Err(Errno::EXIST) => continue, // 64 random bits taken: draw again
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Renames `from` here to `to` in `to_dir` (`flags`: `NOREPLACE`, `EXCHANGE`...).
    pub fn rename(&self, from: &str, to_dir: &Dir, to: &str, flags: RenameFlags) -> io::Result<()> {
        rustix::fs::renameat_with(&self.fd, one_name(from)?, &to_dir.fd, one_name(to)?, flags)?;
        Ok(())
    }

    /// Creates the directory `name`.
    pub fn mkdir(&self, name: &str, mode: u32) -> io::Result<()> {
        rustix::fs::mkdirat(&self.fd, one_name(name)?, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Removes the file (or symlink) `name`.
    pub fn unlink(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, one_name(name)?, AtFlags::empty())?;
        Ok(())
    }

    /// Removes the empty directory `name`.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        rustix::fs::unlinkat(&self.fd, one_name(name)?, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// Sets the permission bits of the regular file `name` to what `mode_for` says of what
    /// is there (`None`: leave it), deciding on the opened file, so the check and the change
    /// see one file. Returns the new metadata, or `None` when left alone.
    pub fn set_mode(
        &self,
        name: &str,
        mode_for: impl FnOnce(&fs::Metadata) -> Option<u32>,
    ) -> io::Result<Option<fs::Metadata>> {
        let file = self.open_file(name)?;
        let Some(mode) = mode_for(&file.metadata()?) else { return Ok(None) };
        rustix::fs::fchmod(&file, Mode::from_raw_mode(mode & 0o7777))?;
        file.metadata().map(Some)
    }

    /// Flushes the directory's entries to disk (best effort: some file systems refuse).
    pub fn fsync(&self) {
        let _ = rustix::fs::fsync(&self.fd);
    }

    /// The entries (name, whether a real directory), `.` and `..` left out.
    pub fn entries(&self) -> io::Result<Vec<(OsString, bool)>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                rustix::fs::FileType::Directory => true,
                // Some file systems do not say in the listing: ask.
                rustix::fs::FileType::Unknown => {
                    rustix::fs::statat(&self.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW).is_ok_and(
                        |st| {
                            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
                        },
                    )
                }
                _ => false,
            };
            out.push((OsString::from_vec(name.to_vec()), is_dir));
        }
        Ok(out)
    }
}

/// A `Dir` operation takes one name: `..`, `.` or a `/` would let it leave its directory.
fn one_name(name: &str) -> io::Result<&str> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not one file name")));
    }
    Ok(name)
}

fn regular(fd: OwnedFd) -> io::Result<File> {
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Says plainly why the kernel refused to resolve `rel` beneath the root.
fn resolve_error(rel: &str, e: Errno) -> io::Error {
    match e {
        Errno::LOOP => io::Error::other(format!("{rel:?} goes through a symlink (never followed)")),
        Errno::XDEV => io::Error::other(format!("{rel:?} leads outside the folder")),
        Errno::NOSYS => io::Error::other("this kernel lacks openat2"),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder() -> (tempfile::TempDir, PathBuf, Root) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("folder");
        fs::create_dir_all(dir.join("real")).unwrap();
        fs::create_dir_all(tmp.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../outside", dir.join("link")).unwrap();
        let root = Root::open(&dir).unwrap();
        (tmp, dir, root)
    }

    #[test]
    fn symlinks_and_escapes_are_refused_by_the_kernel() {
        let (tmp, _dir, root) = folder();
        assert!(root.dir("real").is_ok());
        for bad in ["link", "link/x", "..", "../outside", "/tmp", "real/../../outside"] {
            assert!(root.dir(bad).is_err(), "{bad:?} resolved");
        }
        assert!(root.create_dir_all("link/sub").is_err());
        let d = root.dir("").unwrap();
        for bad in ["..", ".", "a/b", ""] {
            assert!(d.mkdir(bad, 0o755).is_err(), "{bad:?} accepted as a name");
        }
        assert!(d.open_file("link").is_err(), "a final symlink is not followed");
        assert!(d.metadata("link").unwrap().file_type().is_symlink());
        assert_eq!(fs::read_dir(tmp.path().join("outside")).unwrap().count(), 0);
    }

    #[test]
    fn temp_files_are_fresh_and_reserved() {
        let (_tmp, dir, root) = folder();
        let d = root.dir("real").unwrap();
        let (a, _) = d.create_temp(0o600).unwrap();
        let (b, _) = d.create_temp(0o600).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(TEMP_PREFIX));
        assert!(dir.join("real").join(&a).is_file());
        d.rename(&a, &d, &b, RenameFlags::NOREPLACE).unwrap_err();
        d.unlink(&a).unwrap();
        d.unlink(&b).unwrap();
    }

    #[test]
    fn a_directory_swapped_for_a_symlink_after_opening_the_root_is_refused() {
        let (tmp, dir, root) = folder();
        fs::rename(dir.join("real"), tmp.path().join("moved")).unwrap();
        std::os::unix::fs::symlink("../outside", dir.join("real")).unwrap();
        assert!(root.dir("real").is_err());
        assert!(root.create_dir_all("real/sub").is_err());
        assert_eq!(fs::read_dir(tmp.path().join("outside")).unwrap().count(), 0);
    }
}
