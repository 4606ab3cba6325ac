//! What can go wrong fetching a model, each naming the URI and the store's own answer. The text
//! starts with `ModelFetchFailed: ` so a status derived from a replica's words (local mode's
//! readiness answer, a pod's termination message) can give the reason its name.

use std::fmt;

/// The reason word both executors' status derivation looks for.
pub const REASON: &str = "ModelFetchFailed";

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No object (or no object under the prefix) at the URI.
    NotFound,
    /// The store refused the credentials (401/403).
    Denied,
    /// The store could not be reached, or broke off.
    Unreachable,
    /// The bytes are not what the store said (size, MD5 ETag, sha256 digest).
    Corrupt,
    /// The URI is not one the fetcher serves (e.g. `pvc://` outside a cluster).
    Unsupported,
    /// The local disk: cannot write the cache.
    Disk,
}

/// A failed fetch: the URI, the kind, and the store's answer in words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FetchError {
    pub uri: String,
    pub kind: Kind,
    pub answer: String,
}

impl FetchError {
    pub fn new(uri: impl fmt::Display, kind: Kind, answer: impl Into<String>) -> FetchError {
        FetchError {
            uri: uri.to_string(),
            kind,
            answer: answer.into(),
        }
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{REASON}: {}: {}", self.uri, self.answer)
    }
}

/// An error and its sources, joined with `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// `403 AccessDenied`-style words from an S3/GCS error body or an HTTP status in `text`.
pub(crate) fn store_answer(text: &str) -> Option<String> {
    let code = between(text, "<Code>", "</Code>");
    let status = ["400", "401", "403", "404", "409", "500", "503"]
        .into_iter()
        .find(|s| text.contains(&format!("status {s}")) || text.contains(&format!("{s} ")));
    match (status, code) {
        (Some(s), Some(c)) => Some(format!("{s} {c}")),
        (None, Some(c)) => Some(c.to_string()),
        (Some(s), None) => Some(s.to_string()),
        (None, None) => None,
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some(&text[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_reason_uri_and_answer() {
        let e = FetchError::new("s3://models/iris.onnx", Kind::Denied, "403 AccessDenied");
        assert_eq!(
            e.to_string(),
            "ModelFetchFailed: s3://models/iris.onnx: 403 AccessDenied"
        );
        assert_eq!(
            store_answer(
                "Client error with status 403 Forbidden: <?xml?><Error><Code>InvalidAccessKeyId</Code></Error>"
            )
            .as_deref(),
            Some("403 InvalidAccessKeyId")
        );
        assert_eq!(store_answer("nothing here"), None);
    }
}
