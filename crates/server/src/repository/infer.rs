//! The inference path the REST and gRPC front ends share: lookup (loading on demand on a pool
//! server) → admission → validation → run (inline, batched or on the bounded pool) → output
//! selection → metrics.

use super::*;
use std::time::SystemTime;

impl Repository {
    /// Runs one inference request end to end and records its metrics.
    pub async fn infer(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
        protocol: Protocol,
        remote: &ferry_trace::Remote,
    ) -> Result<InferResponse> {
        let span = ferry_trace::Span::server("infer", remote);
        span.text("ferry.model", model);
        span.attribute(
            "rpc.system",
            match protocol {
                Protocol::Rest => "http",
                Protocol::Grpc => "grpc",
            },
        );
        let result = self
            .infer_in(model, version, request, protocol, &span)
            .await;
        if let Err(e) = &result {
            span.error(e);
        }
        result
    }

    async fn infer_in(
        &self,
        model: &str,
        version: Option<&str>,
        request: InferRequest,
        protocol: Protocol,
        span: &ferry_trace::Span,
    ) -> Result<InferResponse> {
        let started = Instant::now();
        let loaded = match self.serving(model, version).await {
            Ok(m) => m,
            Err(e) => {
                self.count_rejected(model, version.unwrap_or(""), protocol, &e);
                return Err(e);
            }
        };
        span.text("ferry.model.version", &loaded.config.version);
        let result = self.infer_loaded(&loaded, request, span).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => loaded.metrics.observe_ok(protocol, elapsed),
            Err(e) => {
                loaded.metrics.observe_latency(protocol, elapsed);
                self.count_rejected(model, &loaded.config.version, protocol, e);
            }
        }
        result
    }

    /// Counts a request that failed with `e`, also one that never reached a model (a decode
    /// error in a front end). Names of unknown models are client-chosen: they are counted as
    /// `_unknown` so they cannot grow the label space.
    pub fn count_rejected(&self, model: &str, version: &str, protocol: Protocol, e: &Error) {
        let known = !matches!(e, Error::ModelNotFound { .. })
            && self
                .entries
                .read()
                .expect("repository lock")
                .contains_key(model);
        let model = if known { model } else { "_unknown" };
        let status = match protocol {
            Protocol::Rest => e.http_status().as_str().to_string(),
            Protocol::Grpc => format!("{:?}", e.grpc_code()),
        };
        self.metrics.count(model, version, protocol, &status);
    }

    async fn infer_loaded(
        &self,
        loaded: &Arc<LoadedModel>,
        request: InferRequest,
        span: &ferry_trace::Span,
    ) -> Result<InferResponse> {
        let name = &loaded.config.name;
        let _permit = loaded
            .admission
            .try_acquire()
            .map_err(|_| Error::Overloaded {
                model: name.clone(),
                capacity: loaded.config.max_queue,
            })?;
        let _depth = DepthGuard::new(&loaded.metrics);
        let signature = loaded.signature();
        let selected = select_outputs(name, signature, &request)?;
        let inputs = order_inputs(name, signature, request.inputs)?;
        let outputs = self.run(loaded, inputs, span).await.map_err(|f| match f {
            BackendFailure::BadInput(m) => Error::InvalidInput(m),
            BackendFailure::Failed(message) => Error::InferenceFailed {
                model: name.clone(),
                message,
            },
        })?;
        let outputs = match selected {
            None => outputs,
            Some(indices) => {
                let mut all: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
                indices
                    .into_iter()
                    .filter_map(|i| all.get_mut(i).and_then(Option::take))
                    .collect()
            }
        };
        Ok(InferResponse {
            model_name: name.clone(),
            model_version: loaded.config.version.clone(),
            id: request.id,
            parameters: request.parameters,
            outputs,
        })
    }

    async fn run(
        &self,
        loaded: &Arc<LoadedModel>,
        inputs: Vec<Tensor>,
        span: &ferry_trace::Span,
    ) -> std::result::Result<Vec<Tensor>, BackendFailure> {
        let queued = SystemTime::now();
        if let Some(batcher) = &loaded.batcher {
            let (reply, answer) = oneshot::channel();
            batcher
                .send(BatchJob { inputs, reply })
                .await
                .map_err(|_| BackendFailure::Failed("batcher stopped".into()))?;
            let Ok((result, ran)) = answer.await else {
                return Err(BackendFailure::Failed("batch dropped".into()));
            };
            // The request's wait for its batch, the batch, and the model's call in it.
            span.record("queue", queued, ran.batched, &[]);
            let batch = span.child_from("batch", ferry_trace::Kind::Internal, ran.batched);
            batch.attribute("ferry.batch.rows", ran.rows as i64);
            batch.attribute("ferry.batch.requests", ran.requests as i64);
            batch.record("compute", ran.compute.0, ran.compute.1, &[]);
            batch.end_at(ran.finished);
            return result;
        }
        let rows = inputs
            .first()
            .and_then(|t| t.shape.first())
            .copied()
            .unwrap_or(1);
        if loaded.inline && rows <= INLINE_MAX_ROWS {
            let compute = span.child("compute", ferry_trace::Kind::Internal);
            compute.attribute("ferry.inline", true);
            return call_backend(loaded.backend.as_ref(), inputs);
        }
        let permit = self
            .compute
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BackendFailure::Failed("compute pool closed".into()))?;
        // Waiting for a thread of the compute pool.
        span.record("queue", queued, SystemTime::now(), &[]);
        let compute = span.child("compute", ferry_trace::Kind::Internal);
        let backend = loaded.backend.clone();
        tokio::task::spawn_blocking(move || {
            let result = call_backend(backend.as_ref(), inputs);
            drop(permit);
            drop(compute);
            result
        })
        .await
        .unwrap_or_else(|e| {
            Err(BackendFailure::Failed(format!(
                "inference task failed: {e}"
            )))
        })
    }
}

/// Keeps the queue-depth gauge true for the lifetime of one admitted request.
struct DepthGuard<'a>(&'a ModelMetrics);

impl<'a> DepthGuard<'a> {
    fn new(metrics: &'a ModelMetrics) -> Self {
        metrics.queue_depth.inc();
        Self(metrics)
    }
}

impl Drop for DepthGuard<'_> {
    fn drop(&mut self) {
        self.0.queue_depth.dec();
    }
}
