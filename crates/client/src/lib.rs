//! A Rust client for scan-gateway's `ScanService` (`defender.scan.v1`).
//!
//! - Errors are typed ([`Error`], [`ErrorKind`]): the gateway's `google.rpc` details decoded
//!   (field violations, the resource not found, the `ErrorInfo` reason, `RetryInfo`).
//! - Every call takes [`CallOptions`]: a timeout sent as the gRPC deadline; for streams it
//!   covers the whole stream, resumes included.
//! - [`ScanClient::run_scan`] and [`ScanClient::watch_scan`] return streams that resume by
//!   themselves (see [`follow`]): a caller sees the scan to its end across gateway restarts.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use scan_gateway_client::{CallOptions, ScanClient, Update, pb};
//! use futures_util::StreamExt;
//!
//! let client = ScanClient::connect_lazy("http://scan-gateway:50051")?;
//! let mut scan = client.run_scan(
//!     pb::RunScanRequest {
//!         machine_id: "1e5bc9d7e413ddd7902c2932e418702b84d0cc07".into(),
//!         scan_type: pb::ScanType::Quick as i32,
//!         comment: "alert 4711: suspicious download".into(),
//!         request_id: "alert-4711".into(),
//!         priority: pb::Priority::Urgent as i32,
//!     },
//!     CallOptions::default(),
//! );
//! while let Some(update) = scan.next().await {
//!     if let Update::Action { action, .. } = update? {
//!         println!("{} {:?}", action.id, action.status());
//!     }
//! }
//! # Ok(()) }
//! ```

mod error;
pub mod follow;

use std::time::Duration;

use http_body::Body;
use tonic::{
    client::GrpcService,
    transport::{Channel, Endpoint},
};

pub use error::{Error, ErrorKind, FieldViolation};
pub use follow::{ResumePolicy, ScanStream, Update};

/// The generated messages and client of `defender.scan.v1`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("defender.scan.v1");
}

use pb::scan_service_client::ScanServiceClient;

/// Per-call settings.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// The call's deadline, sent to the gateway (`grpc-timeout`); for a stream, the whole
    /// stream's, resumes included. `None`: no deadline.
    pub timeout: Option<Duration>,
}

impl CallOptions {
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
        }
    }
}

/// A `ScanService` client over `T` (a [`Channel`], or one wrapped with an interceptor that
/// adds credentials).
#[derive(Debug, Clone)]
pub struct ScanClient<T = Channel> {
    inner: ScanServiceClient<T>,
    policy: ResumePolicy,
}

impl ScanClient<Channel> {
    /// A client of the gateway at `address` (`http://host:port`). The channel connects on first
    /// use and reconnects by itself, so a resumed stream reaches whichever replica answers.
    /// TLS and other settings: build an [`Endpoint`] and use [`ScanClient::new`] with
    /// `endpoint.connect_lazy()`.
    pub fn connect_lazy(address: impl Into<String>) -> Result<Self, tonic::transport::Error> {
        Ok(Self::new(
            Endpoint::from_shared(address.into())?.connect_lazy(),
        ))
    }
}

impl<T> ScanClient<T>
where
    T: GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    pub fn new(service: T) -> Self {
        Self {
            inner: ScanServiceClient::new(service),
            policy: ResumePolicy::default(),
        }
    }

    /// How streams resume (the default: 20 attempts, backoff from 100 ms to 5 s).
    pub fn with_resume_policy(mut self, policy: ResumePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Starts a scan (or, with a `request_id` used before, returns the scan it started).
    pub async fn start_scan(
        &self,
        request: pb::StartScanRequest,
        options: CallOptions,
    ) -> Result<pb::StartScanResponse, Error> {
        let request = with_options(request, options);
        Ok(self.inner.clone().start_scan(request).await?.into_inner())
    }

    /// Reads an action: the answer's `observed_at` says how old it is; `fresh` in the request
    /// asks for a read from Defender now.
    pub async fn get_scan(
        &self,
        request: pb::GetScanRequest,
        options: CallOptions,
    ) -> Result<pb::GetScanResponse, Error> {
        let request = with_options(request, options);
        Ok(self.inner.clone().get_scan(request).await?.into_inner())
    }

    /// Cancels a scan.
    pub async fn cancel_scan(
        &self,
        request: pb::CancelScanRequest,
        options: CallOptions,
    ) -> Result<pb::CancelScanResponse, Error> {
        let request = with_options(request, options);
        Ok(self.inner.clone().cancel_scan(request).await?.into_inner())
    }

    /// Lists scans (one page).
    pub async fn list_scans(
        &self,
        request: pb::ListScansRequest,
        options: CallOptions,
    ) -> Result<pb::ListScansResponse, Error> {
        let request = with_options(request, options);
        Ok(self.inner.clone().list_scans(request).await?.into_inner())
    }

    /// Starts a scan and follows it to its final status, resuming by itself (see [`follow`]).
    /// Give the request a `request_id` so that a start cut before its answer can be resumed too.
    pub fn run_scan(&self, request: pb::RunScanRequest, options: CallOptions) -> ScanStream {
        follow::follow(
            self.inner.clone(),
            Some(request),
            None,
            options.timeout,
            self.policy.clone(),
        )
    }

    /// Follows an existing action to its final status, resuming by itself.
    pub fn watch_scan(&self, action_id: impl Into<String>, options: CallOptions) -> ScanStream {
        follow::follow(
            self.inner.clone(),
            None,
            Some(action_id.into()),
            options.timeout,
            self.policy.clone(),
        )
    }
}

fn with_options<M>(message: M, options: CallOptions) -> tonic::Request<M> {
    let mut request = tonic::Request::new(message);
    if let Some(timeout) = options.timeout {
        request.set_timeout(timeout);
    }
    request
}
