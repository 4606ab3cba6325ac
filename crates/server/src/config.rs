//! Model and server configuration, and the `--model NAME=PATH[,key=value...]` syntax.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Which engine runs a model's ONNX graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// Pure-Rust tract (cargo feature `tract`, on by default).
    #[default]
    Tract,
    /// ONNX Runtime (cargo feature `onnxruntime`, library from `ORT_DYLIB_PATH`).
    OnnxRuntime,
}

/// When a dynamic batch is dispatched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchWindow {
    /// As soon as an execution slot is free (no added delay on an idle model); while the model
    /// is busy, requests gather for up to `max_queue_delay`.
    #[default]
    Adaptive,
    /// Always wait `max_queue_delay` (or until the batch is full) before dispatching.
    Fixed,
}

/// How one model is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub name: String,
    /// The one version this server holds of the model (`"1"` unless given).
    pub version: String,
    pub path: PathBuf,
    pub backend: BackendKind,
    /// A `tokenizer.json`: the model then takes sentences (BYTES) and returns `sentence_embedding`.
    pub tokenizer: Option<PathBuf>,
    /// Dynamic batching: largest batch (rows) to form; 0 or 1 turns batching off.
    pub max_batch_size: usize,
    /// Dynamic batching: how long the first request of a batch may wait for others.
    pub max_queue_delay: Duration,
    pub batch_window: BatchWindow,
    /// Admission: requests in flight or queued for this model before new ones get 429.
    pub max_queue: usize,
}

impl ModelConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            version: "1".into(),
            path: path.into(),
            backend: BackendKind::Tract,
            tokenizer: None,
            max_batch_size: 0,
            max_queue_delay: Duration::from_millis(2),
            batch_window: BatchWindow::Adaptive,
            max_queue: 256,
        }
    }

    pub fn batching(&self) -> bool {
        self.max_batch_size > 1
    }

    /// Parses `NAME=PATH[,version=V][,backend=tract|onnxruntime][,tokenizer=FILE][,batch_window=adaptive|fixed][,max_batch_size=N][,max_queue_delay_ms=MS]
    /// [,max_queue=N]`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (name, rest) = spec.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "--model '{spec}': expected NAME=PATH[,key=value...]"
            ))
        })?;
        let name = name.trim();
        if !valid_name(name) {
            return Err(Error::invalid(format!(
                "--model '{spec}': name '{name}' must be 1-63 characters of a-z, A-Z, 0-9, '-', '_' or '.'"
            )));
        }
        let mut parts = rest.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err(Error::invalid(format!("--model '{spec}': PATH is empty")));
        }
        let mut config = Self::new(name, path);
        for part in parts {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Error::invalid(format!(
                    "--model '{spec}': option '{part}' is not key=value"
                ))
            })?;
            let number = |what: &str| -> Result<u64> {
                value.parse().map_err(|_| {
                    Error::invalid(format!(
                        "--model '{spec}': {what} must be a non-negative integer, got '{value}'"
                    ))
                })
            };
            match key {
                "version" if !value.is_empty() => config.version = value.to_string(),
                "tokenizer" => config.tokenizer = Some(PathBuf::from(value)),
                "backend" if value == "tract" => config.backend = BackendKind::Tract,
                "batch_window" if value == "adaptive" => {
                    config.batch_window = BatchWindow::Adaptive
                }
                "batch_window" if value == "fixed" => config.batch_window = BatchWindow::Fixed,
                "backend" if value == "onnxruntime" => config.backend = BackendKind::OnnxRuntime,
                "max_batch_size" => config.max_batch_size = number(key)? as usize,
                "max_queue_delay_ms" => {
                    config.max_queue_delay = Duration::from_millis(number(key)?)
                }
                "max_queue_delay_us" => {
                    config.max_queue_delay = Duration::from_micros(number(key)?)
                }
                "max_queue" if number(key)? > 0 => config.max_queue = number(key)? as usize,
                _ => {
                    return Err(Error::invalid(format!(
                        "--model '{spec}': unknown or invalid option '{part}' (known: version, backend=tract|onnxruntime, \
                         tokenizer, batch_window=adaptive|fixed, max_batch_size, max_queue_delay_ms, max_queue_delay_us, max_queue)"
                    )));
                }
            }
        }
        Ok(config)
    }
}

