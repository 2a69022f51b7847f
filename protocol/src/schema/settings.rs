use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DocType, Document, Ledger, SchemaError, check_text, invalid};
use crate::money::Currency;

/// The tax code that always exists and taxes nothing.
pub const NON_TAXABLE: &str = "NON";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxRate {
    pub name: String,
    /// Parts per million of the net amount: 8.25 % is 82 500.
    pub rate_ppm: u32,
}

/// Mesh-wide settings: one document per mesh, at an id every node derives from the mesh id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub business_name: String,
    pub currency: Currency,
    pub tax_rates: BTreeMap<String, TaxRate>,
    /// The shop's time zone, an IANA name (`Europe/London`): the day a sale is booked on in
    /// QuickBooks is its local date there. Unset in meshes made before it existed (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// Longest IANA time zone name accepted (the longest in the database is 32 characters).
pub const TIME_ZONE_CHARS_MAX: usize = 64;

/// Whether `name` is shaped like an IANA time zone name. Whether the zone exists is for the
/// node to say when it is written (this crate holds no time zone database).
pub fn check_time_zone(name: &str) -> Result<(), SchemaError> {
    let shaped = !name.is_empty()
        && name.len() <= TIME_ZONE_CHARS_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-' | b'+'))
        && !name.starts_with('/')
        && !name.contains("..");
    if shaped {
        Ok(())
    } else {
        Err(invalid(
            "time_zone",
            format!(
                "{name:?} is not a time zone name; write one like Europe/London or America/Los_Angeles"
            ),
        ))
    }
}

impl Settings {
    pub fn new(business_name: impl Into<String>, currency: Currency) -> Self {
        let mut tax_rates = BTreeMap::new();
        tax_rates.insert(
            NON_TAXABLE.to_owned(),
            TaxRate {
                name: "Not taxable".into(),
                rate_ppm: 0,
            },
        );
        Settings {
            business_name: business_name.into(),
            currency,
            tax_rates,
            time_zone: None,
        }
    }

    /// The rate for a tax code; `NON` exists even if a peer's settings somehow lack it.
    pub fn tax_rate(&self, code: &str) -> Result<u32, SchemaError> {
        match self.tax_rates.get(code) {
            Some(r) => Ok(r.rate_ppm),
            None if code == NON_TAXABLE => Ok(0),
            None => Err(invalid(
                "tax_code",
                format!(
                    "'{code}' is not a tax code of this shop (known: {})",
                    self.tax_rates
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
}

impl Document for Settings {
    const TYPE: DocType = DocType::Settings;

    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        check_text("business_name", &self.business_name, false)?;
        if let Some(zone) = &self.time_zone {
            check_time_zone(zone)?;
        }
        for (code, rate) in &self.tax_rates {
            check_text("tax code", code, true)?;
            if rate.rate_ppm > 1_000_000 {
                return Err(invalid(format!("tax_rates.{code}"), "is over 100 %"));
            }
        }
        if self
            .tax_rates
            .get(NON_TAXABLE)
            .is_some_and(|r| r.rate_ppm != 0)
        {
            return Err(invalid(
                "tax_rates.NON",
                "the NON code always taxes nothing",
            ));
        }
        Ok(())
    }

    fn ledger(&self) -> Option<&Ledger> {
        None
    }
}
