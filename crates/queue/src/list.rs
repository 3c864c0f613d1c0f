//! A list bound as one parameter: a Postgres array, or in SQLite a JSON array read with
//! `json_each` (ids as hex, turned back into blobs with `unhex`). See [`crate::sql`]'s
//! `{in_list $n}` and `{in_ids $n}`.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo};
use sqlx::{Encode, Postgres, Sqlite, Type};
use uuid::Uuid;

/// Values bound as one list parameter.
#[derive(Debug, Clone, Copy)]
pub struct List<'a, T>(pub &'a [T]);

/// How one value is written into SQLite's JSON list.
pub trait JsonItem {
    fn write_json(&self, out: &mut String);
}

impl JsonItem for i64 {
    fn write_json(&self, out: &mut String) {
        out.push_str(&self.to_string());
    }
}

impl JsonItem for Uuid {
    fn write_json(&self, out: &mut String) {
        out.push('"');
        out.push_str(&self.simple().to_string());
        out.push('"');
    }
}

impl JsonItem for &str {
    fn write_json(&self, out: &mut String) {
        out.push('"');
        for c in self.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

impl<T: JsonItem> List<'_, T> {
    fn json(&self) -> String {
        let mut out = String::from("[");
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            item.write_json(&mut out);
        }
        out.push(']');
        out
    }
}

impl<T: PgHasArrayType> Type<Postgres> for List<'_, T> {
    fn type_info() -> PgTypeInfo {
        T::array_type_info()
    }
}

impl<'q, T> Encode<'q, Postgres> for List<'_, T>
where
    T: PgHasArrayType + for<'e> Encode<'e, Postgres> + Type<Postgres>,
{
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[T] as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<T> Type<Sqlite> for List<'_, T> {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<T: JsonItem> Encode<'_, Sqlite> for List<'_, T> {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.json(), buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_become_json_arrays_for_sqlite() {
        assert_eq!(List(&[1i64, 2]).json(), "[1,2]");
        assert_eq!(List(&["a\"b"]).json(), r#"["a\"b"]"#);
        let id = Uuid::from_u128(0xff);
        assert_eq!(
            List(&[id]).json(),
            r#"["000000000000000000000000000000ff"]"#
        );
    }
}
