//! Budget periods: which UTC window a spend limit covers at a given time, and the message that
//! tells a caller a budget is spent.
//!
//! Periods are calendar windows in UTC, not sliding ones, so that "this month's spend" means the
//! same thing on every node and on an invoice: a day starts at 00:00 UTC, a week on Monday 00:00
//! UTC (ISO 8601), a month on its first day 00:00 UTC.

use std::fmt;
use std::str::FromStr;
use time::{Date, Duration, Month, OffsetDateTime, Time};

/// How long a budget's spend accumulates before it starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub const ALL: [Period; 3] = [Period::Day, Period::Week, Period::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    /// The window `[start, end)` in Unix milliseconds that contains `now_ms`.
    pub fn bounds(self, now_ms: i64) -> (i64, i64) {
        let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ms) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let today = now.date();
        let (start, end) = match self {
            Period::Day => (today, today.next_day().unwrap_or(today)),
            Period::Week => {
                let monday =
                    today - Duration::days(i64::from(today.weekday().number_days_from_monday()));
                (monday, monday + Duration::days(7))
            }
            Period::Month => {
                let first =
                    Date::from_calendar_date(today.year(), today.month(), 1).unwrap_or(today);
                let (y, m) = match today.month() {
                    Month::December => (today.year() + 1, Month::January),
                    m => (today.year(), m.next()),
                };
                (first, Date::from_calendar_date(y, m, 1).unwrap_or(first))
            }
        };
        (ms_of(start), ms_of(end))
    }
}

/// Midnight UTC of `d` in Unix milliseconds.
fn ms_of(d: Date) -> i64 {
    let t = d.with_time(Time::MIDNIGHT).assume_utc();
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a period name that is not `day`, `week` or `month`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown period '{0}': expected day, week or month")]
pub struct UnknownPeriod(pub String);

impl FromStr for Period {
    type Err = UnknownPeriod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Period::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPeriod(s.to_string()))
    }
}

/// A budget whose period's spend has reached its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    pub budget_id: String,
    pub tenant: String,
    /// `None` for the tenant-wide budget.
    pub project: Option<String>,
    pub period: Period,
    pub limit_micros: u64,
    pub spent_micros: u64,
    /// When the period ends and the spend starts again from zero (Unix ms).
    pub resets_at: i64,
}

impl BudgetExceeded {
    /// Which budget, as people name it: `tenant acme, month` or `project web, week`.
    pub fn which(&self) -> String {
        match &self.project {
            None => format!("tenant {}, {}", self.tenant, self.period),
            Some(p) => format!("project {p}, {}", self.period),
        }
    }
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget '{}' is spent: {} of {}; it resets at {} — raise it with PUT /api/v1/budgets",
            self.which(),
            crate::pricing::format_usd(self.spent_micros),
            crate::pricing::format_usd(self.limit_micros),
            crate::timefmt::rfc3339(self.resets_at),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt::{parse_rfc3339, rfc3339};

    fn at(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn windows_are_utc_calendar_periods() {
        // (period, now, start, end)
        let cases = [
            (
                "day",
                "2026-11-26T13:45:00Z",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "day",
                "2026-11-26T00:00:00Z",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "day",
                "2026-11-26T23:59:59.999Z",
                "2026-11-26T00:00:00Z",
                "2026-11-27T00:00:00Z",
            ),
            (
                "day",
                "2026-12-31T12:00:00Z",
                "2026-12-31T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // 2026-11-26 is a Thursday; the ISO week began on Monday the 23rd.
            (
                "week",
                "2026-11-26T13:45:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
            (
                "week",
                "2026-11-23T00:00:00Z",
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
            (
                "week",
                "2026-11-29T23:59:59.999Z",
                "2026-11-23T00:00:00Z",
                "2026-11-30T00:00:00Z",
            ),
            (
                "week",
                "2027-01-01T08:00:00Z",
                "2026-12-28T00:00:00Z",
                "2027-01-04T00:00:00Z",
            ),
            (
                "month",
                "2026-11-26T13:45:00Z",
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
            (
                "month",
                "2026-12-31T23:59:59.999Z",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            (
                "month",
                "2028-02-29T10:00:00Z",
                "2028-02-01T00:00:00Z",
                "2028-03-01T00:00:00Z",
            ),
            (
                "month",
                "2026-03-01T00:00:00Z",
                "2026-03-01T00:00:00Z",
                "2026-04-01T00:00:00Z",
            ),
        ];
        for (period, now, start, end) in cases {
            let p: Period = period.parse().unwrap();
            let (s, e) = p.bounds(at(now));
            assert_eq!(
                (rfc3339(s), rfc3339(e)),
                (rfc3339(at(start)), rfc3339(at(end))),
                "{period} at {now}"
            );
        }
    }

    #[test]
    fn periods_parse_and_refuse_others() {
        for p in Period::ALL {
            assert_eq!(p.as_str().parse::<Period>().unwrap(), p);
        }
        let err = "year".parse::<Period>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown period 'year': expected day, week or month"
        );
    }

    #[test]
    fn the_message_names_the_budget_the_spend_and_the_reset() {
        let e = BudgetExceeded {
            budget_id: "b1".into(),
            tenant: "acme".into(),
            project: None,
            period: Period::Month,
            limit_micros: 10_000_000,
            spent_micros: 12_340_000,
            resets_at: at("2026-12-01T00:00:00Z"),
        };
        assert_eq!(
            e.to_string(),
            "budget 'tenant acme, month' is spent: $12.34 of $10.00; it resets at \
             2026-12-01T00:00:00Z — raise it with PUT /api/v1/budgets"
        );
        let p = BudgetExceeded {
            project: Some("web".into()),
            period: Period::Week,
            ..e
        };
        assert_eq!(p.which(), "project web, week");
    }
}
