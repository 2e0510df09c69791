//! The network engine's shared parts, used by every source (git objects
//! and trees, LFS, host APIs, GitHub App tokens): one retry policy
//! ([`retry`]), one floor under transfer speed ([`speed`]), one HTTP client
//! pool per daemon ([`http`]) and one bridge from FUSE threads into the
//! runtime with a bound on every wait ([`bridge`]).
//!
//! Nothing here knows git, S3 or FUSE: a source decides what to fetch, this
//! decides how long to wait, when to give up and when to try again.

pub mod bridge;
pub mod http;
pub mod retry;
pub mod speed;

pub use retry::{Policy, Retryable};
pub use speed::LowSpeed;
