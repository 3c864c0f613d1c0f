//! The command line: clap types that become validated settings here and go no further.
//! (Skeleton: the lead owns this module; `sandbox_args` is the sandbox subcommand's flags.)

pub mod sandbox_args;
