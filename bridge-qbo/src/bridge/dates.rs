//! Dates and times as QuickBooks takes them. A transaction's `TxnDate` is the shop's local date
//! in the time zone of the mesh settings, daylight saving included (jiff's calendar and its
//! bundled time zone database); QuickBooks' own timestamps carry their offset.

use jiff::Timestamp;
use jiff::tz::TimeZone;

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `2026-11-22T17:31:04Z`: UTC, whole seconds (CDC's `changedSince`).
pub(super) fn utc(ms: u64) -> String {
    at(ms).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A QuickBooks timestamp (`2020-09-29T05:58:16-07:00`, `...Z`) in ms since the epoch.
pub(super) fn parse(text: &str) -> Option<u64> {
    let ts: Timestamp = text.trim().parse().ok()?;
    u64::try_from(ts.as_millisecond()).ok()
}

/// `YYYY-MM-DD`: the date in the shop's zone at an instant (`TxnDate`, `DueDate`).
pub(super) fn local_date(ms: u64, zone: &TimeZone) -> String {
    at(ms).to_zoned(zone.clone()).date().to_string()
}

/// The shop's clock at an instant, as ms since a local "epoch": periods of the summary mode
/// are cut on the shop's midnights, not UTC's.
pub(super) fn local_ms(ms: u64, zone: &TimeZone) -> u64 {
    let offset_ms = i64::from(zone.to_offset(at(ms)).seconds()) * 1000;
    u64::try_from(
        i64::try_from(ms)
            .unwrap_or(i64::MAX)
            .saturating_add(offset_ms),
    )
    .unwrap_or(0)
}

/// The instant at which the shop's clock reads `local` (the inverse of [`local_ms`]; in the
/// hour a clock change repeats, the later instant, so a period is never cut short).
pub(super) fn instant_of_local(local: u64, zone: &TimeZone) -> u64 {
    let guess = local;
    let offset_ms = |ms: u64| i64::from(zone.to_offset(at(ms)).seconds()) * 1000;
    let first = (local as i64 - offset_ms(guess)).max(0) as u64;
    let second = (local as i64 - offset_ms(first)).max(0) as u64;
    first.max(second)
}

/// The zone named in the mesh settings; UTC when none is set or it is unknown here.
pub fn zone(name: Option<&str>) -> TimeZone {
    name.and_then(|n| TimeZone::get(n).ok())
        .unwrap_or(TimeZone::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_the_shops() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            parse("2020-09-29T05:58:16-07:00"),
            parse("2020-09-29T12:58:16Z")
        );
        let la = zone(Some("America/Los_Angeles"));
        // 23:30 in Los Angeles on a summer day (PDT, -07:00) and a winter day (PST, -08:00).
        let summer = parse("2026-07-15T23:30:00-07:00").unwrap();
        let winter = parse("2026-01-15T23:30:00-08:00").unwrap();
        assert_eq!(local_date(summer, &la), "2026-07-15");
        assert_eq!(local_date(winter, &la), "2026-01-15");
        assert_eq!(local_date(summer, &TimeZone::UTC), "2026-07-16");
        let day = 86_400_000;
        assert_eq!(local_ms(summer, &la) % day, (23 * 60 + 30) * 60_000);
        assert_eq!(instant_of_local(local_ms(winter, &la), &la), winter);
        assert_eq!(instant_of_local(local_ms(summer, &la), &la), summer);
        assert_eq!(zone(Some("Mars/Olympus")), TimeZone::UTC);
    }
}
