//! The CSV layer of a manifest: streams records with their true first line number and
//! turns malformed input (field count, open quote, bad UTF-8, NUL bytes) into messages.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::rc::Rc;

/// One field of a record: text, or bytes that cannot be kept as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Field {
    Text(String),
    Unreadable(Unreadable),
}

/// Why a field's bytes are not text the store can hold, or why a register's value has no
/// manifest value (a map's translation refused it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unreadable {
    NotUtf8,
    /// Valid UTF-8, but Postgres `text` refuses a NUL byte (and C strings end at one).
    Nul,
    /// The register's value is not one the map translates: the whole message.
    Refused(String),
}

impl Field {
    /// The trimmed text, `None` when blank or unreadable.
    pub fn value(&self) -> Option<&str> {
        match self {
            Field::Text(text) => Some(text.trim()).filter(|t| !t.is_empty()),
            Field::Unreadable(_) => None,
        }
    }

    pub fn unreadable(&self) -> Option<&Unreadable> {
        match self {
            Field::Text(_) => None,
            Field::Unreadable(why) => Some(why),
        }
    }
}

/// Where a pass takes its records from: a CSV file, a spreadsheet's sheet, or a register
/// mapped into the manifest's columns.
pub(crate) trait RecordSource {
    fn next_record(&mut self) -> Next;
}

impl<T: RecordSource + ?Sized> RecordSource for Box<T> {
    fn next_record(&mut self) -> Next {
        (**self).next_record()
    }
}

/// The delimiters a CSV register may use, in the order a tie is settled.
pub(crate) const DELIMITERS: [u8; 4] = [b',', b';', b'\t', b'|'];

/// The delimiter of a CSV file, from its header line (the first non-blank line after
/// `skip_lines` lines): the candidate found most often outside quotes (`,` when none is).
pub(crate) fn detect_delimiter(head: &[u8], skip_lines: u64) -> u8 {
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let mut rest = text;
    for _ in 0..skip_lines {
        match rest.iter().position(|&b| b == b'\n') {
            Some(at) => rest = &rest[at + 1..],
            None => rest = &[],
        }
    }
    let counts = delimiter_counts(rest.trim_ascii_start());
    let mut best = 0;
    for i in 1..DELIMITERS.len() {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    DELIMITERS[best]
}

/// The delimiter of a CSV file whose header line is not known: the one found most often
/// on any of its first lines (a register may have title lines above its header).
pub(crate) fn guess_delimiter(head: &[u8]) -> u8 {
    let mut best = (0, b',');
    for skip in 0..20 {
        let d = detect_delimiter(head, skip);
        let mut rest = head;
        for _ in 0..skip {
            let at = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |a| a + 1);
            rest = &rest[at..];
        }
        let i = DELIMITERS.iter().position(|&x| x == d).unwrap_or(0);
        let count = delimiter_counts(rest.trim_ascii_start())[i];
        if count > best.0 {
            best = (count, d);
        }
    }
    best.1
}

/// How often each candidate delimiter occurs outside quotes on the first line of `text`.
fn delimiter_counts(text: &[u8]) -> [usize; DELIMITERS.len()] {
    let mut counts = [0usize; DELIMITERS.len()];
    let mut in_quotes = false;
    for &b in text {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' | b'\r' if !in_quotes => break,
            _ if !in_quotes => {
                if let Some(i) = DELIMITERS.iter().position(|&d| d == b) {
                    counts[i] += 1;
                }
            }
            _ => {}
        }
    }
    counts
}

/// What the next read produced.
#[derive(Debug)]
pub(crate) enum Next {
    /// A well-formed record starting at `line`.
    Record {
        line: u64,
        fields: Vec<Field>,
    },
    /// A record that cannot be trusted; `fields` is what could be read of it.
    Malformed {
        line: u64,
        message: String,
        fields: Vec<Field>,
    },
    /// Reading stopped (an I/O error mid-file).
    Fatal {
        line: u64,
        message: String,
    },
    End,
}

/// Streams the records of a manifest file.
pub(crate) struct Records {
    csv: csv::Reader<Tracked>,
    lines: Rc<RefCell<LineTracker>>,
    /// A second handle on the manifest, to rescan its last record; `None` for a pipe.
    tail: Option<(File, u64)>,
    record: csv::ByteRecord,
    delimiter: u8,
    /// The bytes skipped before the first record read (title rows).
    base: u64,
}

