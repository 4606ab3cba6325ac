//! Where a model lives: the one parser of `spec.predictor.model.uri` that validation, rendering
//! and the storage layer (`ferry-storage`) all use. Pure syntax; fetching is elsewhere.
//!
//! Forms: a plain path or `file:///abs/path`; `http(s)://host/path`; `s3://bucket/key`;
//! `gs://bucket/key`; `pvc://claim/path` (cluster mode: the claim mounted read-only);
//! `oci://registry/repository:tag` or `oci://registry/repository@sha256:...` (an OCI artifact or
//! image whose layers hold the model). A key or path ending in `/` names a directory (model +
//! tokenizer + config); one without may still turn out to be a directory at fetch time.

use std::fmt;

/// A parsed model URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelUri {
    /// A path on the machine (or in the pod) that runs the server.
    Local(String),
    /// `http://` or `https://`, fetched with GET.
    Http(String),
    /// `s3://bucket/key`.
    S3 { bucket: String, key: String },
    /// `gs://bucket/key`.
    Gs { bucket: String, key: String },
    /// `pvc://claim/path`: a PersistentVolumeClaim of the namespace.
    Pvc { claim: String, path: String },
    /// `oci://registry/repository:tag` or `...@digest`.
    Oci {
        registry: String,
        repository: String,
        reference: OciReference,
    },
}

/// An OCI tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OciReference {
    Tag(String),
    Digest(String),
}

impl ModelUri {
    /// Parses `uri`; the error is the message for `spec.predictor.model.uri`.
    pub fn parse(uri: &str) -> Result<ModelUri, String> {
        if uri.trim().is_empty() {
            return Err("Required value".into());
        }
        let Some((scheme, rest)) = uri.split_once("://") else {
            return Ok(ModelUri::Local(uri.to_string()));
        };
        match scheme {
            "file" if rest.starts_with('/') => Ok(ModelUri::Local(rest.to_string())),
            "file" => Err(format!(
                "Invalid value: {uri:?}: a file:// URI needs an absolute path (file:///...)"
            )),
            "http" | "https" if !rest.is_empty() && !rest.starts_with('/') => {
                Ok(ModelUri::Http(uri.to_string()))
            }
            "http" | "https" => Err(format!("Invalid value: {uri:?}: a URL needs a host")),
            "s3" | "gs" => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                if !is_bucket(bucket) {
                    return Err(format!(
                        "Invalid value: {uri:?}: {scheme}://BUCKET/KEY needs a bucket name (lower-case letters, digits, '-', '.', 3-63 characters)"
                    ));
                }
                if key.is_empty() {
                    return Err(format!(
                        "Invalid value: {uri:?}: {scheme}://BUCKET/KEY needs a key (an object, or a prefix ending in '/')"
                    ));
                }
                let (bucket, key) = (bucket.to_string(), key.to_string());
                Ok(if scheme == "s3" {
                    ModelUri::S3 { bucket, key }
                } else {
                    ModelUri::Gs { bucket, key }
                })
            }
            "pvc" => {
                let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
                if !crate::validate::is_dns_subdomain(claim) {
                    return Err(format!(
                        "Invalid value: {uri:?}: pvc://CLAIM/PATH needs a claim name (a lower-case DNS subdomain)"
                    ));
                }
                if path.split('/').any(|p| p == "..") {
                    return Err(format!(
                        "Invalid value: {uri:?}: the path may not leave the claim ('..')"
                    ));
                }
                Ok(ModelUri::Pvc {
                    claim: claim.to_string(),
                    path: path.to_string(),
                })
            }
            "oci" => parse_oci(uri, rest),
            other => Err(format!(
                "Unsupported value: {uri:?}: scheme {other:?} is not supported (a path, file://, http://, https://, s3://, gs://, pvc://, oci://)"
            )),
        }
    }

    /// Whether the model must be fetched before it can be loaded.
    pub fn is_remote(&self) -> bool {
        matches!(
            self,
            ModelUri::Http(_) | ModelUri::S3 { .. } | ModelUri::Gs { .. } | ModelUri::Oci { .. }
        )
    }

    /// The last path segment (the file name a fetched single file keeps), if it has one.
    pub fn file_name(&self) -> Option<&str> {
        let path = match self {
            ModelUri::Local(p) => p.as_str(),
            ModelUri::Http(u) => u.split(['?', '#']).next().unwrap_or(u),
            ModelUri::S3 { key, .. } | ModelUri::Gs { key, .. } => key.as_str(),
            ModelUri::Pvc { path, .. } => path.as_str(),
            ModelUri::Oci { .. } => return None,
        };
        path.rsplit('/')
            .next()
            .filter(|f| !f.is_empty() && !f.contains(':'))
    }
}

