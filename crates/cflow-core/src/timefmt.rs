//! RFC 3339 formatting and parsing of the Unix-millisecond timestamps used everywhere in storage.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Formats Unix milliseconds as an RFC 3339 UTC string, for example `2026-11-25T10:00:00.123Z`.
pub fn rfc3339(ms: i64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Parses an RFC 3339 string into Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let s = rfc3339(1_764_064_800_123);
        assert_eq!(s, "2025-11-25T10:00:00.123Z");
        assert_eq!(parse_rfc3339(&s), Some(1_764_064_800_123));
        assert_eq!(
            parse_rfc3339("2025-11-25T11:00:00+01:00"),
            Some(1_764_064_800_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
