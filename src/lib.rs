//! scan-gateway: a gRPC gateway that runs Microsoft Defender for Endpoint antivirus scans.
//!
//! Data flow: [`grpc`] (validate, map errors) → [`scans`] (the domain) → [`upstream`] (typed
//! Defender calls) → [`layers`] (trace, quota, auth) → reqwest. The `defender-simulator`
//! crate (`crates/simulator`) plays the Defender API for demos and tests.
#![forbid(unsafe_code)]

pub mod admin;
pub mod call;
pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod idempotency;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod quota;
pub mod redis_link;
pub mod scans;
pub mod security;
pub mod startup;
pub mod supervisor;
pub mod telemetry;
pub mod upstream;
pub mod watcher;
