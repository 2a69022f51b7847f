//! The top-level properties each entity accepts. QBO deserialises a request body into its
//! JAXB classes before any business rule runs, so a property the class does not know is a
//! 2010 fault ("Request has invalid or unsupported property"), even on a body that would
//! fail for another reason too (recorded in `invoice-create-error-400`). Names are
//! case-sensitive there, as here.
//!
//! The lists follow Intuit's API reference (and, for Invoice, the names QBO itself listed in
//! the recorded fault); they are generous rather than strict, because refusing a property real
//! QBO takes would send a client chasing a bug that is not there.

use serde_json::Value;

use super::fault::Fault;

/// What every entity carries (`IntuitEntity` in Intuit's schema).
const ENTITY: &[&str] = &[
    "Id",
    "SyncToken",
    "MetaData",
    "CustomField",
    "AttachableRef",
    "domain",
    "status",
    "sparse",
];

/// What every transaction carries (`Transaction`).
const TRANSACTION: &[&str] = &[
    "DocNumber",
    "TxnDate",
    "DepartmentRef",
    "CurrencyRef",
    "ExchangeRate",
    "PrivateNote",
    "TxnStatus",
    "LinkedTxn",
    "Line",
    "TxnTaxDetail",
    "TxnSource",
    "TaxFormType",
    "TaxFormNum",
    "TransactionLocationType",
    "Tag",
    "TxnApprovalInfo",
    "RecurDataRef",
    "RecurringInfo",
    "ProjectRef",
    "HomeTotalAmt",
    "TotalAmt",
    "GlobalTaxCalculation",
    "TaxExemptionRef",
];

/// Sales forms (`SalesTransaction`): invoices, receipts, refunds, estimates, credit memos.
const SALES: &[&str] = &[
    "AutoDocNumber",
    "CustomerRef",
    "CustomerMemo",
    "BillAddr",
    "ShipAddr",
    "FreeFormAddress",
    "ShipFromAddr",
    "RemitToRef",
    "ClassRef",
    "SalesTermRef",
    "DueDate",
    "SalesRepRef",
    "PONumber",
    "FOB",
    "ShipMethodRef",
    "ShipDate",
    "TrackingNum",
    "ApplyTaxAfterDiscount",
    "TemplateRef",
    "PrintStatus",
    "EmailStatus",
    "BillEmail",
    "BillEmailCc",
    "BillEmailBcc",
    "ARAccountRef",
    "Balance",
    "HomeBalance",
    "FinanceCharge",
    "PaymentMethodRef",
    "PaymentRefNum",
    "PaymentType",
    "CreditCardPayment",
    "DepositToAccountRef",
    "DeliveryInfo",
    "DiscountRate",
    "DiscountAmt",
    "GovtTxnRefIdentifier",
    "CfdiUse",
];

/// Customers, vendors and employees (`NameBase`).
const NAME: &[&str] = &[
    "Organization",
    "Title",
    "GivenName",
    "MiddleName",
    "FamilyName",
    "Suffix",
    "FullyQualifiedName",
    "CompanyName",
    "DisplayName",
    "PrintOnCheckName",
    "UserId",
    "Active",
    "PrimaryPhone",
    "AlternatePhone",
    "Mobile",
    "Fax",
    "PrimaryEmailAddr",
    "WebAddr",
    "OtherContactInfo",
    "DefaultTaxCodeRef",
    "Notes",
    "V4IDPseudonym",
    "Source",
];

const CUSTOMER: &[&str] = &[
    "Taxable",
    "BillAddr",
    "ShipAddr",
    "OtherAddr",
    "ContactName",
    "AltContactName",
    "Job",
    "BillWithParent",
    "RootCustomerRef",
    "ParentRef",
    "Level",
    "CustomerTypeRef",
    "SalesTermRef",
    "SalesRepRef",
    "PaymentMethodRef",
    "CCDetail",
    "PriceLevelRef",
    "Balance",
    "OpenBalanceDate",
    "BalanceWithJobs",
    "CreditLimit",
    "AcctNum",
    "CurrencyRef",
    "OverDueBalance",
    "TotalRevenue",
    "TotalExpense",
    "PreferredDeliveryMethod",
    "ResaleNum",
    "JobInfo",
    "TDSEnabled",
    "CustomerEx",
    "SecondaryTaxIdentifier",
    "ARAccountRef",
    "PrimaryTaxIdentifier",
    "TaxExemptionReasonId",
    "IsProject",
    "BusinessNumber",
    "GSTIN",
    "GSTRegistrationType",
    "IsCISContractor",
    "ClientCompanyId",
    "ClientEntityId",
    "TaxRegimeId",
];

