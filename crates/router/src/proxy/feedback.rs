//! `POST /v2/models/{model}/feedback`: a reward for an answer of an experiment's variant.

use bytes::Bytes;
use http::{Response, StatusCode};

use super::{Router, lookup};
use crate::body::{Buffered, json};
use crate::error::RouterError;
use crate::hooks::RequestInfo;
use crate::table::Compiled;

impl Router {
    /// `POST /v2/models/{model}/feedback` with `{"requestId": ID, "reward": NUMBER}`: the
    /// reward counts for the variant that answered request ID (named in the ID itself).
    pub(super) fn feedback(
        &self,
        compiled: &Compiled,
        info: &RequestInfo<'_>,
        body: &Bytes,
    ) -> Result<Response<Buffered>, RouterError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Feedback {
            request_id: Option<String>,
            reward: Option<serde_json::Value>,
        }
        let service = lookup(compiled, info)?;
        let parsed: Feedback = serde_json::from_slice(body).map_err(|e| {
            RouterError::BadRequest(format!(
                "feedback body: not a JSON object {{\"requestId\", \"reward\"}}: {e}"
            ))
        })?;
        let id = parsed.request_id.ok_or_else(|| {
            RouterError::BadRequest(
                "feedback body: requestId: Required value (the ferry-request-id of the answer)"
                    .into(),
            )
        })?;
        let reward = match parsed.reward {
            Some(serde_json::Value::Number(n)) => n.as_f64().filter(|r| r.is_finite()),
            Some(serde_json::Value::Bool(b)) => Some(f64::from(u8::from(b))),
            _ => None,
        }
        .ok_or_else(|| {
            RouterError::BadRequest("feedback body: reward: Required value: a number".into())
        })?;
        let variant = id
            .split_once('.')
            .map(|(variant, _)| variant)
            .filter(|v| service.has_variant(v))
            .ok_or_else(|| {
                RouterError::UnknownRequest(format!(
                    "request {id:?} was not answered by a variant of an experiment of {} in namespace {}",
                    service.service, service.namespace
                ))
            })?;
        self.inner
            .accounting
            .reward(&service.namespace, &service.service, variant, reward);
        Ok(json(
            StatusCode::OK,
            format!(r#"{{"recorded":true,"variant":"{variant}"}}"#),
        ))
    }
}
