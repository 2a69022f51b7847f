use serde::{Deserialize, Serialize};

use super::{DocType, Document, Ledger, SchemaError, Settings, check_text, invalid};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line1: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line2: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
}

/// A customer or a vendor: descriptive fields that merge one by one across devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Party {
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default = "yes")]
    pub active: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
}

fn yes() -> bool {
    true
}

impl Party {
    pub fn named(display_name: impl Into<String>) -> Self {
        Party {
            display_name: display_name.into(),
            given_name: None,
            family_name: None,
            company_name: None,
            email: None,
            phone: None,
            notes: None,
            address: None,
            active: true,
            ledger: None,
        }
    }

    fn check(&self) -> Result<(), SchemaError> {
        check_text("display_name", &self.display_name, true)?;
        for (field, value) in [
            ("given_name", &self.given_name),
            ("family_name", &self.family_name),
            ("company_name", &self.company_name),
            ("phone", &self.phone),
            ("notes", &self.notes),
        ] {
            if let Some(v) = value {
                check_text(field, v, false)?;
            }
        }
        if let Some(email) = &self.email {
            check_text("email", email, false)?;
            let ok = email
                .split_once('@')
                .is_some_and(|(u, d)| !u.is_empty() && d.contains('.'));
            if !email.is_empty() && !ok {
                return Err(invalid(
                    "email",
                    format!("'{email}' is not an email address"),
                ));
            }
        }
        Ok(())
    }
}

/// A customer: a [`Party`] stored as a `customer` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Customer(pub Party);

/// A vendor: a [`Party`] stored as a `vendor` document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Vendor(pub Party);

impl Document for Customer {
    const TYPE: DocType = DocType::Customer;
    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        self.0.check()
    }
    fn ledger(&self) -> Option<&Ledger> {
        self.0.ledger.as_ref()
    }
}

impl Document for Vendor {
    const TYPE: DocType = DocType::Vendor;
    fn validate(&self, _: &Settings) -> Result<(), SchemaError> {
        self.0.check()
    }
    fn ledger(&self) -> Option<&Ledger> {
        self.0.ledger.as_ref()
    }
}
