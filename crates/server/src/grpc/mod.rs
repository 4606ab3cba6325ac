//! The gRPC front end: `inference.GRPCInferenceService` (OIP v2 plus the repository calls).

pub mod convert;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::config::ModelConfig;
use crate::error::Error;
use crate::protocol::Protocol;
use crate::repository::{ModelState, Repository};

/// Code generated from `proto/grpc_predict_v2.proto` at build time.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("inference");
}

pub use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
pub use pb::grpc_inference_service_server::GrpcInferenceServiceServer;

/// The service implementation over the shared repository.
#[derive(Clone)]
pub struct InferenceService {
    repo: Arc<Repository>,
}

impl InferenceService {
    pub fn new(repo: Arc<Repository>) -> Self {
        Self { repo }
    }

    /// The tonic server for this service, with message limits of `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> GrpcInferenceServiceServer<Self> {
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(usize::MAX)
    }
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn specs(specs: &[crate::backend::TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|s| pb::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: s.datatype.name().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.repo.all_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let view = self.repo.known(&r.name, version(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: view.state.servable(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "ferry".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::rest::EXTENSIONS
                .iter()
                .map(|e| e.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let view = self
            .repo
            .resident_view(&r.name, version(&r.version))
            .await?;
        let ModelState::Ready(model) = &view.state else {
            return Err(Error::NotReady {
                model: r.name,
                reason: view.state.reason().unwrap_or("not ready").to_string(),
            }
            .into());
        };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: view.config.name.clone(),
            versions: vec![view.config.version.clone()],
            platform: model.platform().to_string(),
            inputs: specs(&model.signature().inputs),
            outputs: specs(&model.signature().outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let metadata = |name: &str| request.metadata().get(name).and_then(|v| v.to_str().ok());
        let remote = ferry_trace::Remote::from_values(
            metadata(ferry_trace::TRACEPARENT),
            metadata(ferry_trace::TRACESTATE),
        );
        let message = request.into_inner();
        let model_name = message.model_name.clone();
        let decoded = match convert::decode_infer_request(message) {
            Ok(d) => d,
            Err(e) => {
                self.repo
                    .count_rejected(&model_name, "", Protocol::Grpc, &e);
                return Err(e.into());
            }
        };
        let response = self
            .repo
            .infer(
                &decoded.model,
                decoded.version.as_deref(),
                decoded.request,
                Protocol::Grpc,
                &remote,
            )
            .await?;
        Ok(Response::new(convert::encode_infer_response(
            response,
            decoded.raw,
        )))
    }

    async fn repository_index(
        &self,
        request: Request<pb::RepositoryIndexRequest>,
    ) -> Result<Response<pb::RepositoryIndexResponse>, Status> {
        let only_ready = request.into_inner().ready;
        let models = self
            .repo
            .list()
            .into_iter()
            .filter(|v| !only_ready || matches!(v.state, ModelState::Ready(_)))
            .map(|v| pb::repository_index_response::ModelIndex {
                name: v.config.name.clone(),
                version: v.config.version.clone(),
                state: v.state.name().to_string(),
                reason: v.state.reason().unwrap_or_default().to_string(),
            })
            .collect();
        Ok(Response::new(pb::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        request: Request<pb::RepositoryModelLoadRequest>,
    ) -> Result<Response<pb::RepositoryModelLoadResponse>, Status> {
        let r = request.into_inner();
        let parameters = r
            .parameters
            .iter()
            .map(|(key, p)| {
                use pb::model_repository_parameter::ParameterChoice as C;
                let value = match &p.parameter_choice {
                    Some(C::StringParam(v)) => v.clone(),
                    Some(C::Int64Param(v)) => v.to_string(),
                    Some(C::BoolParam(v)) => v.to_string(),
                    Some(C::BytesParam(_)) | None => {
                        return Err(Error::invalid(format!(
                            "parameters.{key} must be a string or an integer"
                        )));
                    }
                };
                Ok((key.clone(), value))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let known = self.repo.view(&r.model_name).map(|v| v.config);
        let config = ModelConfig::for_load(&r.model_name, known.as_ref(), &parameters)?;
        self.repo.load(&r.model_name, config).await?;
        Ok(Response::new(pb::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        request: Request<pb::RepositoryModelUnloadRequest>,
    ) -> Result<Response<pb::RepositoryModelUnloadResponse>, Status> {
        self.repo.unload(&request.into_inner().model_name)?;
        Ok(Response::new(pb::RepositoryModelUnloadResponse {}))
    }
}
