//! The registry's JSON error answers, as the test suites check them.
// Each test binary uses part of it.
#![allow(dead_code)]

use sealer_test_harness::HttpResponse;
use serde_json::Value;

/// The `code` of the first error in an error body.
pub fn error_code(response: &HttpResponse) -> String {
    let body: Value = serde_json::from_slice(&response.body).unwrap_or_else(|_| {
        panic!(
            "not a JSON error: {:?}",
            String::from_utf8_lossy(&response.body)
        )
    });
    body["errors"][0]["code"].as_str().unwrap().to_owned()
}

/// The `message` of the first error in an error body.
pub fn error_message(response: &HttpResponse) -> String {
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

/// Asserts an error answer: its status, its first error code, and a JSON body.
pub fn assert_error(response: &HttpResponse, status: u16, code: &str) {
    assert_eq!(
        response.status,
        status,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(error_code(response), code);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
}
