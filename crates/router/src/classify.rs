//! Classify a request: which model in which namespace, REST or gRPC, or the router's own
//! endpoints.

use http::{HeaderMap, Uri};

/// What a request is for.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// OIP REST (`/v2/models/{model}/...`) or KServe v1 (`/v1/models/{model}:predict`).
    Rest {
        model: String,
    },
    /// OIP gRPC; `None` for server-level calls (ServerLive, ServerReady, ServerMetadata).
    Grpc {
        model: Option<String>,
    },
    /// The router's own liveness / readiness / metadata.
    Health,
    Metrics,
    /// The per-revision numbers as JSON, for the operator's canary analysis.
    RevisionMetrics,
    /// `POST /v2/models/{model}/feedback`: a reward for an answered request.
    Feedback {
        model: String,
    },
    Unknown,
}

/// Classify by path (the gRPC model name is read from the message later).
pub fn classify(uri: &Uri, headers: &HeaderMap) -> RequestKind {
    let path = uri.path();
    let is_grpc = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    if is_grpc || path.starts_with("/inference.GRPCInferenceService/") {
        return RequestKind::Grpc { model: None };
    }
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        let model = rest.split('/').next().unwrap_or("");
        if rest.strip_prefix(model) == Some("/feedback") && !model.is_empty() {
            return RequestKind::Feedback {
                model: model.to_string(),
            };
        }
        return named(model);
    }
    if let Some(rest) = path.strip_prefix("/v1/models/") {
        let model = rest.split(['/', ':']).next().unwrap_or("");
        return named(model);
    }
    match path {
        "/v2" | "/v2/" | "/v2/health/live" | "/v2/health/ready" | "/healthz" | "/readyz" => {
            RequestKind::Health
        }
        "/metrics" => RequestKind::Metrics,
        crate::stats::PATH => RequestKind::RevisionMetrics,
        _ => RequestKind::Unknown,
    }
}

fn named(model: &str) -> RequestKind {
    if model.is_empty() {
        RequestKind::Unknown
    } else {
        RequestKind::Rest {
            model: model.to_string(),
        }
    }
}

/// The namespace a request addresses: the `ferry-namespace` header, else the namespace whose
/// service claims the Host as its external host (an Ingress or HTTPRoute hands the router the
/// client's Host), else the second label of a `NAME.NAMESPACE.domain` host, else `default`.
pub fn namespace(headers: &HeaderMap, table: &crate::table::Compiled) -> String {
    if let Some(ns) = headers
        .get(ferry_api::HEADER_NAMESPACE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        return ns.to_string();
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    if !host.starts_with('[') && host.parse::<std::net::IpAddr>().is_err() {
        if let Some(ns) = table.host_namespace(&host.to_ascii_lowercase()) {
            return ns.to_string();
        }
        let mut labels = host.split('.').skip(1);
        if let (Some(second), Some(_)) = (labels.next(), labels.next())
            && !second.is_empty()
        {
            return second.to_string();
        }
    }
    "default".to_string()
}

/// gRPC calls that name a model carry it in protobuf field 1 of the request message
/// (`ModelInferRequest.model_name`, `ModelReadyRequest.name`, `ModelMetadataRequest.name`).
/// Reads it from the first length-prefixed message of `body`.
pub fn grpc_model_name(body: &[u8]) -> Option<String> {
    let (&compressed, rest) = body.split_first()?;
    if compressed != 0 || rest.len() < 4 {
        return None;
    }
    let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
    let mut message = rest.get(4..4 + len)?;
    while !message.is_empty() {
        let (key, used) = varint(message)?;
        message = &message[used..];
        let field = key >> 3;
        match key & 7 {
            0 => message = &message[varint(message)?.1..],
            1 => message = message.get(8..)?,
            5 => message = message.get(4..)?,
            2 => {
                let (len, used) = varint(message)?;
                let end = used.checked_add(usize::try_from(len).ok()?)?;
                let value = message.get(used..end)?;
                if field == 1 {
                    return String::from_utf8(value.to_vec()).ok();
                }
                message = &message[end..];
            }
            _ => return None,
        }
    }
    None
}

fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, byte) in bytes.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_paths_name_their_model() {
        let h = HeaderMap::new();
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            classify(&uri("/v2/models/iris/infer"), &h),
            RequestKind::Rest {
                model: "iris".into()
            }
        );
        assert_eq!(
            classify(&uri("/v2/models/iris/versions/1/ready"), &h),
            RequestKind::Rest {
                model: "iris".into()
            }
        );
        assert_eq!(
            classify(&uri("/v1/models/iris:predict"), &h),
            RequestKind::Rest {
                model: "iris".into()
            }
        );
        assert_eq!(classify(&uri("/v2/health/ready"), &h), RequestKind::Health);
        assert_eq!(
            classify(&uri("/v2/models//infer"), &h),
            RequestKind::Unknown
        );
    }

    #[test]
    fn namespace_from_header_then_external_host_then_host_labels() {
        let table = crate::table::Compiled::with_hosts(&[("iris.example.com", "team-c")]);
        let mut h = HeaderMap::new();
        h.insert(
            http::header::HOST,
            "iris.team-a.example.com:8080".parse().unwrap(),
        );
        assert_eq!(namespace(&h, &table), "team-a");
        h.insert(ferry_api::HEADER_NAMESPACE, "team-b".parse().unwrap());
        assert_eq!(namespace(&h, &table), "team-b");
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(namespace(&h, &table), "default");
        h.insert(http::header::HOST, "localhost:8080".parse().unwrap());
        assert_eq!(namespace(&h, &table), "default");
        // An Ingress's host names no namespace by its labels ("example" is none): the table
        // knows which service claims it.
        h.insert(http::header::HOST, "IRIS.example.com:443".parse().unwrap());
        assert_eq!(namespace(&h, &table), "team-c");
        h.insert(http::header::HOST, "other.example.com".parse().unwrap());
        assert_eq!(namespace(&h, &table), "example");
    }

    #[test]
    fn grpc_model_name_is_read_from_field_one() {
        // field 2 (varint 7), then field 1 = "iris"
        let message = [0x10, 0x07, 0x0a, 0x04, b'i', b'r', b'i', b's'];
        let mut frame = vec![0u8];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        assert_eq!(grpc_model_name(&frame).as_deref(), Some("iris"));
        assert_eq!(grpc_model_name(&frame[..6]), None);
        assert_eq!(
            grpc_model_name(&[1, 0, 0, 0, 0]),
            None,
            "compressed messages are not read"
        );
    }
}
