//! Money: integer minor units with an ISO 4217 currency code. Never floating point.
//!
//! ## Tax rounding rule
//!
//! Prices are tax-exclusive. Each line's tax is `net × rate_ppm / 1_000_000` rounded to the
//! currency's minor unit, half away from zero (so a refund line rounds exactly like the sale line
//! it reverses); a document's tax is the sum of its lines' taxes. Rounding per line, not per
//! document, means a receipt's lines always add up to its total, and a partial refund of a line
//! returns exactly the tax charged on it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency code: three upper-case ASCII letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("'{0}' is not an ISO 4217 currency code (three capital letters, such as USD)")]
    BadCurrency(String),
    #[error("'{0}' is not an amount (write it like 3.50)")]
    BadAmount(String),
    #[error("{0} has more decimal places than the currency allows")]
    TooPrecise(String),
    #[error("amount out of range")]
    Overflow,
}

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII capitals.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }

    /// Digits after the decimal point (ISO 4217 minor unit).
    pub fn exponent(&self) -> u32 {
        match &self.0 {
            b"JPY" | b"KRW" | b"VND" | b"CLP" | b"ISK" | b"UGX" | b"XAF" | b"XOF" | b"PYG" => 0,
            b"BHD" | b"KWD" | b"OMR" | b"JOD" | b"TND" | b"IQD" | b"LYD" => 3,
            _ => 2,
        }
    }

    /// Parses a decimal amount such as "3.50" into minor units.
    pub fn parse_amount(&self, text: &str) -> Result<i64, MoneyError> {
        parse_decimal(text, self.exponent())
    }

    /// Formats minor units as a decimal amount, "3.50".
    pub fn format_amount(&self, minor: i64) -> String {
        let exp = self.exponent();
        if exp == 0 {
            return minor.to_string();
        }
        let scale = 10i64.pow(exp);
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        format!(
            "{sign}{}.{:0width$}",
            abs / scale as u64,
            abs % scale as u64,
            width = exp as usize
        )
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Currency([b[0], b[1], b[2]]))
        } else {
            Err(MoneyError::BadCurrency(s.to_owned()))
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Parses a decimal number with at most `exp` decimal places into an integer scaled by
/// 10^exp: `parse_decimal("3.5", 2)` is 350. Refuses rather than rounds.
pub fn parse_decimal(text: &str, exp: u32) -> Result<i64, MoneyError> {
    let t = text.trim();
    let (neg, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let exp = exp as usize;
    let bad = || MoneyError::BadAmount(text.to_owned());
    if whole.is_empty() && frac.is_empty()
        || !whole
            .bytes()
            .chain(frac.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    if frac.len() > exp {
        return Err(MoneyError::TooPrecise(text.to_owned()));
    }
    let mut value: i64 = 0;
    for b in whole
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', exp - frac.len()))
    {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or(MoneyError::Overflow)?;
    }
    Ok(if neg { -value } else { value })
}

/// An amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Money {
            amount_minor,
            currency,
        }
    }

    pub fn zero(currency: Currency) -> Self {
        Money {
            amount_minor: 0,
            currency,
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            self.currency.format_amount(self.amount_minor),
            self.currency
        )
    }
}

/// Tax on a tax-exclusive net amount, per the rounding rule in the module docs.
pub fn tax_on(net_minor: i64, rate_ppm: u32) -> Result<i64, MoneyError> {
    let product = i128::from(net_minor) * i128::from(rate_ppm);
    let half = 500_000i128;
    let rounded = if product >= 0 {
        (product + half) / 1_000_000
    } else {
        (product - half) / 1_000_000
    };
    i64::try_from(rounded).map_err(|_| MoneyError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_amounts() {
        let usd = Currency::USD;
        assert_eq!(usd.parse_amount("3.5").unwrap(), 350);
        assert_eq!(usd.parse_amount("3.50").unwrap(), 350);
        assert_eq!(usd.parse_amount("-0.07").unwrap(), -7);
        assert_eq!(usd.parse_amount("12").unwrap(), 1200);
        assert!(matches!(
            usd.parse_amount("3.505"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(usd.parse_amount("3,50").is_err());
        assert!(usd.parse_amount(".").is_err());
        assert!(usd.parse_amount("99999999999999999999").is_err());
        assert_eq!(usd.format_amount(-705), "-7.05");
        let jpy: Currency = "JPY".parse().unwrap();
        assert_eq!(jpy.parse_amount("350").unwrap(), 350);
        assert_eq!(jpy.format_amount(350), "350");
        assert!("usd".parse::<Currency>().is_err());
    }

    #[test]
    fn tax_rounds_half_away_from_zero() {
        assert_eq!(tax_on(1000, 82_500).unwrap(), 83); // 82.5 -> 83
        assert_eq!(tax_on(-1000, 82_500).unwrap(), -83);
        assert_eq!(tax_on(999, 100_000).unwrap(), 100); // 99.9 -> 100
        assert_eq!(tax_on(1004, 100_000).unwrap(), 100); // 100.4 -> 100
        assert_eq!(tax_on(700, 0).unwrap(), 0);
    }
}
