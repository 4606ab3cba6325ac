//! `oci://registry/repository:tag|@digest` through `oci-client`: the manifest (an image index
//! is resolved to linux/amd64 or the first entry), then each layer, checked against its sha256
//! digest. A layer that is a tar archive (plain or gzip: an image, KServe's "modelcar") is
//! unpacked; any other layer (an artifact pushed by `oras push`) is one file, named by its
//! `org.opencontainers.image.title` annotation. When the result has a top-level `models/`
//! directory (the modelcar layout) that directory is the model.
//!
//! Registries on loopback speak plain HTTP (as Docker treats them); others HTTPS unless named
//! in `FERRY_OCI_INSECURE_REGISTRIES` (comma-separated `host:port`). Credentials:
//! `FERRY_OCI_USERNAME` / `FERRY_OCI_PASSWORD`, else anonymous (token auth included).

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use ferry_api::OciReference;
use tokio::io::AsyncWriteExt;

use crate::Env;
use crate::error::{FetchError, Kind, chain};

const TITLE: &str = "org.opencontainers.image.title";

pub(crate) struct Oci {
    client: Client,
    reference: Reference,
    auth: RegistryAuth,
    uri: String,
}

/// What a manifest names: its digest (the version) and its layers.
pub(crate) struct Resolved {
    pub digest: String,
    pub layers: Vec<OciDescriptor>,
}

fn loopback(registry: &str) -> bool {
    let host = registry.rsplit_once(':').map_or(registry, |(h, _)| h);
    host == "localhost" || host.starts_with("127.") || host == "[::1]"
}

impl Oci {
    pub(crate) fn new(
        env: &Env,
        uri: &str,
        registry: &str,
        repository: &str,
        reference: &OciReference,
    ) -> Oci {
        let mut plain: Vec<String> = env
            .get("FERRY_OCI_INSECURE_REGISTRIES")
            .map_or("", String::as_str)
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        if loopback(registry) {
            plain.push(registry.to_string());
        }
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            platform_resolver: Some(Box::new(|entries| {
                entries
                    .iter()
                    .find(|e| {
                        e.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
                    })
                    .or_else(|| entries.first())
                    .map(|e| e.digest.clone())
            })),
            ..ClientConfig::default()
        };
        let reference = match reference {
            OciReference::Tag(tag) => {
                Reference::with_tag(registry.into(), repository.into(), tag.clone())
            }
            OciReference::Digest(digest) => {
                Reference::with_digest(registry.into(), repository.into(), digest.clone())
            }
        };
        let auth = match (env.get("FERRY_OCI_USERNAME"), env.get("FERRY_OCI_PASSWORD")) {
            (Some(user), Some(password)) if !user.is_empty() => {
                RegistryAuth::Basic(user.clone(), password.clone())
            }
            _ => RegistryAuth::Anonymous,
        };
        Oci {
            client: Client::new(config),
            reference,
            auth,
            uri: uri.to_string(),
        }
    }

    fn failed(&self, e: &oci_client::errors::OciDistributionError) -> FetchError {
        use oci_client::errors::OciDistributionError as E;
        let text = chain(e);
        let lower = text.to_ascii_lowercase();
        let code = [
            "manifest unknown",
            "name unknown",
            "blob unknown",
            "unauthorized",
            "denied",
        ]
        .into_iter()
        .find(|c| lower.contains(c))
        .map(|c| c.replace(' ', "_").to_ascii_uppercase());
        let kind = match (e, code.as_deref()) {
            (E::AuthenticationFailure(_) | E::UnauthorizedError { .. }, _) => Kind::Denied,
            (_, Some("UNAUTHORIZED" | "DENIED")) => Kind::Denied,
            (E::ImageManifestNotFoundError(_), _) | (_, Some(_)) => Kind::NotFound,
            (E::DigestError(_), _) => Kind::Corrupt,
            _ => Kind::Unreachable,
        };
        let answer = match (&kind, code) {
            (Kind::NotFound, code) => {
                format!("404 {}", code.unwrap_or_else(|| "MANIFEST_UNKNOWN".into()))
            }
            (Kind::Denied, code) => {
                format!("401 {}", code.unwrap_or_else(|| "UNAUTHORIZED".into()))
            }
            _ => text,
        };
        FetchError::new(&self.uri, kind, answer)
    }

    pub(crate) async fn resolve(&self) -> Result<Resolved, FetchError> {
        let (manifest, digest) = self
            .client
            .pull_image_manifest(&self.reference, &self.auth)
            .await
            .map_err(|e| self.failed(&e))?;
        if manifest.layers.is_empty() {
            return Err(FetchError::new(
                &self.uri,
                Kind::NotFound,
                "the manifest has no layers",
            ));
        }
        Ok(Resolved {
            digest,
            layers: manifest.layers,
        })
    }

    /// Downloads every layer and lays them out under `content`; returns the bytes downloaded.
    pub(crate) async fn download(
        &self,
        resolved: &Resolved,
        staging: &Path,
        content: &Path,
        progress: &mut crate::Progress,
    ) -> Result<u64, FetchError> {
        let disk = |e: std::io::Error| FetchError::new(&self.uri, Kind::Disk, e.to_string());
        tokio::fs::create_dir_all(content).await.map_err(disk)?;
        let mut bytes = 0u64;
        for layer in &resolved.layers {
            let blob = staging.join(layer.digest.replace(':', "-"));
            let file = tokio::fs::File::create(&blob).await.map_err(disk)?;
            let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
            self.client
                .pull_blob(&self.reference, layer, &mut out)
                .await
                .map_err(|e| self.failed(&e))?;
            // A tokio File finishes its writes on a blocking thread: wait for them.
            out.flush().await.map_err(disk)?;
            out.get_ref().sync_all().await.map_err(disk)?;
            drop(out);
            let size = tokio::fs::metadata(&blob).await.map_err(disk)?.len();
            if i64::try_from(size).ok() != Some(layer.size) {
                return Err(FetchError::new(
                    &self.uri,
                    Kind::Corrupt,
                    format!(
                        "layer {}: got {size} bytes, the manifest says {}",
                        layer.digest, layer.size
                    ),
                ));
            }
            bytes += size;
            progress.add(size);
            let (uri, media, title) = (
                self.uri.clone(),
                layer.media_type.clone(),
                layer
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TITLE))
                    .cloned(),
            );
            let content = content.to_path_buf();
            tokio::task::spawn_blocking(move || unpack(&uri, &media, title, &blob, &content))
                .await
                .map_err(|e| FetchError::new(&self.uri, Kind::Disk, e.to_string()))??;
        }
        Ok(bytes)
    }
}