impl ModelConfig {
    /// The config for a repository load request (REST and gRPC alike). `parameters` are the
    /// request's `(key, value)` pairs: `path` (a new model, or a new file for a known one) and the
    /// `--model` options. No parameters: reload `known` as it is (`None`).
    pub fn for_load(
        name: &str,
        known: Option<&ModelConfig>,
        parameters: &[(String, String)],
    ) -> Result<Option<Self>> {
        if parameters.is_empty() {
            return Ok(None);
        }
        let path = parameters
            .iter()
            .find(|(k, _)| k == "path")
            .map(|(_, v)| v.clone());
        let mut spec = match (path, known) {
            (Some(path), _) => format!("{name}={path}"),
            (None, Some(k)) => format!("{name}={}", k.path.display()),
            (None, None) => {
                return Err(Error::ModelNotFound {
                    model: name.to_string(),
                });
            }
        };
        for (key, value) in parameters.iter().filter(|(k, _)| k != "path") {
            spec.push_str(&format!(",{key}={value}"));
        }
        Self::parse(&spec)
            .map(Some)
            .map_err(|e| Error::invalid(e.to_string().replace("--model", "load parameters")))
    }
}

/// Model names become URL path segments and metric labels: keep them plain.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Everything `ferry server` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Also serve REST on this Unix socket (a co-located router skips the TCP stack); a stale
    /// socket file at the path is replaced, and the file is removed on shutdown.
    pub http_unix: Option<std::path::PathBuf>,
    /// Also serve gRPC on this Unix socket; as `http_unix`.
    pub grpc_unix: Option<std::path::PathBuf>,
    pub models: Vec<ModelConfig>,
    /// Largest request body (REST) or message (gRPC); larger ones get 413 / RESOURCE_EXHAUSTED.
    pub max_body_bytes: usize,
    /// Threads that may run inference at once (the bounded compute pool).
    pub compute_threads: usize,
    /// Where remote models are cached (shared by every server on the node that names it).
    pub model_cache: std::path::PathBuf,
    /// The cache's size limit; least recently used entries go beyond it.
    pub model_cache_bytes: u64,
    /// A pool server's memory budget: the resident models' footprints stay within it, the
    /// least recently used evicted to make room for one requested (`None`: no budget).
    pub memory_budget: Option<u64>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_addr: ([127, 0, 0, 1], 8000).into(),
            grpc_addr: ([127, 0, 0, 1], 8001).into(),
            http_unix: None,
            grpc_unix: None,
            models: Vec::new(),
            max_body_bytes: 64 << 20,
            compute_threads: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            model_cache: std::env::temp_dir().join("ferry-model-cache"),
            model_cache_bytes: 20 << 30,
            memory_budget: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_parameters_reuse_the_model_flag_syntax() {
        let known = ModelConfig::new("iris", "old.onnx");
        let p = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            ModelConfig::for_load("iris", Some(&known), &[]).unwrap(),
            None
        );
        let c = ModelConfig::for_load("iris", Some(&known), &p(&[("max_batch_size", "8")]))
            .unwrap()
            .unwrap();
        assert_eq!((c.path, c.max_batch_size), (PathBuf::from("old.onnx"), 8));
        let c = ModelConfig::for_load("new", None, &p(&[("path", "n.onnx")]))
            .unwrap()
            .unwrap();
        assert_eq!(c.path, PathBuf::from("n.onnx"));
        assert!(matches!(
            ModelConfig::for_load("new", None, &p(&[("max_queue", "3")])),
            Err(Error::ModelNotFound { .. })
        ));
        let err = ModelConfig::for_load("new", None, &p(&[("path", "n.onnx"), ("colour", "red")]))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("load parameters"), "{err}");
    }

    #[test]
    fn parses_model_flag_with_options() {
        let c = ModelConfig::parse(
            "minilm=models/minilm/model.onnx,tokenizer=t.json,max_batch_size=32,max_queue_delay_ms=3,max_queue=9,version=7",
        )
        .unwrap();
        assert_eq!(c.name, "minilm");
        assert_eq!(c.path, PathBuf::from("models/minilm/model.onnx"));
        assert_eq!(c.tokenizer, Some(PathBuf::from("t.json")));
        assert_eq!(c.max_batch_size, 32);
        assert_eq!(c.max_queue_delay, Duration::from_millis(3));
        assert_eq!(c.max_queue, 9);
        assert_eq!(c.version, "7");
        assert!(c.batching());
    }

    #[test]
    fn rejects_bad_model_flags_naming_the_part() {
        for (spec, needle) in [
            ("iris", "expected NAME=PATH"),
            ("ir/is=x.onnx", "name 'ir/is'"),
            ("iris=", "PATH is empty"),
            ("iris=x.onnx,max_batch_size=-1", "max_batch_size must be"),
            (
                "iris=x.onnx,colour=red",
                "unknown or invalid option 'colour=red'",
            ),
        ] {
            let err = ModelConfig::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }
}