impl Records {
    /// `source` yields the manifest from its first byte; `tail` is a second handle on the
    /// same (regular) file and its length, used only to look at the last record for an
    /// unterminated quote. The first `skip_lines` lines (a register's title rows above its
    /// header) are passed over unread; lines keep their numbers in the file.
    pub fn new(
        source: Box<dyn Read>,
        tail: Option<(File, u64)>,
        delimiter: u8,
        skip_lines: u64,
    ) -> Self {
        let mut source = io::BufReader::new(source);
        let mut skipped = 0u64;
        let mut base = 0u64;
        let mut line = Vec::new();
        while skipped < skip_lines {
            line.clear();
            match io::BufRead::read_until(&mut source, b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    base += n as u64;
                    skipped += u64::from(line.ends_with(b"\n"));
                }
            }
        }
        let lines = Rc::new(RefCell::new(LineTracker {
            newlines_before: skipped,
            ..LineTracker::default()
        }));
        let tracked = Tracked {
            inner: Box::new(source),
            offset: 0,
            lines: Rc::clone(&lines),
        };
        let csv = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(false)
            .flexible(false)
            .from_reader(tracked);
        Self {
            csv,
            lines,
            tail,
            record: csv::ByteRecord::new(),
            delimiter,
            base,
        }
    }
}

impl RecordSource for Records {
    fn next_record(&mut self) -> Next {
        let outcome = self.csv.read_byte_record(&mut self.record);
        let start = self.record.position().map_or(0, csv::Position::byte);
        let line = self.lines.borrow_mut().line_at(start);
        let next_start = self.base + self.csv.position().byte();
        let at_eof = self
            .tail
            .as_ref()
            .is_some_and(|(_, len)| next_start >= *len);
        match outcome {
            Ok(false) => Next::End,
            Ok(true) if at_eof && self.quote_left_open(start) => self.unterminated(line),
            Ok(true) => Next::Record {
                line,
                fields: fields(&self.record),
            },
            Err(err) => match err.kind() {
                csv::ErrorKind::UnequalLengths {
                    expected_len, len, ..
                } => {
                    if at_eof && self.quote_left_open(start) {
                        return self.unterminated(line);
                    }
                    Next::Malformed {
                        line,
                        message: format!(
                            "expected {expected_len} fields (as in the header), found {len}"
                        ),
                        fields: fields(&self.record),
                    }
                }
                csv::ErrorKind::Io(io) => Next::Fatal {
                    line,
                    message: format!("cannot read the manifest: {io}"),
                },
                other => Next::Fatal {
                    line,
                    message: format!("cannot read the manifest: {other:?}"),
                },
            },
        }
    }
}

impl Records {
    fn unterminated(&self, line: u64) -> Next {
        Next::Malformed {
            line,
            message: "unterminated quoted field: a \" opened on this line is never closed, so the \
                      rest of the file was read as one field"
                .to_owned(),
            fields: fields(&self.record),
        }
    }