fn parse_oci(uri: &str, rest: &str) -> Result<ModelUri, String> {
    let invalid = |why: &str| {
        Err(format!(
            "Invalid value: {uri:?}: {why} (oci://REGISTRY/REPOSITORY:TAG or oci://REGISTRY/REPOSITORY@sha256:DIGEST)"
        ))
    };
    let Some((registry, path)) = rest.split_once('/') else {
        return invalid("needs a registry and a repository");
    };
    if registry.is_empty() || path.is_empty() {
        return invalid("needs a registry and a repository");
    }
    let (repository, reference) = if let Some((repo, digest)) = path.split_once('@') {
        let Some(hex) = digest.strip_prefix("sha256:") else {
            return invalid("a digest must be sha256:");
        };
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return invalid("a sha256 digest has 64 hex digits");
        }
        (repo, OciReference::Digest(digest.to_ascii_lowercase()))
    } else {
        match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => {
                if tag.is_empty()
                    || tag.len() > 128
                    || !tag
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                {
                    return invalid("a tag is letters, digits, '_', '.' and '-'");
                }
                (repo, OciReference::Tag(tag.to_string()))
            }
            _ => (path, OciReference::Tag("latest".into())),
        }
    };
    let valid_repo = repository.split('/').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
            })
    });
    if !valid_repo {
        return invalid("a repository is lower-case path components");
    }
    Ok(ModelUri::Oci {
        registry: registry.to_string(),
        repository: repository.to_string(),
        reference,
    })
}

fn is_bucket(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_'))
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OciReference::Tag(t) => write!(f, ":{t}"),
            OciReference::Digest(d) => write!(f, "@{d}"),
        }
    }
}

impl fmt::Display for ModelUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelUri::Local(p) => write!(f, "{p}"),
            ModelUri::Http(u) => write!(f, "{u}"),
            ModelUri::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            ModelUri::Gs { bucket, key } => write!(f, "gs://{bucket}/{key}"),
            ModelUri::Pvc { claim, path } => write!(f, "pvc://{claim}/{path}"),
            ModelUri::Oci {
                registry,
                repository,
                reference,
            } => write!(f, "oci://{registry}/{repository}{reference}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_scheme_parses_and_prints_back() {
        for uri in [
            "s3://models/iris/iris.onnx",
            "gs://my-bucket/minilm/",
            "pvc://model-store/iris/iris.onnx",
            "oci://127.0.0.1:5000/models/iris:v1",
            "oci://ghcr.io/org/models/minilm@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "https://example.com/m.onnx",
        ] {
            let parsed = ModelUri::parse(uri).unwrap();
            assert_eq!(parsed.to_string(), uri);
        }
        assert_eq!(
            ModelUri::parse("oci://r.example/a/b").unwrap().to_string(),
            "oci://r.example/a/b:latest"
        );
        assert_eq!(
            ModelUri::parse("file:///m/iris.onnx").unwrap(),
            ModelUri::Local("/m/iris.onnx".into())
        );
        assert_eq!(
            ModelUri::parse("s3://models/a/iris.onnx")
                .unwrap()
                .file_name(),
            Some("iris.onnx")
        );
        assert!(
            ModelUri::parse("s3://models/a/")
                .unwrap()
                .file_name()
                .is_none()
        );
        assert!(ModelUri::parse("s3://b1b/k").unwrap().is_remote());
        assert!(!ModelUri::parse("pvc://c/k").unwrap().is_remote());
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, says) in [
            ("s3://models", "needs a key"),
            ("s3://A_/k", "bucket name"),
            ("gs:///k", "bucket name"),
            ("pvc://Bad_Claim/x", "claim name"),
            ("pvc://claim/../etc", "'..'"),
            ("oci://registry-only", "registry and a repository"),
            ("oci://r.io/Repo:v1", "lower-case"),
            ("oci://r.io/repo@md5:00", "sha256"),
            ("ftp://x/y", "scheme \"ftp\""),
            ("file://rel", "absolute path"),
            ("http:///x", "needs a host"),
        ] {
            let error = ModelUri::parse(uri).unwrap_err();
            assert!(error.contains(says), "{uri}: {error}");
        }
    }
}
