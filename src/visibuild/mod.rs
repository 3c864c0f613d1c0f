//! visibuild (stub)
