//! reqwest as a `tower::Service`, so the layers stack on top of it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tower::Service;

use super::{Deadline, Error, Request, Response};
use crate::call::api_of;

/// Idle upstream connections kept per host for reuse.
const MAX_IDLE_CONNECTIONS: usize = 64;

/// Largest response body read (a full `$top=10000` list page is a few MiB).
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Sends a request with reqwest (rustls) and buffers the whole answer.
#[derive(Debug, Clone)]
pub struct HttpService {
    client: reqwest::Client,
    timeout: Duration,
}

impl HttpService {
    /// `timeout` bounds one exchange; a request's [`Deadline`] shortens it further.
    pub fn new(client: reqwest::Client, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    /// The client the gateway uses for every outbound call: rustls, HTTP/2 when offered.
    pub fn default_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            // Defender speaks HTTP/2 (one connection carries every call); over HTTP/1.1 a
            // burst of calls opens a connection each, and without a bound every one of them
            // would stay in the pool, with its buffers, after the burst.
            .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
            .user_agent(concat!("scan-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
    }
}

impl Service<Request> for HttpService {
    type Response = Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // reqwest's pool queues internally; there is no readiness to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let client = self.client.clone();
        let mut timeout = self.timeout;
        Box::pin(async move {
            let api = api_of(&request);
            let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(Error::DeadlineExceeded { api, sent: false });
                }
                timeout = timeout.min(left);
            }
            // A timeout that the caller's deadline imposed is the caller's deadline passing,
            // not an upstream fault; once connected, the request may have taken effect.
            let classify = move |err: reqwest::Error| {
                let deadline_passed = deadline.is_some_and(|d| d <= tokio::time::Instant::now());
                if err.is_timeout() && deadline_passed {
                    Error::DeadlineExceeded {
                        api,
                        sent: !err.is_connect(),
                    }
                } else {
                    Error::transport(api, &err)
                }
            };
            let mut request = reqwest::Request::try_from(request).map_err(classify)?;
            *request.timeout_mut() = Some(timeout);
            let mut response = client.execute(request).await.map_err(classify)?;

            let status = response.status();
            let headers = std::mem::take(response.headers_mut());
            // A body that arrives in one chunk (the usual answer) is kept as it is; only a
            // body in several chunks is copied together.
            let mut first: Option<Bytes> = None;
            let mut rest = BytesMut::new();
            let mut len = 0;
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                len += chunk.len();
                if len > MAX_BODY_BYTES {
                    return Err(Error::Malformed {
                        api,
                        detail: format!("response body larger than {MAX_BODY_BYTES} bytes"),
                    });
                }
                match first.take() {
                    None if rest.is_empty() => first = Some(chunk),
                    earlier => {
                        if let Some(earlier) = earlier {
                            rest.extend_from_slice(&earlier);
                        }
                        rest.extend_from_slice(&chunk);
                    }
                }
            }
            let body = first.unwrap_or_else(|| rest.freeze());
            let mut out = http::Response::new(body);
            *out.status_mut() = status;
            *out.headers_mut() = headers;
            Ok(out)
        })
    }
}
