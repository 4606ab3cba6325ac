//! Real stores for tests and the benchmark (feature `testing`): a MinIO server (S3), a
//! fake-gcs-server (GCS's JSON and download APIs, built from the Go module proxy) and a Debian
//! `docker-registry` (OCI distribution), each on a free loopback port in its own directory,
//! stopped on drop. Objects go in with `curl --aws-sigv4` and images with `skopeo`,
//! real clients, not this crate.
//!
//! MinIO is `$FERRY_MINIO`, else `~/.cache/ferry-storage-test/bin/minio` (`make storage-tools`
//! builds it from the Go module proxy). Without it, [`Minio::start`] returns `None` — or panics
//! when `FERRY_REQUIRE_STORAGE` is set (as `make test` sets it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "ferrytest";
pub const SECRET_KEY: &str = "ferrytest-secret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Says a store is missing: a skip, or a failure where `FERRY_REQUIRE_STORAGE` is set.
fn skip(what: &str) {
    assert!(
        std::env::var_os("FERRY_REQUIRE_STORAGE").is_none(),
        "FERRY_REQUIRE_STORAGE is set but {what} is missing (make storage-tools)"
    );
    eprintln!("skipped: {what} is missing (make storage-tools)");
}

fn wait_for(url: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before answering {url}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer {url} in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ferry-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A MinIO server.
pub struct Minio {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

/// The MinIO binary, if there is one.
pub fn minio_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FERRY_MINIO") {
        return Some(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME")?;
    let path = Path::new(&home).join(".cache/ferry-storage-test/bin/minio");
    path.exists().then_some(path)
}

impl Minio {
    pub fn start() -> Option<Minio> {
        let Some(binary) = minio_binary() else {
            skip("MinIO");
            return None;
        };
        let dir = temp_dir("minio");
        let (port, console) = (free_port(), free_port());
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .args(["server", "--quiet"])
            .arg(dir.join("data"))
            .args(["--address", &format!("127.0.0.1:{port}")])
            .args(["--console-address", &format!("127.0.0.1:{console}")])
            .env("MINIO_ROOT_USER", ACCESS_KEY)
            .env("MINIO_ROOT_PASSWORD", SECRET_KEY)
            .env("MINIO_BROWSER", "off")
            .env("MINIO_UPDATE", "off")
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("minio.log")).expect("log"))
            .spawn()
            .expect("start minio");
        wait_for(
            &format!("{endpoint}/minio/health/live"),
            &mut child,
            "minio",
        );
        Some(Minio {
            child,
            dir,
            endpoint,
        })
    }

    /// The environment a fetch from this server reads (right credentials).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }

    fn curl(&self, method: &str, path: &str, body: Option<&Path>) {
        let mut command = Command::new("curl");
        command
            .args([
                "-sS",
                "-f",
                "-X",
                method,
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
            ])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")]);
        if let Some(file) = body {
            command.arg("-T").arg(file);
        }
        let output = command
            .arg(format!("{}/{path}", self.endpoint))
            .output()
            .expect("curl");
        assert!(
            output.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn make_bucket(&self, bucket: &str) {
        self.curl("PUT", bucket, None);
    }

    /// Uploads `file` as `bucket/key`.
    pub fn put(&self, bucket: &str, key: &str, file: &Path) {
        self.curl("PUT", &format!("{bucket}/{key}"), Some(file));
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.curl("DELETE", &format!("{bucket}/{key}"), None);
    }
}

impl Drop for Minio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fake-gcs-server holding `bucket/key` objects from a directory at start.
pub struct Gcs {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

impl Gcs {
    /// Starts it with every `(bucket, key, file)` in `objects`.
    pub fn start(objects: &[(&str, &str, &Path)]) -> Option<Gcs> {
        let binary = std::env::var_os("HOME")
            .map(|h| Path::new(&h).join(".cache/ferry-storage-test/bin/fake-gcs-server"))
            .filter(|p| p.exists());
        let Some(binary) = binary else {
            skip("fake-gcs-server");
            return None;
        };
        let dir = temp_dir("gcs");
        for (bucket, key, file) in objects {
            let target = dir.join("data").join(bucket).join(key);
            std::fs::create_dir_all(target.parent().expect("a parent")).expect("data dir");
            std::fs::copy(file, &target).expect("copy an object");
        }
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(binary)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
            ])
            .args([
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-log-level",
                "warn",
            ])
            .arg("-data")
            .arg(dir.join("data"))
            .args(["-backend", "memory"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("gcs.log")).expect("log"))
            .spawn()
            .expect("start fake-gcs-server");
        wait_for(
            &format!("{endpoint}/storage/v1/b"),
            &mut child,
            "fake-gcs-server",
        );
        Some(Gcs {
            child,
            dir,
            endpoint,
        })
    }

    /// The environment a fetch from this server reads: a service-account key that points the
    /// client at it, without OAuth.
    pub fn env(&self) -> Vec<(String, String)> {
        let key = format!(
            r#"{{"private_key":"","private_key_id":"","client_email":"test@example.invalid","gcs_base_url":"{}","disable_oauth":true}}"#,
            self.endpoint
        );
        vec![("GOOGLE_SERVICE_ACCOUNT_KEY".into(), key)]
    }
}

impl Drop for Gcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Debian `docker-registry` (distribution 2.8).
pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:PORT`.
    pub address: String,
}

impl Registry {
    pub fn start() -> Option<Registry> {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(binary) = binary else {
            skip("docker-registry");
            return None;
        };
        let dir = temp_dir("registry");
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {address}\n",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).expect("log"))
            .spawn()
            .expect("start docker-registry");
        wait_for(
            &format!("http://{address}/v2/"),
            &mut child,
            "docker-registry",
        );
        Some(Registry {
            child,
            dir,
            address,
        })
    }

    /// Builds a modelcar of `model` (deploy/image/build-modelcar.sh) and pushes it with skopeo
    /// as `repository:tag`; returns its `oci://` URI.
    pub fn push_modelcar(
        &self,
        repo_root: &Path,
        model: &Path,
        repository: &str,
        tag: &str,
    ) -> String {
        let layout = self
            .dir
            .join(format!("layout-{}-{tag}", repository.replace('/', "-")));
        let built = Command::new(repo_root.join("deploy/image/build-modelcar.sh"))
            .args(["--tag", tag])
            .arg(model)
            .arg(&layout)
            .output()
            .expect("build-modelcar.sh");
        assert!(
            built.status.success(),
            "build-modelcar.sh: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        let pushed = Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repository}:{tag}", self.address))
            .output()
            .expect("skopeo");
        assert!(
            pushed.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&pushed.stderr)
        );
        format!("oci://{}/{repository}:{tag}", self.address)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
