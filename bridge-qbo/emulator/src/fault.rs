//! QBO's error bodies: `{"Fault": {"Error": [{"Message", "Detail", "code", "element"}],
//! "type"}, "time"}` for the API, the lower-case envelope for a refused token, and the XML of
//! a throttled request.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::clock;

/// One API error, as QBO reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub detail: String,
    pub code: String,
    pub element: Option<String>,
}

impl Fault {
    fn validation(message: &str, detail: String, code: &str, element: Option<&str>) -> Fault {
        Fault {
            status: StatusCode::BAD_REQUEST,
            kind: "ValidationFault",
            message: message.into(),
            detail,
            code: code.into(),
            element: element.map(str::to_owned),
        }
    }

    /// 2020: a required field is missing.
    pub fn required(field: &str) -> Fault {
        Fault::validation(
            "Required param missing, need to supply the required value for the API",
            format!("Required parameter {field} is missing in the request"),
            "2020",
            Some(field),
        )
    }

    /// 2050: a string longer than QBO keeps for that field.
    pub fn length(field: &str, max: usize, supplied: usize) -> Fault {
        Fault::validation(
            "String length is either shorter or longer than supported by specification",
            format!(
                "String length specified does not match the supported length. Min:0 Max:{max} supported. Supplied length:{supplied}"
            ),
            "2050",
            Some(field),
        )
    }

    /// 6000: a business rule, in QBO's words.
    pub fn business(detail: impl Into<String>) -> Fault {
        Fault::validation(
            "A business validation error has occurred while processing your request",
            format!("Business Validation Error: {}", detail.into()),
            "6000",
            Some(""),
        )
    }

    /// 6520: a sales line of an inventory item says no quantity.
    pub fn inventory_quantity() -> Fault {
        Fault::validation(
            "Missing Inventory Item Quantity",
            "Quantity required for inventory item".to_owned(),
            "6520",
            Some(""),
        )
    }

    /// 6240: the name is taken. (QBO does not say by which object: clients look it up.)
    pub fn duplicate_name() -> Fault {
        Fault::validation(
            "Duplicate Name Exists Error",
            "The name supplied already exists. : null".into(),
            "6240",
            None,
        )
    }

    /// 5010: the SyncToken is not the current one.
    pub fn stale() -> Fault {
        Fault::validation(
            "Stale Object Error",
            "Stale Object Error : You and another user were working on this at the same time. The other user finished before you did, so your work was not saved.".into(),
            "5010",
            Some(""),
        )
    }

    /// 610: no such object (or it was deleted).
    pub fn not_found() -> Fault {
        Fault::validation(
            "Object Not Found",
            "Object Not Found : Something you're trying to use has been made inactive. Check the fields with accounts, customers, items, vendors or employees.".into(),
            "610",
            Some(""),
        )
    }

    /// 2030: an id that is not a number.
    pub fn invalid_id(id: &str) -> Fault {
        Fault::validation(
            "Invalid ID",
            format!("Id should be a valid number. Supplied value:{id}"),
            "2030",
            Some("Id"),
        )
    }

    /// 4000: the query does not parse.
    pub fn query_parse(detail: &str) -> Fault {
        Fault::validation(
            "Error parsing query",
            format!("QueryParserError: {detail}"),
            "4000",
            None,
        )
    }

    /// 4001: the query names something that is not an entity.
    pub fn query_entity(entity: &str) -> Fault {
        Fault::validation(
            "Invalid query",
            format!("QueryValidationError: invalid context declaration: {entity}"),
            "4001",
            None,
        )
    }

    /// 500 (as a 400): a path QBO has no resource for.
    pub fn unsupported(path: &str) -> Fault {
        Fault::validation(
            "Unsupported Operation",
            format!("Operation Could not find resource for relative : {path} is not supported."),
            "500",
            None,
        )
    }

    /// 2010 / unreadable JSON.
    pub fn bad_request(detail: impl Into<String>) -> Fault {
        Fault::validation(
            "Request has invalid or unsupported property",
            format!("Property Name:{}", detail.into()),
            "2010",
            None,
        )
    }

    /// A 5xx, as injected by the fault switches.
    pub fn service() -> Fault {
        Fault {
            status: StatusCode::SERVICE_UNAVAILABLE,
            kind: "SERVICE",
            message: "An application error has occurred while processing your request".into(),
            detail: "System Failure Error: Service temporarily unavailable".into(),
            code: "10000".into(),
            element: None,
        }
    }

    /// The error object inside a `Fault` (also what a batch item carries).
    pub fn body(&self) -> Value {
        let mut e = json!({
            "Message": self.message,
            "Detail": self.detail,
            "code": self.code,
        });
        if let Some(el) = &self.element {
            e["element"] = json!(el);
        }
        json!({ "Error": [e], "type": self.kind })
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let body = json!({ "Fault": self.body(), "time": clock::datetime_ms(clock::now_ms()) });
        (self.status, axum::Json(body)).into_response()
    }
}

/// 401: a missing, unknown, expired or revoked access token, in QBO's lower-case envelope.
pub fn unauthorized(detail: &str) -> Response {
    let body = json!({
        "warnings": null,
        "intuitObject": null,
        "fault": {
            "error": [{
                "message": "message=AuthenticationFailed; errorCode=003200; statusCode=401",
                "detail": detail,
                "code": "3200",
                "element": null
            }],
            "type": "AUTHENTICATION"
        },
        "report": null,
        "queryResponse": null,
        "batchItemResponse": [],
        "attachableResponse": [],
        "syncErrorResponse": null,
        "requestId": null,
        "time": clock::now_ms(),
        "status": null,
        "cdcresponse": []
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        axum::Json(body),
    )
        .into_response()
}

/// 429: over the realm's limits, with QBO's XML body.
pub fn throttled() -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<IntuitResponse time=\"{}\" xmlns=\"http://schema.intuit.com/finance/v3\">\n  <Fault type=\"SERVICE\">\n    <Error code=\"3001\">\n      <Message>message=ThrottleExceeded; errorCode=003001; statusCode=429</Message>\n      <Detail>The request limit was reached.  Try again later</Detail>\n    </Error>\n  </Fault>\n</IntuitResponse>\n",
        clock::datetime_ms(clock::now_ms())
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::CONTENT_TYPE, "application/xml")],
        body,
    )
        .into_response()
}
