//! Cursor pagination: opaque cursors and the limit rule shared by every listing.
//!
//! A cursor is the hex encoding of `<listing tag>:<last sort key>`. The tag makes a cursor from
//! one listing fail to decode in another instead of silently skipping rows, and hex keeps it safe
//! in a URL query string without escaping.

use crate::{Error, Result};

/// Items per page when the caller asks for 0.
pub const DEFAULT_LIMIT: u32 = 100;
/// Most items per page.
pub const MAX_LIMIT: u32 = 1000;

/// The limit to use for a requested one: 0 means the default, anything above the maximum is
/// lowered to it.
pub fn clamp_limit(requested: u32) -> i64 {
    let l = match requested {
        0 => DEFAULT_LIMIT,
        n => n.min(MAX_LIMIT),
    };
    i64::from(l)
}

/// The cursor that resumes `tag` listing after `key`.
pub(crate) fn encode(tag: &str, key: &str) -> String {
    hex::encode(format!("{tag}:{key}"))
}

/// The sort key inside a cursor of listing `tag`.
pub(crate) fn decode(tag: &str, cursor: &str) -> Result<String> {
    let bytes = hex::decode(cursor).map_err(|_| Error::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| Error::InvalidCursor)?;
    text.strip_prefix(tag)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::to_string)
        .ok_or(Error::InvalidCursor)
}

/// Decodes an optional cursor.
pub(crate) fn decode_opt(tag: &str, cursor: &Option<String>) -> Result<Option<String>> {
    cursor.as_deref().map(|c| decode(tag, c)).transpose()
}

/// Turns `limit + 1` fetched rows into a page: the extra row only tells that there is more.
pub(crate) fn finish<T>(
    mut rows: Vec<T>,
    limit: i64,
    tag: &str,
    key_of: impl Fn(&T) -> String,
) -> crate::Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = if more {
        rows.last().map(|last| encode(tag, &key_of(last)))
    } else {
        None
    };
    crate::Page {
        items: rows,
        next_cursor,
    }
}

/// The smallest string greater than every string that starts with `prefix`, or `None` when no
/// such string exists (an empty prefix, or one made only of `char::MAX`). With it a prefix match
/// is an index range `prefix <= s < end` on both backends, since both compare strings bytewise
/// and UTF-8 preserves code point order.
pub(crate) fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..0xE000).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_tagged() {
        let c = encode("m", "key with spaces/é");
        assert_eq!(decode("m", &c).unwrap(), "key with spaces/é");
        assert!(matches!(decode("t", &c), Err(Error::InvalidCursor)));
        assert!(matches!(decode("m", "zz"), Err(Error::InvalidCursor)));
        assert!(matches!(
            decode("m", &hex::encode([0xff, 0xfe])),
            Err(Error::InvalidCursor)
        ));
    }

    #[test]
    fn limits() {
        assert_eq!(clamp_limit(0), 100);
        assert_eq!(clamp_limit(1), 1);
        assert_eq!(clamp_limit(1000), 1000);
        assert_eq!(clamp_limit(5000), 1000);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_end(""), None);
        assert_eq!(prefix_end("a\u{D7FF}").as_deref(), Some("a\u{E000}"));
        assert_eq!(prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_end("\u{10FFFF}"), None);
        let end = prefix_end("note").unwrap();
        for s in ["note", "notes", "note\u{10FFFF}x"] {
            assert!(s >= "note" && s < end.as_str(), "{s:?}");
        }
        assert!("nou" >= end.as_str());
    }
}
