//! The router's copy of `ferry_server::rest::linger` (the two crates share no dependency that
//! could hold it). A body refused with 413 is still read — and thrown away — up to a bound, after the answer
//! is sent: a client that writes its whole body before it reads (urllib, requests,
//! tritonclient) then receives the 413 instead of a reset connection (closing a socket with
//! unread data sends RST). Past the bound the connection is dropped.

use std::time::Duration;

use http_body_util::BodyExt;

/// Most bytes read after a refusal.
pub const LINGER_BYTES: usize = 64 << 20;
/// Longest a refused body is read for.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// Reads what is left of `body` in the background, within [`LINGER_BYTES`] and [`LINGER_TIME`].
pub fn linger<B>(mut body: B)
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
{
    tokio::spawn(async move {
        let drain = async {
            let mut read = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read += bytes::Buf::remaining(data);
                    if read > LINGER_BYTES {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
