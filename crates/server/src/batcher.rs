//! Dynamic batching: requests for one model that arrive within `max_queue_delay` of each other are
//! stacked along their first axis, run once, and the outputs are split back row by row.
//!
//! Only requests whose inputs agree on every non-leading dimension are stacked together; others in
//! the same window run as their own group. [`concat`] and [`split`] are pure and tested below.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::backend::Backend;
use crate::repository::{BackendFailure, call_backend};
use crate::tensor::{Tensor, TensorData};

/// One request waiting for its batch.
pub struct BatchJob {
    pub inputs: Vec<Tensor>,
    pub reply: oneshot::Sender<(Result<Vec<Tensor>, BackendFailure>, Ran)>,
}

/// When a request's batch ran, for its trace (queue, batch, compute).
#[derive(Debug, Clone, Copy)]
pub struct Ran {
    /// Its batch began to run: the request's wait in the queue ended.
    pub batched: SystemTime,
    /// The model's call on the batch's stacked inputs.
    pub compute: (SystemTime, SystemTime),
    /// The answers were split back.
    pub finished: SystemTime,
    /// Rows and requests in the batch.
    pub rows: usize,
    pub requests: usize,
}

fn rows(job: &BatchJob) -> usize {
    job.inputs
        .first()
        .and_then(|t| t.shape.first())
        .copied()
        .unwrap_or(1)
}

/// Starts the batching task of one model; returns where to send requests.
pub fn spawn(
    backend: Arc<dyn Backend>,
    compute: Arc<Semaphore>,
    max_batch_size: usize,
    max_queue_delay: Duration,
    adaptive: bool,
    batch_sizes: Histogram,
    queue_capacity: usize,
) -> mpsc::Sender<BatchJob> {
    let (tx, rx) = mpsc::channel(queue_capacity.max(1));
    tokio::spawn(run(
        rx,
        backend,
        compute,
        max_batch_size,
        max_queue_delay,
        adaptive,
        batch_sizes,
    ));
    tx
}

