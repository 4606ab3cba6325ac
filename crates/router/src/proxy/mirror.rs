//! Phase 7b of the request path: shadow copies (`crate::shadow` has the counters and the
//! comparison).

use std::sync::Arc;

use bytes::Bytes;
use http::Response;

use super::{REVISION_HEADER, Router, VARIANT_HEADER};
use crate::body::Buffered;
use crate::shadow::ShadowCounters;
use crate::table::ServiceState;

impl Router {
    /// Phase 7b, shadow: copy a share of answered REST requests to the shadow revision in the
    /// background, compare its answer with `live`, count; the client never waits for it.
    pub(super) fn mirror(
        &self,
        service: &Arc<ServiceState>,
        parts: &http::request::Parts,
        body: &Bytes,
        live: &Response<Buffered>,
        grpc: bool,
    ) {
        let Some((index, percent, counters)) = &service.shadow else {
            return;
        };
        if parts.headers.contains_key(&REVISION_HEADER)
            || parts.headers.contains_key(&VARIANT_HEADER)
        {
            // A pinned request (a preview, a debug call) is no live traffic to mirror.
            return;
        }
        ShadowCounters::count(&counters.live);
        if grpc || !live.status().is_success() || fastrand::u32(0..100) >= *percent {
            return;
        }
        let Ok(permit) = self.inner.shadow_limit.clone().try_acquire_owned() else {
            ShadowCounters::count(&counters.dropped);
            return;
        };
        ShadowCounters::count(&counters.mirrored);
        let (router, service, index, counters) =
            (self.clone(), service.clone(), *index, counters.clone());
        let (parts, body) = (parts.clone(), body.clone());
        let live = live.body().data.clone().unwrap_or_default();
        tokio::spawn(async move {
            let _permit = permit;
            let revision = &service.revisions[index];
            let Some(backend) = revision.pick_replica(None) else {
                ShadowCounters::count(&counters.failed);
                return;
            };
            let mut parts = parts;
            parts.headers.remove(&REVISION_HEADER);
            match router
                .forward(
                    &parts,
                    &body,
                    revision,
                    &backend,
                    false,
                    &ferry_trace::Span::none(),
                )
                .await
            {
                Ok(answer) if answer.status().is_success() => {
                    let shadow = answer.body().data.clone().unwrap_or_default();
                    match crate::shadow::answers_agree(&live, &shadow) {
                        Some(true) => ShadowCounters::count(&counters.agreed),
                        Some(false) => ShadowCounters::count(&counters.disagreed),
                        None => ShadowCounters::count(&counters.failed),
                    }
                }
                _ => ShadowCounters::count(&counters.failed),
            }
        });
    }
}
