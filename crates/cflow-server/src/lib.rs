//! The cflow API gateway: axum routes under `/api/v1`, authentication, authorization, rate
//! limits, audit, metrics and the OpenAPI document.

pub mod config;

pub use config::{RateLimitConfig, ServerConfig};