async fn run(
    mut rx: mpsc::Receiver<BatchJob>,
    backend: Arc<dyn Backend>,
    compute: Arc<Semaphore>,
    max_batch_size: usize,
    max_queue_delay: Duration,
    adaptive: bool,
    batch_sizes: Histogram,
) {
    // Batches of this model that may run at once (1 for a backend that serializes its calls).
    let slots = Arc::new(Semaphore::new(
        backend.parallelism().clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut carried: Option<BatchJob> = None;
    loop {
        let first = match carried.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let mut total = rows(&first);
        let mut jobs = vec![first];
        let deadline = Instant::now() + max_queue_delay;
        // Adaptive window: take what is already queued; then, if an execution slot is free, go
        // now (an idle model adds no delay); otherwise keep collecting until a slot frees, the
        // batch is full, or max_queue_delay has passed. A fixed window always waits the delay
        // (or until the batch is full), as Triton does.
        // Both an execution slot of this model and a thread of the shared compute pool.
        let ready = || {
            let slots = slots.clone();
            let compute = compute.clone();
            async move {
                let slot = slots.acquire_owned().await.ok()?;
                let permit = compute.acquire_owned().await.ok()?;
                Some((slot, permit))
            }
        };
        let acquired = loop {
            if total >= max_batch_size {
                break ready().await;
            }
            tokio::select! {
                biased;
                job = rx.recv() => match job {
                    Some(job) => {
                        let r = rows(&job);
                        if total + r > max_batch_size {
                            carried = Some(job);
                            break ready().await;
                        }
                        total += r;
                        jobs.push(job);
                    }
                    None => break ready().await,
                },
                acquired = ready(), if adaptive => break acquired,
                () = tokio::time::sleep_until(deadline) => break ready().await,
            }
        };
        let Some((slot, permit)) = acquired else {
            return;
        };
        let backend = backend.clone();
        let batch_sizes = batch_sizes.clone();
        tokio::task::spawn_blocking(move || {
            for group in group_compatible(jobs) {
                execute(backend.as_ref(), group, &batch_sizes);
            }
            drop(permit);
            drop(slot);
        });
    }
}

/// Splits jobs into groups that can be stacked: same input count and equal trailing dimensions.
fn group_compatible(jobs: Vec<BatchJob>) -> Vec<Vec<BatchJob>> {
    let mut groups: Vec<Vec<BatchJob>> = Vec::new();
    for job in jobs {
        let key = |j: &BatchJob| -> Vec<Vec<usize>> {
            j.inputs
                .iter()
                .map(|t| t.shape.get(1..).unwrap_or_default().to_vec())
                .collect()
        };
        let k = key(&job);
        match groups.iter_mut().find(|g| key(&g[0]) == k) {
            Some(group) => group.push(job),
            None => groups.push(vec![job]),
        }
    }
    groups
}

fn execute(backend: &dyn Backend, mut group: Vec<BatchJob>, batch_sizes: &Histogram) {
    let batched = SystemTime::now();
    let timed = |stacked: Vec<Tensor>| {
        let start = SystemTime::now();
        let result = call_backend(backend, stacked);
        (result, (start, SystemTime::now()))
    };
    if group.len() == 1 {
        let job = group.pop().expect("one job");
        let rows = rows(&job);
        batch_sizes.observe(rows as f64);
        let (result, compute) = timed(job.inputs);
        let ran = Ran {
            batched,
            compute,
            finished: SystemTime::now(),
            rows,
            requests: 1,
        };
        let _ = job.reply.send((result, ran));
        return;
    }
    let row_counts: Vec<usize> = group.iter().map(rows).collect();
    let total: usize = row_counts.iter().sum();
    batch_sizes.observe(total as f64);
    let mut replies = Vec::with_capacity(group.len());
    let mut inputs = Vec::with_capacity(group.len());
    for job in group {
        replies.push(job.reply);
        inputs.push(job.inputs);
    }
    let mut compute = (batched, batched);
    let result = concat(&inputs)
        .ok_or_else(|| BackendFailure::Failed("batch inputs disagree".into()))
        .and_then(|stacked| {
            let (result, times) = timed(stacked);
            compute = times;
            result
        })
        .and_then(|outputs| {
            split(outputs, &row_counts).ok_or_else(|| {
                BackendFailure::Failed("model outputs do not keep the batch dimension".into())
            })
        });
    let ran = Ran {
        batched,
        compute,
        finished: SystemTime::now(),
        rows: total,
        requests: replies.len(),
    };
    match result {
        Ok(per_job) => {
            for (reply, outputs) in replies.into_iter().zip(per_job) {
                let _ = reply.send((Ok(outputs), ran));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send((Err(e.clone()), ran));
            }
        }
    }
}

/// Stacks the requests' inputs along axis 0. `None` when they disagree in count, type or shape.
pub fn concat(requests: &[Vec<Tensor>]) -> Option<Vec<Tensor>> {
    let first = requests.first()?;
    let mut stacked: Vec<Tensor> = first.clone();
    for request in &requests[1..] {
        if request.len() != stacked.len() {
            return None;
        }
        for (acc, t) in stacked.iter_mut().zip(request) {
            if acc.name != t.name
                || acc.shape.len() != t.shape.len()
                || acc.shape.is_empty()
                || acc.shape[1..] != t.shape[1..]
            {
                return None;
            }
            if !acc.data.extend_from(&t.data) {
                return None;
            }
            acc.shape[0] += t.shape[0];
        }
    }
    Some(stacked)
}

/// Splits batched outputs back into one output list per request with `row_counts[i]` rows.
pub fn split(outputs: Vec<Tensor>, row_counts: &[usize]) -> Option<Vec<Vec<Tensor>>> {
    let total: usize = row_counts.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> =
        vec![Vec::with_capacity(outputs.len()); row_counts.len()];
    for output in outputs {
        if output.shape.first() != Some(&total) || total == 0 {
            return None;
        }
        let per_row = output.data.len() / total;
        let mut start_row = 0;
        for (i, rows) in row_counts.iter().enumerate() {
            let data: TensorData = output
                .data
                .slice(start_row * per_row, (start_row + rows) * per_row);
            let mut shape = output.shape.clone();
            shape[0] = *rows;
            per_request[i].push(Tensor {
                name: output.name.clone(),
                shape,
                data,
            });
            start_row += rows;
        }
    }
    Some(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: usize, values: Vec<f32>) -> Tensor {
        let cols = values.len() / rows;
        Tensor {
            name: "input".into(),
            shape: vec![rows, cols],
            data: TensorData::F32(values),
        }
    }

    #[test]
    fn concat_then_split_round_trips() {
        let a = vec![t(1, vec![1.0, 2.0])];
        let b = vec![t(2, vec![3.0, 4.0, 5.0, 6.0])];
        let stacked = concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(stacked[0].shape, vec![3, 2]);
        let back = split(stacked, &[1, 2]).unwrap();
        assert_eq!(back, vec![a, b]);
    }

    #[test]
    fn concat_refuses_mismatched_trailing_dims() {
        let a = vec![t(1, vec![1.0, 2.0])];
        let b = vec![t(1, vec![1.0, 2.0, 3.0])];
        assert!(concat(&[a, b]).is_none());
    }

    #[test]
    fn split_refuses_outputs_without_batch_dim() {
        let out = vec![Tensor {
            name: "o".into(),
            shape: vec![5],
            data: TensorData::F32(vec![0.0; 5]),
        }];
        assert!(split(out, &[1, 2]).is_none());
    }
}
