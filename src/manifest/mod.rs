//! manifest (stub)
