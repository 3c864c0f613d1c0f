//! visibuild-import: bulk-imports defect tickets with their photos and documents into
//! Visibuild through a durable job queue (an embedded SQLite file, or Postgres) and a
//! rate-limited worker pool.
#![forbid(unsafe_code)]

pub mod app;
pub mod bandwidth;
pub mod cli;
pub mod domain;
pub mod human;
pub mod ingest;
pub mod manifest;
pub mod outage;
pub mod pipeline;
pub mod rate;
pub mod receipt;
pub mod secret;
pub mod store;
pub mod ui;
pub mod visibuild;
