//! Registers in their own shape: a CSV of any delimiter or a spreadsheet, and a map file
//! (`--map`) that turns each row into the manifest's row before the manifest's rules run.

pub(crate) mod guess;
mod map;
mod mapping;
mod sheet;

pub(crate) use map::Map;
pub use map::MapError;
pub(crate) use mapping::Mapped;
pub use sheet::SheetError;
pub(crate) use sheet::{Sheet, is_spreadsheet};
