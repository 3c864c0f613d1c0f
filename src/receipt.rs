//! `import-receipt.txt`: the small text attachment `--receipts` gives a ticket without
//! files, made from the ticket's own data, so its create can be proven after a lost answer.

use crate::domain::ProjectId;
use time::OffsetDateTime;

/// The receipt's file name, as Visibuild shows it.
pub const FILENAME: &str = "import-receipt.txt";
/// Its content type.
pub const CONTENT_TYPE: &str = "text/plain";

/// What a receipt says. Made once, when the ticket is loaded, and stored with it: every
/// retry uploads the same bytes (same MD5).
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    pub manifest: &'a str,
    pub batch: &'a str,
    pub reference: &'a str,
    pub project_id: ProjectId,
    pub loaded_at: OffsetDateTime,
}

impl Receipt<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        let loaded = self
            .loaded_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        format!(
            "Imported into Visibuild by visibuild-import.\n\
             manifest: {}\nref: {}\nproject_id: {}\nbatch: {}\nloaded: {loaded}\n",
            self.manifest, self.reference, self.project_id, self.batch
        )
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_names_the_manifest_ref_project_batch_and_load_time_the_same_every_time() {
        let receipt = Receipt {
            manifest: "defects.csv",
            batch: "nightly",
            reference: "HV-0101",
            project_id: ProjectId(uuid::Uuid::nil()),
            loaded_at: time::macros::datetime!(2026-12-01 20:00 UTC),
        };
        let text = String::from_utf8(receipt.bytes()).unwrap();
        assert_eq!(
            text,
            "Imported into Visibuild by visibuild-import.\nmanifest: defects.csv\nref: HV-0101\n\
             project_id: 00000000-0000-0000-0000-000000000000\nbatch: nightly\n\
             loaded: 2026-12-01T20:00:00Z\n"
        );
        assert_eq!(receipt.bytes(), receipt.bytes());
    }
}
