//! One statement, written once, in each store's dialect. The text is Postgres with a few
//! tokens for what SQLite spells differently; [`Sql::translate`] turns it into both:
//!
//! | token           | Postgres                                         | SQLite                               |
//! |-----------------|--------------------------------------------------|--------------------------------------|
//! | `{now}`         | `now()`                                          | microseconds since the epoch         |
//! | `{after X}`     | `now()` + `X` microseconds                       | `{now} + X`                          |
//! | `{minute X}`    | `date_trunc('minute', X)`                        | `X` rounded down to its minute       |
//! | `{greatest}`    | `GREATEST`                                       | `max`                                |
//! | `{strpos}`      | `strpos`                                         | `instr`                              |
//! | `{for_update}`  | `FOR UPDATE`                                     | nothing (one writer at a time)       |
//! | `{in_list $n}`  | `= ANY($n)`                                      | `IN (SELECT value FROM json_each($n))` |
//! | `{in_ids $n}`   | `= ANY($n)`                                      | the same, hex ids `unhex`ed to blobs |
//!
//! and `::type` casts, which Postgres needs to type a literal or a parameter, are dropped for
//! SQLite. Lists are bound with [`crate::List`]. Run a statement with [`crate::on!`].

/// A statement in both dialects.
#[derive(Debug)]
pub struct Sql {
    pub postgres: String,
    pub sqlite: String,
}

/// SQLite's clock: the current time in microseconds since the Unix epoch (millisecond
/// resolution), the same value for the whole statement.
const SQLITE_NOW: &str = "CAST(unixepoch('subsec') * 1000000 AS INTEGER)";

impl Sql {
    pub fn translate(text: &str) -> Self {
        Self {
            postgres: expand(text, Dialect::Postgres),
            sqlite: strip_casts(&expand(text, Dialect::Sqlite)),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Dialect {
    Postgres,
    Sqlite,
}

fn expand(text: &str, dialect: Dialect) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open
            + rest[open..]
                .find('}')
                .unwrap_or_else(|| panic!("unclosed token in SQL: {text}"));
        let token = &rest[open + 1..close];
        let (name, arg) = token.split_once(' ').unwrap_or((token, ""));
        let pg = dialect == Dialect::Postgres;
        let piece = match name {
            "now" if pg => "now()".to_string(),
            "now" => format!("({SQLITE_NOW})"),
            "after" if pg => format!("(now() + ({arg})::float8 * interval '1 microsecond')"),
            "after" => format!("(({SQLITE_NOW}) + ({arg}))"),
            "minute" if pg => format!("date_trunc('minute', {arg})"),
            "minute" => format!("(({arg}) / 60000000 * 60000000)"),
            "greatest" if pg => "GREATEST".to_string(),
            "greatest" => "max".to_string(),
            "strpos" if pg => "strpos".to_string(),
            "strpos" => "instr".to_string(),
            "for_update" if pg => "FOR UPDATE".to_string(),
            "for_update" => String::new(),
            "in_list" | "in_ids" if pg => format!("= ANY({arg})"),
            "in_list" => format!("IN (SELECT value FROM json_each({arg}))"),
            "in_ids" => format!("IN (SELECT unhex(value) FROM json_each({arg}))"),
            _ => panic!("unknown SQL token {{{token}}} in: {text}"),
        };
        out.push_str(&piece);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Drops `::type` and `::type[]` casts outside string literals.
fn strip_casts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if c == '\'' {
            in_string = !in_string;
        }
        if !in_string && c == ':' && chars.peek() == Some(&':') {
            chars.next();
            while chars
                .peek()
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
            {
                chars.next();
            }
            if chars.peek() == Some(&'[') {
                chars.next();
                chars.next();
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// A statement translated once, on first use: `sql!("SELECT …")` is a `&'static Sql`.
#[macro_export]
macro_rules! sql {
    ($text:expr) => {{
        static SQL: ::std::sync::LazyLock<$crate::sql::Sql> =
            ::std::sync::LazyLock::new(|| $crate::sql::Sql::translate($text));
        &*SQL
    }};
}

/// Runs `$body` against whichever store `$ex` is (anything that converts into [`crate::Ex`]),
/// with `$c` the pool or connection and `$q` the statement in that store's dialect. The body
/// is compiled once per store, so every value it binds and reads must suit both.
#[macro_export]
macro_rules! on {
    ($ex:expr, $stmt:expr, |$c:ident, $q:ident| $body:expr) => {{
        let stmt: &'static $crate::sql::Sql = $stmt;
        match $crate::Ex::from($ex) {
            $crate::Ex::PostgresPool($c) => {
                let $q: &'static str = stmt.postgres.as_str();
                $body
            }
            $crate::Ex::Postgres($c) => {
                let $q: &'static str = stmt.postgres.as_str();
                $body
            }
            $crate::Ex::SqlitePool($c) => {
                let $q: &'static str = stmt.sqlite.as_str();
                $body
            }
            $crate::Ex::Sqlite($c) => {
                let $q: &'static str = stmt.sqlite.as_str();
                $body
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_each_dialect() {
        let s = Sql::translate(
            "UPDATE jobs SET state = 'failed'::job_state, run_at = {after $3}
              WHERE id {in_list $1} AND note = 'a::b' AND x = $2::uuid[]",
        );
        assert_eq!(
            s.postgres,
            "UPDATE jobs SET state = 'failed'::job_state, \
             run_at = (now() + ($3)::float8 * interval '1 microsecond')\n              \
             WHERE id = ANY($1) AND note = 'a::b' AND x = $2::uuid[]"
        );
        assert_eq!(
            s.sqlite,
            format!(
                "UPDATE jobs SET state = 'failed', run_at = (({SQLITE_NOW}) + ($3))\n              \
                 WHERE id IN (SELECT value FROM json_each($1)) AND note = 'a::b' AND x = $2"
            )
        );
    }
}
