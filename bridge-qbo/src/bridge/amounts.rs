//! Amounts between the mesh and QuickBooks. The mesh keeps integer minor units in the
//! currency's own exponent (0 for JPY, 3 for KWD, 2 for most); QuickBooks' JSON writes
//! decimal numbers. The conversion is decimal text both ways (`Currency::format_amount`,
//! `parse_decimal`), never arithmetic on a float.
//!
//! serde_json (without `arbitrary_precision`, which would break the internally tagged enums
//! the node's wire formats use) holds a non-integer JSON number as the nearest double. For
//! a decimal of at most 15 significant digits the shortest text that reads back as that
//! double is the decimal itself, so text → number → text is the identity: an amount is
//! written exactly as formatted and read exactly as QuickBooks wrote it. An amount with more
//! digits than that could not be read back exactly, and is refused instead.

use serde_json::Value;
use tillmesh_protocol::Currency;
use tillmesh_protocol::money::parse_decimal;

/// Digits a double carries exactly through decimal text.
const DIGITS_EXACT_MAX: usize = 15;

/// Minor units as QuickBooks' JSON number: `1050` JPY is `1050`, `1050` USD `10.50`, `1050`
/// KWD `1.050`.
pub fn to_qbo(minor: i64, currency: Currency) -> Value {
    if currency.exponent() == 0 {
        return Value::from(minor);
    }
    // Exact up to 15 digits (a trillion dollars and more); a shop's amounts never come near.
    serde_json::from_str(&currency.format_amount(minor)).unwrap_or(Value::Null)
}

/// QuickBooks' amount in minor units; `None` when it is absent, not an amount, has more
/// decimals than the currency has, or more digits than can be read exactly.
pub fn from_qbo(v: &Value, currency: Currency) -> Option<i64> {
    let exp = currency.exponent();
    let text = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return i.checked_mul(10i64.checked_pow(exp)?);
            }
            n.to_string()
        }
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    // A float's shortest text may use an exponent (1e-7): never an amount.
    if text.contains(['e', 'E'])
        || text.bytes().filter(u8::is_ascii_digit).count() > DIGITS_EXACT_MAX
    {
        return None;
    }
    // "12.50" and "12.5" are both 1250; trailing zeros beyond the exponent are no precision.
    let trimmed = match text.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                whole.to_owned()
            } else {
                format!("{whole}.{frac}")
            }
        }
        None => text,
    };
    parse_decimal(&trimmed, exp).ok()
}

/// As [`from_qbo`], but an amount with more decimals than the currency has (a unit price of
/// 2.125 USD: QuickBooks keeps up to seven on prices) is rounded to the nearest minor unit,
/// half away from zero, as the mesh rounds tax.
pub fn from_qbo_nearest(v: &Value, currency: Currency) -> Option<i64> {
    if let Some(m) = from_qbo(v, currency) {
        return Some(m);
    }
    let text = match v {
        Value::Number(n) if n.as_i64().is_none() => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return None,
    };
    if text.contains(['e', 'E']) {
        return None;
    }
    let exp = currency.exponent() as usize;
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.as_str()),
    };
    let (whole, frac) = digits.split_once('.')?;
    // Digits only: a split below must fall between characters (found by the `qbo_json` fuzz
    // target: "-0.9ĐĐ" split inside a letter and panicked).
    if frac.len() <= exp || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (kept, dropped) = frac.split_at(exp);
    let mut minor = parse_decimal(&format!("{whole}.{kept}"), exp as u32).ok()?;
    if dropped.as_bytes()[0] >= b'5' {
        minor = minor.checked_add(1)?;
    }
    Some(if neg { -minor } else { minor })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(code: &str) -> Currency {
        code.parse().unwrap()
    }

    /// Inputs the `qbo_json` fuzz target once crashed on.
    #[test]
    fn an_amount_that_is_not_digits_is_no_amount() {
        for cur in ["JPY", "USD", "KWD"] {
            for text in ["-0.9ĐĐ", "1.ĐĐĐĐ", "2.5é", "0.12345Đ"] {
                assert_eq!(from_qbo_nearest(&json!(text), c(cur)), None, "{cur} {text}");
            }
        }
        assert_eq!(from_qbo_nearest(&json!("2.125"), c("USD")), Some(213));
    }

    #[test]
    fn each_currency_in_its_own_decimals() {
        assert_eq!(to_qbo(1000, c("JPY")).to_string(), "1000");
        assert_eq!(to_qbo(1050, c("USD")).to_string(), "10.5");
        assert_eq!(to_qbo(1005, c("KWD")).to_string(), "1.005");
        assert_eq!(to_qbo(-7, c("USD")).to_string(), "-0.07");
        assert_eq!(from_qbo(&json!(1000), c("JPY")), Some(1000));
        assert_eq!(from_qbo(&json!(10.5), c("USD")), Some(1050));
        assert_eq!(from_qbo(&json!(10), c("USD")), Some(1000));
        assert_eq!(from_qbo(&json!(1.005), c("KWD")), Some(1005));
        assert_eq!(from_qbo(&json!("2.50"), c("USD")), Some(250));
        // More decimals than the currency has is not an amount of it.
        assert_eq!(from_qbo(&json!(1.005), c("USD")), None);
        assert_eq!(from_qbo(&json!(10.5), c("JPY")), None);
        assert_eq!(from_qbo(&Value::Null, c("USD")), None);
        assert_eq!(from_qbo_nearest(&json!(2.125), c("USD")), Some(213));
        assert_eq!(from_qbo_nearest(&json!(2.124), c("USD")), Some(212));
        assert_eq!(from_qbo_nearest(&json!(-2.125), c("USD")), Some(-213));
        assert_eq!(from_qbo_nearest(&json!(2.5), c("JPY")), Some(3));
        assert_eq!(from_qbo_nearest(&json!(3.5), c("USD")), Some(350));
    }

    #[test]
    fn every_amount_goes_there_and_back_exactly() {
        // Up to 15 digits, at each exponent, amounts survive the JSON text.
        for code in ["JPY", "USD", "KWD"] {
            let cur = c(code);
            let mut m: i64 = 1;
            while m < 100_000_000_000_000 {
                for v in [m, m + 1, m * 7 + 3, -(m * 3 + 1)] {
                    let wire = serde_json::to_string(&to_qbo(v, cur)).unwrap();
                    let back: Value = serde_json::from_str(&wire).unwrap();
                    assert_eq!(from_qbo(&back, cur), Some(v), "{code} {v} as {wire}");
                }
                m *= 10;
            }
        }
    }
}