/// Lays one downloaded layer out under `content` and deletes the blob.
fn unpack(
    uri: &str,
    media: &str,
    title: Option<String>,
    blob: &Path,
    content: &Path,
) -> Result<(), FetchError> {
    let disk = |e: std::io::Error| FetchError::new(uri, Kind::Disk, e.to_string());
    let gzip = media.ends_with("gzip") || media.ends_with("+gzip");
    let tar = media.contains(".tar") || media.ends_with("tar") || gzip;
    if tar {
        let file = std::fs::File::open(blob).map_err(disk)?;
        let reader: Box<dyn std::io::Read> = if gzip {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        };
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(false);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(disk)? {
            let mut entry = entry.map_err(disk)?;
            let path = entry.path().map_err(disk)?.into_owned();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Whiteouts of image layers delete what an earlier layer added.
            if let Some(hidden) = name.strip_prefix(".wh.") {
                let gone = content
                    .join(path.parent().unwrap_or(Path::new("")))
                    .join(hidden);
                let _ = std::fs::remove_dir_all(&gone).or_else(|_| std::fs::remove_file(&gone));
                continue;
            }
            // unpack_in refuses paths that leave `content` ('..', absolute links).
            entry.unpack_in(content).map_err(disk)?;
        }
    } else {
        let name = title
            .filter(|t| !t.is_empty() && !t.contains('/') && t != "..")
            .unwrap_or_else(|| {
                blob.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into())
            });
        std::fs::copy(blob, content.join(name)).map_err(disk)?;
    }
    std::fs::remove_file(blob).map_err(disk)?;
    Ok(())
}

/// The model inside an unpacked OCI content directory: `models/` when it has one (KServe's
/// modelcar layout), else the directory itself.
pub(crate) fn model_root(content: &Path) -> PathBuf {
    let models = content.join("models");
    if models.is_dir() {
        models
    } else {
        content.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_plain_http() {
        assert!(loopback("127.0.0.1:5000"));
        assert!(loopback("localhost:5000"));
        assert!(!loopback("ghcr.io"));
        assert!(!loopback("10.96.0.1:5000"));
    }

    #[test]
    fn tar_layers_unpack_and_artifacts_keep_their_title() {
        let dir = std::env::temp_dir().join(format!("ferry-oci-unpack-{}", std::process::id()));
        let content = dir.join("content");
        std::fs::create_dir_all(&content).unwrap();
        let blob = dir.join("layer");
        {
            let file = std::fs::File::create(&blob).unwrap();
            let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            let mut builder = tar::Builder::new(gz);
            let data = b"onnx bytes";
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, "models/model.onnx", &data[..])
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        unpack(
            "oci://r/x:1",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            None,
            &blob,
            &content,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(model_root(&content).join("model.onnx")).unwrap(),
            b"onnx bytes"
        );
        std::fs::write(&blob, b"tokenizer").unwrap();
        unpack(
            "oci://r/x:1",
            "application/vnd.ferry.model.file",
            Some("tokenizer.json".into()),
            &blob,
            &content,
        )
        .unwrap();
        assert_eq!(
            std::fs::read(content.join("tokenizer.json")).unwrap(),
            b"tokenizer"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
