//! The state directory: `state.db`, `token`, `api.json` (where the control API listens),
//! `daemon.lock`, `logs/`, `run/` (address files of replicas), `models/` (downloaded models).

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Default state directory: `$FERRY_STATE_DIR`, else `$XDG_STATE_HOME/ferry`, else
/// `~/.local/state/ferry`.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("ferry");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/ferry")
}

/// Paths inside one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    pub fn create(&self) -> Result<()> {
        for dir in [self.root.clone(), self.logs(), self.run()] {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        }
        Ok(())
    }

    pub fn db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }
    pub fn api_file(&self) -> PathBuf {
        self.root.join("api.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn run(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn log_of(&self, replica: &str) -> PathBuf {
        self.logs().join(format!("{replica}.log"))
    }
    pub fn addr_file_of(&self, replica: &str) -> PathBuf {
        self.run().join(format!("{replica}.addr"))
    }

    /// The control API token, created (mode 0600) on first use.
    pub fn ensure_token(&self) -> Result<String> {
        if let Ok(token) = std::fs::read_to_string(self.token()) {
            let token = token.trim().to_string();
            if !token.is_empty() {
                return Ok(token);
            }
        }
        let mut bytes = [0u8; 24];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| Error::io("cannot read /dev/urandom", e))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        write_private(&self.token(), &token)?;
        Ok(token)
    }
}

/// Write a file readable by its owner only.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let partial = path.with_extension("partial");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| Error::io(format!("cannot write {}", partial.display()), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))
}
