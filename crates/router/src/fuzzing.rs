//! The request classification as one call, for the fuzz target `router_classify` (`fuzz/`):
//! any bytes become a path, headers and a body; the phases that read them (kind and model,
//! namespace, pinned revision, chosen variant, sticky key, API key ID) must answer or refuse,
//! never panic. And phase 2 (authorize / limit) as one call, for its in-process measure
//! (`bench/load`'s `ferry-bench-admit`). Not an API.

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::classify::{RequestKind, classify, grpc_model_name, namespace};
use crate::proxy::pick::{pinned, sticky_key, variant_of};

/// What classification found.
#[derive(Debug)]
pub struct Classified {
    pub model: Option<String>,
    pub namespace: String,
    pub revision: Option<String>,
    pub variant: Option<String>,
    pub sticky: Option<String>,
    pub key_id: Option<String>,
}

const NAMES: [&str; 8] = [
    "host",
    "content-type",
    "ferry-namespace",
    "ferry-revision",
    "ferry-variant",
    "cookie",
    "authorization",
    "x-user",
];

/// Lines of `data`: the path, then one header value per line (in the order of `NAMES`), the
/// rest is the body.
pub fn classify_bytes(data: &[u8]) -> Option<Classified> {
    let mut lines = data.splitn(NAMES.len() + 2, |b| *b == b'\n');
    let uri: Uri = std::str::from_utf8(lines.next()?).ok()?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for name in NAMES {
        let Some(line) = lines.next() else { break };
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(name), value);
        }
    }
    let body = lines.next().unwrap_or_default();
    let table = crate::table::Compiled::with_hosts(&[("iris.example.com", "team-c")]);
    let model = match classify(&uri, &headers) {
        RequestKind::Rest { model } | RequestKind::Feedback { model } => {
            assert!(!model.is_empty() && uri.path().contains(model.as_str()));
            Some(model)
        }
        RequestKind::Grpc { .. } => grpc_model_name(body),
        _ => None,
    };
    let sticky = ferry_api::StickySpec {
        header: Some("x-user".into()),
        cookie: None,
    };
    let by_cookie = ferry_api::StickySpec {
        header: None,
        cookie: Some("user".into()),
    };
    let _ = sticky_key(Some(&by_cookie), &headers);
    let key_id = crate::access::presented_key(&headers)
        .and_then(ferry_api::api_key_id)
        .map(str::to_string);
    Some(Classified {
        model,
        namespace: namespace(&headers, &table),
        revision: pinned(&headers).map(str::to_string),
        variant: variant_of(&headers).map(str::to_string),
        sticky: sticky_key(Some(&sticky), &headers).map(str::to_string),
        key_id,
    })
}

/// Phase 2 of `router` for one request head (the API key checked and stripped, the key's,
/// the namespace's and the service's buckets taken): what `bench/tenancy.sh` times per call.
pub fn admit(
    router: &crate::Router,
    namespace: &str,
    model: &str,
    parts: &mut http::request::Parts,
) -> Result<(), crate::RouterError> {
    let compiled = router.compiled();
    router.admit(&compiled, namespace, Some(model), parts)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lines_become_a_request() {
        let found = super::classify_bytes(
            b"/v2/models/iris/infer\niris.team-a.example.com\napplication/json\n\nrev-1\nb\nuser=7\nBearer x\nu-9\n",
        )
        .unwrap();
        assert_eq!(found.model.as_deref(), Some("iris"));
        assert_eq!(found.namespace, "team-a");
        assert_eq!(found.revision.as_deref(), Some("rev-1"));
        assert_eq!(found.variant.as_deref(), Some("b"));
        assert_eq!(found.sticky.as_deref(), Some("u-9"));
        assert_eq!(found.key_id, None);
    }
}
