//! Where a pod finds its model, by the URI's scheme (`ferry_api::ModelUri`):
//! - a path or `file://`: where it is (baked into the image or mounted by the user);
//! - `pvc://claim/path`: the claim mounted read-only at `/mnt/pvc/<claim>`, the model below it;
//! - `s3://`, `gs://`, `http(s)://`, `oci://`: fetched by `ferry-storage` into the model cache
//!   at [`CACHE_DIR`] — an emptyDir per pod by default, or, when the operator runs with
//!   `--model-cache-host-path`, that node directory shared by every pod on the node (a second
//!   replica downloads nothing). Ferry's server fetches at start; a ServingRuntime's pod has an
//!   init step (`ferry fetch`). The `secretName` Secret's keys reach the fetch as environment.

use ferry_api::{InferenceService, ModelUri};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, EnvFromSource, HostPathVolumeSource, PersistentVolumeClaimVolumeSource,
    SecretEnvSource, Volume, VolumeMount,
};

use crate::RenderOptions;

/// The model cache in a pod.
pub const CACHE_DIR: &str = "/var/cache/ferry/models";
/// Where `pvc://` claims are mounted.
pub const PVC_ROOT: &str = "/mnt/pvc";
const CACHE_VOLUME: &str = "ferry-model-cache";
const PVC_VOLUME: &str = "ferry-model-pvc";

/// How a pod reaches the model of an InferenceService.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelAccess {
    /// The model as its reader names it: a local path, or the URI for a fetch.
    pub path: String,
    /// Fetched from a store (into the cache).
    pub remote: bool,
    pub volumes: Vec<Volume>,
    /// Mounts of the container that reads (or, for Ferry's server, fetches) the model.
    pub mounts: Vec<VolumeMount>,
    /// The store's credentials for the container that fetches.
    pub env_from: Vec<EnvFromSource>,
}

impl ModelAccess {
    pub(crate) fn of(isvc: &InferenceService, options: &RenderOptions) -> ModelAccess {
        let model = &isvc.spec.predictor.model;
        let env_from = model
            .secret_name
            .iter()
            .map(|name| EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            })
            .collect();
        match ModelUri::parse(&model.uri) {
            Ok(ModelUri::Pvc { claim, path }) => {
                let root = format!("{PVC_ROOT}/{claim}");
                ModelAccess {
                    path: if path.is_empty() {
                        root.clone()
                    } else {
                        format!("{root}/{}", path.trim_end_matches('/'))
                    },
                    remote: false,
                    volumes: vec![Volume {
                        name: PVC_VOLUME.into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: claim,
                            read_only: Some(true),
                        }),
                        ..Volume::default()
                    }],
                    mounts: vec![VolumeMount {
                        name: PVC_VOLUME.into(),
                        mount_path: root,
                        read_only: Some(true),
                        ..VolumeMount::default()
                    }],
                    env_from: Vec::new(),
                }
            }
            Ok(uri) if uri.is_remote() => ModelAccess {
                path: model.uri.clone(),
                remote: true,
                volumes: vec![cache_volume(options)],
                mounts: vec![cache_mount()],
                env_from,
            },
            _ => ModelAccess {
                path: ferry_api::local_model_path(&model.uri)
                    .unwrap_or(&model.uri)
                    .to_string(),
                ..ModelAccess::default()
            },
        }
    }
}

/// The cache volume: the node's directory when the operator was given one, else the pod's own.
pub(crate) fn cache_volume(options: &RenderOptions) -> Volume {
    match &options.model_cache_host_path {
        Some(path) => Volume {
            name: CACHE_VOLUME.into(),
            host_path: Some(HostPathVolumeSource {
                path: path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: CACHE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    }
}

pub(crate) fn cache_mount() -> VolumeMount {
    VolumeMount {
        name: CACHE_VOLUME.into(),
        mount_path: CACHE_DIR.into(),
        ..VolumeMount::default()
    }
}
