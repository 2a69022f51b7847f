//! QBO's times: `2020-09-29T05:58:16-07:00` in `MetaData`, `2020-09-29T05:58:16.187-07:00` in
//! `time`, `2020-09-29` for `TxnDate`. The emulated company keeps Pacific time, as Intuit's
//! sandbox companies do (a fixed -07:00 offset: daylight saving is not emulated).

use std::time::{SystemTime, UNIX_EPOCH};

/// The company's offset from UTC, in seconds.
const OFFSET_S: i64 = -7 * 3600;

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's method).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) to days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn parts(ms: i64) -> (i64, u32, u32, i64, i64, i64, i64) {
    let local_ms = ms + OFFSET_S * 1000;
    let secs = local_ms.div_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    (
        y,
        mo,
        d,
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        local_ms.rem_euclid(1000),
    )
}

fn offset() -> String {
    let o = OFFSET_S.abs();
    format!(
        "{}{:02}:{:02}",
        if OFFSET_S < 0 { '-' } else { '+' },
        o / 3600,
        o % 3600 / 60
    )
}

/// `MetaData` times.
pub fn datetime(ms: i64) -> String {
    let (y, mo, d, h, mi, s, _) = parts(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}", offset())
}

/// The `time` of a response.
pub fn datetime_ms(ms: i64) -> String {
    let (y, mo, d, h, mi, s, frac) = parts(ms);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{frac:03}{}",
        offset()
    )
}

/// `TxnDate`.
pub fn date(ms: i64) -> String {
    let (y, mo, d, ..) = parts(ms);
    format!("{y:04}-{mo:02}-{d:02}")
}

/// `2026-11-22T17:31:04Z`: UTC, whole seconds (the bridge's `changedSince`).
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// Parses `2020-09-29`, `2020-09-29T05:58:16`, with `Z`, `-07:00` or fractional seconds, as
/// QBO's `changedSince` accepts; a time without an offset is the company's.
pub fn parse(text: &str) -> Option<i64> {
    let t = text.trim();
    let num = |s: &str| s.parse::<i64>().ok();
    let (y, mo, d) = (num(t.get(0..4)?)?, num(t.get(5..7)?)?, num(t.get(8..10)?)?);
    if t.get(4..5)? != "-" || t.get(7..8)? != "-" {
        return None;
    }
    let days = days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    let mut secs = days * 86_400;
    let mut offset = OFFSET_S;
    let mut ms = 0;
    if let Some(rest) = t.get(10..).filter(|r| !r.is_empty()) {
        let rest = rest.strip_prefix('T')?;
        let (h, mi, s) = (
            num(rest.get(0..2)?)?,
            num(rest.get(3..5)?)?,
            num(rest.get(6..8)?)?,
        );
        secs += h * 3600 + mi * 60 + s;
        let mut tail = rest.get(8..)?;
        if let Some(frac) = tail.strip_prefix('.') {
            let digits: String = frac.chars().take_while(char::is_ascii_digit).collect();
            ms = num(&format!("{digits:0<3}")[..3]).unwrap_or(0);
            tail = &frac[digits.len()..];
        }
        if tail == "Z" {
            offset = 0;
        } else if !tail.is_empty() {
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            offset = sign * (num(tail.get(1..3)?)? * 3600 + num(tail.get(4..6)?)? * 60);
        }
    }
    Some((secs - offset) * 1000 + ms)
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
    }
}
