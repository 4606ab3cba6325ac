//! Sentences in, embeddings out: a BERT-style ONNX model behind a `tokenizer.json`.
//!
//! The model is exposed with one BYTES input `text` (one UTF-8 sentence per row) and one output
//! `sentence_embedding` FP32 `[-1, hidden]`. Sentences of one call (a request, or a whole dynamic
//! batch) are padded to the longest of them; the graph's attention mask keeps padding out of the
//! pooled embedding, so batching does not change the answer.

use std::path::Path;

use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::{Backend, BackendFailure, Signature, TensorSpec};
use crate::tensor::{DataType, Tensor, TensorData};

/// Longest token sequence fed to the model (sentence-transformers' limit for MiniLM).
const MAX_TOKENS: usize = 256;
const OUTPUT: &str = "sentence_embedding";

pub struct TextBackend {
    model: Box<dyn Backend>,
    tokenizer: Tokenizer,
    signature: Signature,
    /// Indices of input_ids / attention_mask / token_type_ids in the model's inputs.
    feeds: Vec<Feed>,
    output_index: usize,
}

#[derive(Clone, Copy)]
enum Feed {
    Ids,
    Mask,
    TypeIds,
}

impl TextBackend {
    /// Puts the tokenizer at `tokenizer_path` in front of `model` (a BERT-style graph).
    pub fn new(model: Box<dyn Backend>, tokenizer_path: &Path) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_file(tokenizer_path)
            .map_err(|e| format!("cannot read tokenizer {}: {e}", tokenizer_path.display()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        let feeds = model
            .signature()
            .inputs
            .iter()
            .map(|spec| match spec.name.as_str() {
                "input_ids" => Ok(Feed::Ids),
                "attention_mask" => Ok(Feed::Mask),
                "token_type_ids" => Ok(Feed::TypeIds),
                other => Err(format!(
                    "text model input '{other}' is not one of input_ids, attention_mask, token_type_ids"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output_index = model
            .signature()
            .outputs
            .iter()
            .position(|o| o.name == OUTPUT)
            .ok_or_else(|| format!("text model has no '{OUTPUT}' output"))?;
        let out_spec = &model.signature().outputs[output_index];
        let signature = Signature {
            inputs: vec![TensorSpec {
                name: "text".into(),
                datatype: DataType::Bytes,
                shape: vec![-1],
            }],
            outputs: vec![TensorSpec {
                name: OUTPUT.into(),
                datatype: DataType::F32,
                shape: vec![-1, *out_spec.shape.last().unwrap_or(&-1)],
            }],
        };
        Ok(Self {
            model,
            tokenizer,
            signature,
            feeds,
            output_index,
        })
    }
}

impl Backend for TextBackend {
    fn platform(&self) -> &'static str {
        "onnx+tokenizer"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn parallelism(&self) -> usize {
        self.model.parallelism()
    }

    fn infer(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, BackendFailure> {
        let Some(TensorData::Bytes(items)) = inputs.into_iter().next().map(|t| t.data) else {
            return Err(BackendFailure::BadInput(
                "input 'text' must be BYTES".into(),
            ));
        };
        let sentences = items
            .iter()
            .enumerate()
            .map(|(i, b)| {
                std::str::from_utf8(b).map_err(|_| {
                    BackendFailure::BadInput(format!("input 'text': element {i} is not UTF-8"))
                })
            })
            .collect::<Result<Vec<&str>, _>>()?;
        let encodings = self
            .tokenizer
            .encode_batch(sentences, true)
            .map_err(|e| BackendFailure::Failed(format!("tokenizer: {e}")))?;
        let rows = encodings.len();
        let width = encodings.first().map_or(0, |e| e.get_ids().len());
        let gather = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Vec<i64> {
            let mut out = Vec::with_capacity(rows * width);
            for e in &encodings {
                out.extend(f(e).iter().map(|v| i64::from(*v)));
            }
            out
        };
        let feeds: Vec<Tensor> = self
            .feeds
            .iter()
            .zip(&self.model.signature().inputs)
            .map(|(feed, spec)| Tensor {
                name: spec.name.clone(),
                shape: vec![rows, width],
                data: TensorData::I64(match feed {
                    Feed::Ids => gather(&|e| e.get_ids()),
                    Feed::Mask => gather(&|e| e.get_attention_mask()),
                    Feed::TypeIds => gather(&|e| e.get_type_ids()),
                }),
            })
            .collect();
        let mut outputs = self.model.infer(feeds)?;
        if self.output_index >= outputs.len() {
            return Err(BackendFailure::Failed(
                "model returned too few outputs".into(),
            ));
        }
        Ok(vec![outputs.swap_remove(self.output_index)])
    }
}
