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

/// Which of a replica's listeners a Unix socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
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
    /// The Unix socket a replica serves REST or gRPC on. A socket address holds 108 bytes
    /// with its terminator: a state directory too deep for that gets a short directory under
    /// the system's temporary directory, named by a hash of the state directory; `None` when
    /// even that is too long (the router then calls the replica over TCP).
    pub fn socket_of(&self, replica: &str, protocol: Protocol) -> Option<PathBuf> {
        let file = match protocol {
            Protocol::Http => format!("{replica}.http.sock"),
            Protocol::Grpc => format!("{replica}.grpc.sock"),
        };
        let fits = |path: &Path| path.as_os_str().len() < 108;
        let in_run = self.run().join(&file);
        if fits(&in_run) {
            return Some(in_run);
        }
        // FNV-1a: stable across builds, so a restarted daemon finds its replicas' sockets.
        let hash = self
            .root
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
            });
        let short = std::env::temp_dir()
            .join(format!("ferry-{hash:016x}"))
            .join(file);
        fits(&short).then_some(short)
    }

    /// [`StateDir::socket_of`], its directory made (a short one under the temporary directory
    /// private to this user); `None` when there is no usable place for it.
    pub fn prepare_socket(&self, replica: &str, protocol: Protocol) -> Option<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.socket_of(replica, protocol)?;
        let dir = path.parent()?;
        std::fs::create_dir_all(dir).ok()?;
        if !dir.starts_with(&self.root) {
            // Fails when another user made the directory: then no socket, TCP only.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).ok()?;
        }
        Some(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_sockets_fit_in_a_socket_address() {
        let near = StateDir::new(Path::new("/tmp/ferry-state"));
        assert_eq!(
            near.socket_of("iris-abc123-x1y2z", Protocol::Http),
            Some(PathBuf::from(
                "/tmp/ferry-state/run/iris-abc123-x1y2z.http.sock"
            ))
        );
        let deep_root = format!("/tmp/{}", "d/".repeat(60));
        let deep = StateDir::new(Path::new(&deep_root));
        let socket = deep.socket_of("iris-abc123-x1y2z", Protocol::Grpc).unwrap();
        assert!(socket.as_os_str().len() < 108, "{}", socket.display());
        assert!(socket.starts_with(std::env::temp_dir()));
        assert!(socket.ends_with("iris-abc123-x1y2z.grpc.sock"));
        // The same state directory finds the same socket after a restart; another does not.
        assert_eq!(
            StateDir::new(Path::new(&deep_root)).socket_of("iris-abc123-x1y2z", Protocol::Grpc),
            Some(socket.clone())
        );
        let other = StateDir::new(Path::new(&format!("{deep_root}x")));
        assert_ne!(
            other.socket_of("iris-abc123-x1y2z", Protocol::Grpc),
            Some(socket)
        );
    }
}