    /// Whether the record starting at byte `start` and running to the end of the file
    /// ends inside a quoted field. The CSV parser accepts that silently, taking the rest
    /// of the file as one field; only the last record can be in that state.
    fn quote_left_open(&mut self, start: u64) -> bool {
        let Some((tail, _)) = self.tail.as_mut() else {
            return false;
        };
        if tail.seek(SeekFrom::Start(self.base + start)).is_err() {
            return false;
        }
        let mut scan = QuoteScan::new(self.delimiter);
        let mut buf = [0u8; 8192];
        loop {
            match tail.read(&mut buf) {
                Ok(0) => return scan.ends_open(),
                Ok(n) => scan.feed(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

fn fields(record: &csv::ByteRecord) -> Vec<Field> {
    record
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            // The CSV reader strips a BOM from the first header field; a BOM on a later
            // record is a stray and goes the same way.
            let raw = if i == 0 {
                raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
            } else {
                raw
            };
            match std::str::from_utf8(raw) {
                Ok(text) if text.contains('\0') => Field::Unreadable(Unreadable::Nul),
                Ok(text) => Field::Text(text.to_owned()),
                Err(_) => Field::Unreadable(Unreadable::NotUtf8),
            }
        })
        .collect()
}

/// RFC 4180 quoting, as the CSV parser reads it: a quote opens a field only at its start,
/// and inside a quoted field `""` is an escaped quote.
struct QuoteScan {
    in_quotes: bool,
    at_field_start: bool,
    quote_pending: bool,
    delimiter: u8,
}

impl QuoteScan {
    fn new(delimiter: u8) -> Self {
        Self {
            in_quotes: false,
            at_field_start: true,
            quote_pending: false,
            delimiter,
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.in_quotes {
                if self.quote_pending {
                    self.quote_pending = false;
                    if b == b'"' {
                        continue; // an escaped quote
                    }
                    self.in_quotes = false;
                } else {
                    if b == b'"' {
                        self.quote_pending = true;
                    }
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => self.at_field_start = true,
                _ if b == self.delimiter => self.at_field_start = true,
                b'"' if self.at_field_start => {
                    self.in_quotes = true;
                    self.at_field_start = false;
                }
                _ => self.at_field_start = false,
            }
        }
    }

    /// Whether the input ended inside a quoted field (a quote as the very last byte
    /// closes its field).
    fn ends_open(&self) -> bool {
        self.in_quotes && !self.quote_pending
    }
}

/// Line numbers from byte offsets. The CSV reader's own line counter is off after CRLF
/// line ends and blank lines, so the bytes are counted here as they stream past.
#[derive(Default)]
struct LineTracker {
    /// Offsets (and byte) of the `\r` and `\n` read but not yet passed by a record.
    breaks: VecDeque<(u64, u8)>,
    newlines_before: u64,
}

impl LineTracker {
    /// The line of the first byte at or after `start` that is not a line break (the
    /// reader skips blank lines and the `\n` of a CRLF before a record).
    fn line_at(&mut self, start: u64) -> u64 {
        while let Some(&(offset, byte)) = self.breaks.front() {
            if offset >= start {
                break;
            }
            self.breaks.pop_front();
            if byte == b'\n' {
                self.newlines_before += 1;
            }
        }
        let mut leading = 0;
        for (expected, &(offset, byte)) in (start..).zip(self.breaks.iter()) {
            if offset != expected {
                break;
            }
            if byte == b'\n' {
                leading += 1;
            }
        }
        1 + self.newlines_before + leading
    }
}

/// A reader that notes where the line breaks are as bytes pass through it.
struct Tracked {
    inner: Box<dyn Read>,
    offset: u64,
    lines: Rc<RefCell<LineTracker>>,
}

impl Read for Tracked {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut lines = self.lines.borrow_mut();
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                lines.breaks.push_back((self.offset + i as u64, b));
            }
        }
        self.offset += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> bool {
        let mut scan = QuoteScan::new(b',');
        for chunk in text.as_bytes().chunks(3) {
            scan.feed(chunk);
        }
        scan.ends_open()
    }

    #[test]
    fn quote_scan_tells_open_quotes_from_closed_and_escaped_ones() {
        assert!(!scan("a,\"b\",c\n"));
        assert!(!scan("a,\"b \"\"quoted\"\" c\"\n"));
        assert!(!scan("a,b\"c,d\n"));
        assert!(!scan("a,\"b\""));
        assert!(scan("a,\"b,c\nd,e\n"));
        assert!(scan("a,\"b \"\"c\n"));
    }

    fn lines_of(input: &[u8]) -> Vec<u64> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.csv");
        std::fs::write(&path, input).unwrap();
        let tail = Some((File::open(&path).unwrap(), input.len() as u64));
        let mut records = Records::new(Box::new(File::open(&path).unwrap()), tail, b',', 0);
        let mut lines = Vec::new();
        loop {
            match records.next_record() {
                Next::Record { line, .. } | Next::Malformed { line, .. } => lines.push(line),
                Next::Fatal { .. } | Next::End => return lines,
            }
        }
    }

    #[test]
    fn records_carry_their_true_line_across_crlf_blank_lines_and_quoted_newlines() {
        assert_eq!(lines_of(b"a,b\n1,2\n\n\n3,4\n"), vec![1, 2, 5]);
        assert_eq!(lines_of(b"a,b\r\n1,2\r\n\r\n3,4\r\n"), vec![1, 2, 4]);
        assert_eq!(lines_of(b"a,b\n1,\"x\ny\"\n3,4"), vec![1, 2, 4]);
        assert_eq!(lines_of(b"\n\na,b\n1,2\n"), vec![3, 4]);
    }

    #[test]
    fn delimiter_is_the_one_the_header_line_uses_most_outside_quotes() {
        assert_eq!(
            detect_delimiter(b"ref,project_id,title\n1;2;3;4;5\n", 0),
            b','
        );
        assert_eq!(
            detect_delimiter(b"\xEF\xBB\xBFItem #;Description;Severity\n", 0),
            b';'
        );
        assert_eq!(detect_delimiter(b"\n\na\tb\tc\n", 0), b'\t');
        assert_eq!(detect_delimiter(b"a|b|\"c,d,e\"\n", 0), b'|');
        assert_eq!(detect_delimiter(b"single\n", 0), b',');
        assert_eq!(detect_delimiter(b"Title, of it\n\nA;B;C\n", 2), b';');
        assert_eq!(guess_delimiter(b"Title, of it\n\nA;B;C\n1;2;3\n"), b';');
    }
}
