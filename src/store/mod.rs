pub mod status;
pub mod tickets;
