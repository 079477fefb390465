//! Key files: created 0600 at open (no chmod-after-write window) and refused when group- or
//! world-readable, because a CA key anyone on the machine can read lets them impersonate every
//! provider to every agent that trusts it.

use std::io::Write;
use std::path::Path;

/// Why a key file is unusable, or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path} is readable by group or others (mode {mode:o}); run `chmod 600 {path}`")]
    TooOpen { path: String, mode: u32 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io_error(path: &Path, source: std::io::Error) -> FileError {
    FileError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Refuse a private file whose permission bits let anyone but the owner read or write it.
pub fn check_private(path: &Path) -> Result<(), FileError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| io_error(path, e))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(FileError::TooOpen {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Create `path` with mode 0600 and write `contents`. Fails if the file exists, so an existing
/// file (with whatever mode it has) is never silently reused; callers that mean to replace a
/// file remove it first.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    create_parent(path)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    file.write_all(contents).map_err(|e| io_error(path, e))?;
    file.sync_all().map_err(|e| io_error(path, e))?;
    check_private(path)
}

/// Write a public file (a certificate), replacing any previous one.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), FileError> {
    create_parent(path)?;
    std::fs::write(path, contents).map_err(|e| io_error(path, e))
}

/// Remove a file if it exists.
pub fn remove_if_exists(path: &Path) -> Result<(), FileError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(path, e)),
    }
}

fn create_parent(path: &Path) -> Result<(), FileError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))
        }
        _ => Ok(()),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn private_files_are_0600_and_open_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_private(&path, b"secret").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            write_private(&path, b"again").is_err(),
            "existing files are never reused"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_private(&path).unwrap_err().to_string();
        assert!(
            err.contains("chmod 600") && err.contains("key.pem"),
            "{err}"
        );
    }
}