const VENDOR: &[&str] = &[
    "BillAddr",
    "OtherAddr",
    "ContactName",
    "AltContactName",
    "TaxCountry",
    "TaxIdentifier",
    "BusinessNumber",
    "ParentRef",
    "VendorTypeRef",
    "TermRef",
    "PrefillAccountRef",
    "Balance",
    "OpenBalanceDate",
    "CreditLimit",
    "AcctNum",
    "Vendor1099",
    "T4AEligible",
    "T5018Eligible",
    "CurrencyRef",
    "TaxReportingBasis",
    "APAccountRef",
    "VendorEx",
    "GSTIN",
    "GSTRegistrationType",
    "IsSubContractor",
    "SubcontractorType",
    "CISRate",
    "CostRate",
    "BillRate",
    "HasTPAR",
    "VendorPaymentBankDetail",
];

const EMPLOYEE: &[&str] = &[
    "EmployeeType",
    "EmployeeNumber",
    "SSN",
    "PrimaryAddr",
    "OtherAddr",
    "BillableTime",
    "BillRate",
    "CostRate",
    "BirthDate",
    "Gender",
    "HiredDate",
    "ReleasedDate",
    "UseTimeEntry",
    "EmployeeEx",
    "CurrencyRef",
];

const ITEM: &[&str] = &[
    "Name",
    "Sku",
    "Description",
    "Active",
    "SubItem",
    "ParentRef",
    "Level",
    "FullyQualifiedName",
    "Taxable",
    "SalesTaxIncluded",
    "PercentBased",
    "UnitPrice",
    "RatePercent",
    "Type",
    "PaymentMethodRef",
    "UOMSetRef",
    "IncomeAccountRef",
    "PurchaseDesc",
    "PurchaseTaxIncluded",
    "PurchaseCost",
    "ExpenseAccountRef",
    "COGSAccountRef",
    "AssetAccountRef",
    "PrefVendorRef",
    "AvgCost",
    "TrackQtyOnHand",
    "QtyOnHand",
    "QtyOnPurchaseOrder",
    "QtyOnSalesOrder",
    "ReorderPoint",
    "ManPartNum",
    "DepositToAccountRef",
    "SalesTaxCodeRef",
    "PurchaseTaxCodeRef",
    "InvStartDate",
    "BuildPoint",
    "PrintGroupedItems",
    "SpecialItem",
    "SpecialItemType",
    "ItemGroupDetail",
    "ItemAssemblyDetail",
    "AbatementRate",
    "ReverseChargeRate",
    "ServiceType",
    "ItemCategoryType",
    "ItemEx",
    "TaxClassificationRef",
    "UQCDisplayText",
    "UQCId",
    "ClassRef",
    "Source",
];

const ACCOUNT: &[&str] = &[
    "Name",
    "SubAccount",
    "ParentRef",
    "Description",
    "FullyQualifiedName",
    "AccountAlias",
    "TxnLocationType",
    "Active",
    "Classification",
    "AccountType",
    "AccountSubType",
    "AccountPurposes",
    "AcctNum",
    "AcctNumExtn",
    "BankNum",
    "OpeningBalance",
    "OpeningBalanceDate",
    "CurrentBalance",
    "CurrentBalanceWithSubAccounts",
    "CurrencyRef",
    "TaxAccount",
    "TaxCodeRef",
    "OnlineBankingEnabled",
    "FIName",
    "JournalCodeRef",
    "AccountEx",
];

const PAYMENT: &[&str] = &[
    "CustomerRef",
    "RemitToRef",
    "ARAccountRef",
    "DepositToAccountRef",
    "PaymentMethodRef",
    "PaymentRefNum",
    "CreditCardPayment",
    "UnappliedAmt",
    "ProcessPayment",
    "PaymentEx",
];

const PURCHASE: &[&str] = &[
    "AccountRef",
    "PaymentMethodRef",
    "PaymentRefNum",
    "PaymentType",
    "EntityRef",
    "Credit",
    "RemitToAddr",
    "PrintStatus",
    "PurchaseEx",
    "IncludeInAnnualTPAR",
];

const INVOICE: &[&str] = &[
    "Deposit",
    "AllowIPNPayment",
    "AllowOnlinePayment",
    "AllowOnlineCreditCardPayment",
    "AllowOnlineACHPayment",
    "EInvoiceStatus",
    "ECloudStatusTimeStamp",
    "InvoiceEx",
    "LessCIS",
    "InvoiceLink",
    "InvoiceLinkSecurityCode",
    "callToAction",
    "invoiceStatus",
    "invoiceStatusLog",
    "ConvenienceFeeDetail",
    "PaymentDetailsMessage",
];

