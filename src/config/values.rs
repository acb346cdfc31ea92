//! Reading single values: durations, and the one bounds check every number and duration key
//! goes through.

use std::ops::RangeInclusive;

use super::Problems;

/// `"90s"`, `"10m"`, `"2h"`, `"180d"`, `"250ms"`, `"1h 30m"` (humantime), or a bare number of
/// seconds, which humantime refuses and earlier versions accepted. Months and years are refused:
/// they have no fixed length, and humantime's `M` (month) is one typo away from `m` (minute).
pub fn parse_duration(text: &str) -> Option<time::Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok().map(time::Duration::seconds);
    }
    let calendar = text
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|unit| matches!(unit, "M" | "month" | "months" | "y" | "year" | "years"));
    if calendar {
        return None;
    }
    time::Duration::try_from(humantime::parse_duration(text).ok()?).ok()
}

/// A duration key: `default` when absent; a problem (and the default) when it does not parse.
pub(super) fn duration(
    problems: &mut Problems,
    key: &str,
    value: Option<String>,
    default: time::Duration,
) -> time::Duration {
    match value {
        None => default,
        Some(text) => parse_duration(&text).unwrap_or_else(|| {
            problems.push(
                key,
                format!(
                    "{text:?} is not a duration: write a number with a unit, like \"90s\", \"10m\", \"2h\" or \"180d\""
                ),
            );
            default
        }),
    }
}

/// A duration key that must lie within `range`; `out_of_range` says what to use instead. The
/// value read is returned either way, so that checks depending on it see what was written.
pub(super) fn duration_within(
    problems: &mut Problems,
    key: &str,
    value: Option<String>,
    default: time::Duration,
    range: RangeInclusive<time::Duration>,
    out_of_range: &str,
) -> time::Duration {
    let d = duration(problems, key, value, default);
    within(problems, key, d, range, out_of_range);
    d
}

/// A whole-number key within `1..=max`: `default` when absent, and also (with a problem saying
/// "{n} is out of range: {hint}") when outside.
pub(super) fn count(
    problems: &mut Problems,
    key: &str,
    value: Option<i64>,
    default: usize,
    max: i64,
    hint: &str,
) -> usize {
    match value {
        None => default,
        Some(n) => within(
            problems,
            key,
            n,
            1..=max,
            &format!("{n} is out of range: {hint}"),
        )
        .map_or(default, |n| n as usize),
    }
}

/// The bounds check: `value` when it lies within `range`, else a problem for `key` and `None`.
pub(super) fn within<T: PartialOrd>(
    problems: &mut Problems,
    key: &str,
    value: T,
    range: RangeInclusive<T>,
    message: &str,
) -> Option<T> {
    if range.contains(&value) {
        Some(value)
    } else {
        problems.push(key, message);
        None
    }
}

/// A non-negative duration as the standard library's, in whole milliseconds of at least `min_ms`.
pub(super) fn std_millis(d: time::Duration, min_ms: i128) -> std::time::Duration {
    std::time::Duration::from_millis(d.whole_milliseconds().max(min_ms) as u64)
}
