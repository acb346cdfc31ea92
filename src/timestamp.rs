//! Instants as the MDE API writes them.
//!
//! The API writes `DateTimeOffset` values with anywhere from zero to seven fractional digits
//! (`2021-01-26T20:33:59.2Z`, `2021-01-26T20:33:57.7220239Z`). Seven digits is .NET's tick, 100 ns,
//! so every value the API can write is a whole number of ticks. [`Timestamp`] holds that number and
//! compares as an instant: `…59.2Z` is later than `…59.13Z`, which string comparison gets wrong.
//! [`Timestamp::to_db`] writes the fixed seven-digit form, whose byte order *is* the time order, so
//! the databases can compare stored values with plain `>=`.

use std::fmt;

use time::{OffsetDateTime, UtcOffset, format_description::well_known::Rfc3339};

/// Nanoseconds in one .NET tick.
const TICK_NS: i128 = 100;

/// An instant with 100 ns resolution, always UTC.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    ticks: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid timestamp {text:?}: expected RFC 3339 like 2021-01-26T20:33:59.2Z")]
pub struct TimestampError {
    pub text: String,
}

impl Timestamp {
    pub const MIN_TICK: Timestamp = Timestamp { ticks: 0 };

    pub fn from_ticks(ticks: i64) -> Self {
        Self { ticks }
    }

    pub fn ticks(self) -> i64 {
        self.ticks
    }

    /// Parses RFC 3339 with any number of fractional digits. Digits past the seventh cannot be
    /// written by the API; they are truncated to the tick.
    pub fn parse(text: &str) -> Result<Self, TimestampError> {
        let err = || TimestampError {
            text: text.to_owned(),
        };
        let dt = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| err())?;
        Ok(Self::from_datetime(dt))
    }

    pub fn from_datetime(dt: OffsetDateTime) -> Self {
        let ns = dt.unix_timestamp_nanos();
        Self {
            ticks: ns.div_euclid(TICK_NS) as i64,
        }
    }

    pub fn to_datetime(self) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(self.ticks as i128 * TICK_NS)
            .expect("tick count within time's range")
            .to_offset(UtcOffset::UTC)
    }

    /// The canonical form: `YYYY-MM-DDTHH:MM:SS.fffffffZ`, seven digits always. Byte order equals
    /// time order for all years 0000-9999, which is what the stores rely on.
    pub fn to_db(self) -> String {
        self.format_digits(7)
    }

    /// Writes the instant with exactly `digits` fractional digits (0 to 7), truncating.
    pub fn format_digits(self, digits: u8) -> String {
        let dt = self.to_datetime();
        let frac = (self.ticks.rem_euclid(10_000_000)) as u32;
        let base = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second()
        );
        let digits = digits.min(7);
        if digits == 0 {
            return format!("{base}Z");
        }
        let frac = format!("{frac:07}");
        format!("{base}.{}Z", &frac[..digits as usize])
    }

    /// The OData literal used in `$filter` (unquoted, seven digits).
    pub fn odata(self) -> String {
        self.to_db()
    }

    /// The instant rounded down to a whole microsecond (Postgres' resolution). Rounding down keeps
    /// a watermark safe: a lower watermark only re-reads a little more.
    pub fn floor_micros(self) -> Self {
        Self {
            ticks: self.ticks - self.ticks.rem_euclid(10),
        }
    }

    pub fn from_micros(micros: i64) -> Self {
        Self { ticks: micros * 10 }
    }

    pub fn plus_ticks(self, ticks: i64) -> Self {
        Self {
            ticks: self.ticks.saturating_add(ticks),
        }
    }

    pub fn plus(self, d: time::Duration) -> Self {
        let ticks = (d.whole_nanoseconds() / TICK_NS) as i64;
        self.plus_ticks(ticks)
    }

    pub fn minus(self, d: time::Duration) -> Self {
        self.plus(-d)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_db())
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({})", self.to_db())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    #[test]
    fn fractional_digits_compare_as_instants_not_strings() {
        let a = ts("2021-01-26T20:33:59.13Z");
        let b = ts("2021-01-26T20:33:59.2Z");
        let c = ts("2021-01-26T20:33:59.25Z");
        assert!(a < b, "59.13 is earlier than 59.2");
        assert!(b < c, "59.2 is earlier than 59.25");
        // the string order disagrees, which is the trap
        assert!("2021-01-26T20:33:59.2Z" > "2021-01-26T20:33:59.25Z");
    }

    #[test]
    fn one_to_seven_digits_parse_to_the_same_tick_grid() {
        let seven = ts("2021-01-26T20:33:59.2000000Z");
        for s in [
            "2021-01-26T20:33:59.2Z",
            "2021-01-26T20:33:59.20Z",
            "2021-01-26T20:33:59.200Z",
            "2021-01-26T20:33:59.2000Z",
            "2021-01-26T20:33:59.20000Z",
            "2021-01-26T20:33:59.200000Z",
        ] {
            assert_eq!(ts(s), seven, "{s}");
        }
        assert_eq!(
            ts("2021-01-26T20:33:59Z").ticks() + 2_000_000,
            seven.ticks()
        );
        assert_eq!(
            ts("2021-01-26T20:33:57.7220239Z").to_db(),
            "2021-01-26T20:33:57.7220239Z"
        );
    }

    #[test]
    fn db_form_sorts_like_instants() {
        let mut xs: Vec<Timestamp> = [
            "2021-01-26T20:33:59.25Z",
            "2021-01-26T20:33:59.2Z",
            "2021-01-26T20:33:59.13Z",
            "2021-01-26T20:33:59Z",
            "2020-12-31T23:59:59.9999999Z",
        ]
        .iter()
        .map(|s| ts(s))
        .collect();
        let mut by_text: Vec<String> = xs.iter().map(|t| t.to_db()).collect();
        xs.sort();
        by_text.sort();
        assert_eq!(xs.iter().map(|t| t.to_db()).collect::<Vec<_>>(), by_text);
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        assert_eq!(
            ts("2021-01-26T21:33:59.2+01:00"),
            ts("2021-01-26T20:33:59.2Z")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Timestamp::parse("yesterday").is_err());
        assert!(Timestamp::parse("").is_err());
    }

    #[test]
    fn format_digits_truncates() {
        let t = ts("2021-01-26T20:33:57.7220239Z");
        assert_eq!(t.format_digits(1), "2021-01-26T20:33:57.7Z");
        assert_eq!(t.format_digits(3), "2021-01-26T20:33:57.722Z");
        assert_eq!(t.format_digits(0), "2021-01-26T20:33:57Z");
    }
}