const ESTIMATE: &[&str] = &["ExpirationDate", "AcceptedBy", "AcceptedDate", "EstimateEx"];

const TAX_CODE: &[&str] = &[
    "Name",
    "Description",
    "Active",
    "Hidden",
    "Taxable",
    "TaxGroup",
    "SalesTaxRateList",
    "PurchaseTaxRateList",
    "AdjustmentTaxRateList",
    "TaxCodeConfigType",
    "TaxCodeEx",
];

const ATTACHABLE: &[&str] = &[
    "FileName",
    "FileAccessUri",
    "TempDownloadUri",
    "Size",
    "ContentType",
    "Category",
    "Lat",
    "Long",
    "PlaceName",
    "Note",
    "Tag",
    "ThumbnailFileAccessUri",
    "ThumbnailTempDownloadUri",
    "AttachableEx",
];

/// The groups of properties `entity` accepts.
fn groups(entity: &str) -> Vec<&'static [&'static str]> {
    match entity {
        "Customer" => vec![ENTITY, NAME, CUSTOMER],
        "Vendor" => vec![ENTITY, NAME, VENDOR],
        "Employee" => vec![ENTITY, NAME, EMPLOYEE],
        "Item" => vec![ENTITY, ITEM],
        "Account" => vec![ENTITY, ACCOUNT],
        "TaxCode" => vec![ENTITY, TAX_CODE],
        "PaymentMethod" => vec![ENTITY, &["Name", "Active", "Type"]],
        "Attachable" => vec![ENTITY, ATTACHABLE],
        "Invoice" => vec![ENTITY, TRANSACTION, SALES, INVOICE],
        "SalesReceipt" => vec![ENTITY, TRANSACTION, SALES, &["SalesReceiptEx"]],
        "RefundReceipt" => vec![
            ENTITY,
            TRANSACTION,
            SALES,
            &["RefundReceiptEx", "CheckPayment"],
        ],
        "Estimate" => vec![ENTITY, TRANSACTION, SALES, ESTIMATE],
        "CreditMemo" => vec![
            ENTITY,
            TRANSACTION,
            SALES,
            &["RemainingCredit", "InvoiceRef", "CreditMemoEx"],
        ],
        "Payment" => vec![ENTITY, TRANSACTION, PAYMENT],
        "Purchase" => vec![ENTITY, TRANSACTION, PURCHASE],
        _ => vec![ENTITY],
    }
}

pub fn known(entity: &str) -> Vec<&'static str> {
    let mut all: Vec<&'static str> = groups(entity).concat();
    all.sort_unstable();
    all.dedup();
    all
}

/// 2010 for the first property of `body` that `entity` does not know, worded as QBO's
/// deserialiser words it (it names the class and lists what it knows, cut short).
pub fn check(entity: &str, body: &Value) -> Result<(), Fault> {
    let Some(obj) = body.as_object() else {
        return Ok(());
    };
    let groups = groups(entity);
    let Some(unknown) = obj
        .keys()
        .find(|k| !groups.iter().any(|g| g.contains(&k.as_str())))
    else {
        return Ok(());
    };
    let known = known(entity);
    let mut list = String::new();
    for (n, name) in known.iter().enumerate() {
        if list.len() > 900 {
            list.push_str(" [truncated]");
            break;
        }
        if n > 0 {
            list.push_str(", ");
        }
        list.push_str(&format!("\"{name}\""));
    }
    Err(Fault::bad_request(format!(
        "Unrecognized field \"{unknown}\" (class com.intuit.schema.finance.v3.{entity}), not marked as ignorable ({} known properties: {list}])\n specified is unsupported or invalid",
        known.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_properties_are_refused_by_name_and_case() {
        assert!(
            check(
                "Invoice",
                &json!({"CustomerRef": {"value": "1"}, "Line": []})
            )
            .is_ok()
        );
        let f = check("Invoice", &json!({"BadJson": true})).unwrap_err();
        assert_eq!(f.code, "2010");
        assert!(
            f.detail.contains("Unrecognized field \"BadJson\""),
            "{}",
            f.detail
        );
        assert!(check("Customer", &json!({"displayName": "x"})).is_err());
        assert!(check("Customer", &json!({"DisplayName": "x", "sparse": true})).is_ok());
    }
}
