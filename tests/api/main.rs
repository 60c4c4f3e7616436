//! Integration tests: a simulator and a gateway on ephemeral loopback ports, talked to over
//! gRPC with the generated client (and, in `tools`, with grpcurl and Python grpcio).

mod certificate_assertion;
mod cli;
mod cli_security;
mod client_crate;
mod collector;
mod connections;
mod credentials;
mod errors;
mod faults;
mod h2_malformed;
mod helpers;
mod idempotency;
mod limits;
mod malformed;
mod observability;
mod outage;
mod pki;
mod priority;
mod process;
mod reads;
mod scan_only;
mod scan_semantics;
mod scan_service;
mod security;
mod tools;
mod validation;
mod watcher;
