//! QBO's times: `2020-09-29T05:58:16-07:00` in `MetaData`, `2020-09-29T05:58:16.187-07:00` in
//! `time`, `2020-09-29` for `TxnDate`. The emulated company keeps Pacific time, as Intuit's
//! sandbox companies do, daylight saving included (jiff's bundled time zone database).

use std::sync::LazyLock;

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;

/// The company's time zone.
static ZONE: LazyLock<TimeZone> = LazyLock::new(|| {
    // Bundled into the binary (`tzdb-bundle-always`), so it is there on any machine.
    TimeZone::get("America/Los_Angeles").unwrap_or(TimeZone::UTC)
});

pub fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

fn local(ms: i64) -> jiff::Zoned {
    Timestamp::from_millisecond(ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_zoned(ZONE.clone())
}

/// `MetaData` times.
pub fn datetime(ms: i64) -> String {
    local(ms).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// The `time` of a response.
pub fn datetime_ms(ms: i64) -> String {
    local(ms).strftime("%Y-%m-%dT%H:%M:%S%.3f%:z").to_string()
}

/// `TxnDate`: the company's local date.
pub fn date(ms: i64) -> String {
    local(ms).date().to_string()
}

/// `2020-09-29T12:58:16.000Z`: UTC with milliseconds, as webhooks speak.
pub fn utc_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Parses `2020-09-29`, `2020-09-29T05:58:16`, with `Z`, `-07:00` or fractional seconds, as
/// QBO's `changedSince` accepts; a time without an offset is the company's.
pub fn parse(text: &str) -> Option<i64> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<Timestamp>() {
        return Some(ts.as_millisecond());
    }
    let civil = t.parse::<DateTime>().ok().or_else(|| {
        t.parse::<Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()))
    })?;
    Some(
        civil
            .to_zoned(ZONE.clone())
            .ok()?
            .timestamp()
            .as_millisecond(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_as_qbo() {
        let ms = parse("2020-09-29T05:58:16.187-07:00").unwrap();
        assert_eq!(datetime(ms), "2020-09-29T05:58:16-07:00");
        assert_eq!(datetime_ms(ms), "2020-09-29T05:58:16.187-07:00");
        assert_eq!(date(ms), "2020-09-29");
        assert_eq!(parse("2020-09-29T12:58:16Z").unwrap(), ms - 187);
        assert_eq!(parse("2024-02-29").map(date).as_deref(), Some("2024-02-29"));
        assert!(parse("yesterday").is_none());
        // Winter is -08:00 in Pacific time.
        let jan = parse("2026-01-15T12:00:00Z").unwrap();
        assert_eq!(datetime(jan), "2026-01-15T04:00:00-08:00");
        assert_eq!(parse("2026-01-15T04:00:00").unwrap(), jan);
    }
}
