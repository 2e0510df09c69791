//! repofs: mounts remote repositories (git hosts over smart HTTP) as
//! read-only, lazily fetched directory trees.
//!
//! Layers, from the kernel inwards: [`fs`] (the FUSE adapter) reads through
//! the [`source::Source`] trait; [`source::git`] implements it over git's
//! protocol v2; [`cache`] stores fetched bytes on disk. [`daemon`] ties them
//! together for `repofs mount`, [`check`] is `repofs check`, and [`config`]
//! is the only place that reads the TOML file; [`status`] is `repofs status` and [`repo_cmd`] is `repofs repo`.

pub mod auth;
pub mod cache;
pub mod check;
pub mod config;
pub mod daemon;
pub mod fetch;
pub mod fs;
pub mod metrics;
pub mod mountinfo;
pub mod overlay;
pub mod prefetch;
pub mod private;
pub mod redact;
pub mod repo_cmd;
pub mod shared;
pub mod source;
pub mod status;
pub mod url_mount;
