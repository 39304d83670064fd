//! Taking one value: an instant query to Prometheus, or one series of a scraped page.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use shiphat_plugin_sdk::http::{self, ErrorCode, HttpError};

use crate::config::{Metric, Source};

/// Why a measurement has no value.
pub enum Problem {
    /// The measurement is an Error: the query failed, the result was empty, NaN, or not one
    /// number. The analysis goes on until `consecutive_error_limit`.
    Error(String),
    /// The step's `allow.http` does not grant the address: no later measurement can work.
    Denied(String),
}

/// Takes one measurement of `metric`.
pub fn measure(metric: &Metric) -> Result<f64, Problem> {
    let value = match &metric.source {
        Source::Prometheus { address, query } => {
            let url = format!(
                "{}/api/v1/query?query={}",
                address.trim_end_matches('/'),
                encode(query)
            );
            let response = get(&url, metric.token.as_deref(), metric.timeout)?;
            prometheus_value(response.status, &response.body).map_err(Problem::Error)?
        }
        Source::Scrape {
            url,
            series,
            labels,
        } => {
            let response = get(url, metric.token.as_deref(), metric.timeout)?;
            if !response.is_success() {
                return Err(Problem::Error(format!(
                    "`{url}` answered HTTP {}",
                    response.status
                )));
            }
            scrape_value(&response.text(), series, labels).map_err(Problem::Error)?
        }
    };
    if value.is_nan() {
        return Err(Problem::Error("the result is NaN".into()));
    }
    Ok(value)
}

fn get(url: &str, token: Option<&str>, timeout: Duration) -> Result<http::Response, Problem> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("accept", "application/json, text/plain")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    http::request("GET", url, &headers, None, Some(timeout)).map_err(|e| match e {
        HttpError::Wasi(ErrorCode::HttpRequestDenied) => Problem::Denied(format!(
            "the host of `{url}` is not granted; add it to the step's `allow.http`"
        )),
        e => Problem::Error(format!("GET `{url}` failed: {e}")),
    })
}

/// The number in an answer of `/api/v1/query`: a scalar, or a vector of exactly one sample.
fn prometheus_value(status: u16, body: &[u8]) -> Result<f64, String> {
    let json: Value = serde_json::from_slice(body).map_err(|_| {
        format!(
            "Prometheus answered HTTP {status} with a body that is not JSON: `{}`",
            String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
        )
    })?;
    if json["status"] != "success" {
        return Err(format!(
            "Prometheus answered HTTP {status}: {}: {}",
            json["errorType"].as_str().unwrap_or("error"),
            json["error"].as_str().unwrap_or("no error message")
        ));
    }
    let data = &json["data"];
    let sample = match data["resultType"].as_str() {
        Some("scalar") => &data["result"],
        Some("vector") => {
            let series = data["result"].as_array().map_or(&[][..], Vec::as_slice);
            match series {
                [] => return Err("the query returned no series (an empty result)".into()),
                [one] => &one["value"],
                more => {
                    return Err(format!(
                        "the query returned {} series, not one number; aggregate it (e.g. `sum(...)`) or narrow its labels",
                        more.len()
                    ));
                }
            }
        }
        other => {
            return Err(format!(
                "the query's result type is `{}`, not a number; use a query that gives an instant vector or a scalar",
                other.unwrap_or("missing")
            ));
        }
    };
    // A sample is `[unix time, "value"]`; the value is a string so that NaN and ±Inf fit.
    let text = sample[1].as_str().ok_or_else(|| {
        format!("Prometheus sent a sample that is not `[time, \"value\"]`: `{sample}`")
    })?;
    // Rust reads `NaN`, `+Inf` and `-Inf` as Prometheus writes them (case-insensitively).
    text.parse::<f64>()
        .ok()
        .ok_or_else(|| format!("Prometheus sent `{text}`, which is not a number"))
}

/// The value of the one sample named `series` whose labels include `labels`.
fn scrape_value(
    text: &str,
    series: &str,
    labels: &BTreeMap<String, String>,
) -> Result<f64, String> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .map_err(|e| format!("the metrics page does not parse: {e}"))?;
    let wanted = describe_series(series, labels.iter());
    let matching: Vec<_> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == series)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
        .collect();
    let sample = match matching.as_slice() {
        [] => return Err(format!("no series matches `{wanted}` on the metrics page")),
        [one] => one,
        more => {
            let mut found: Vec<String> = more
                .iter()
                .map(|s| {
                    describe_series(
                        &s.metric,
                        s.labels.iter().collect::<BTreeMap<_, _>>().into_iter(),
                    )
                })
                .collect();
            found.sort();
            return Err(format!(
                "{} series match `{wanted}`, not one; add labels to pick one of {}",
                more.len(),
                found.join(", ")
            ));
        }
    };
    use prometheus_parse::Value as V;
    match sample.value {
        V::Counter(v) | V::Gauge(v) | V::Untyped(v) => Ok(v),
        V::Histogram(_) | V::Summary(_) => Err(format!(
            "`{series}` is a histogram or summary; pick `{series}_sum` or `{series}_count` instead"
        )),
    }
}

fn describe_series<'a>(
    name: &str,
    labels: impl Iterator<Item = (&'a String, &'a String)>,
) -> String {
    let labels: Vec<String> = labels.map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// Percent-encodes a query parameter: everything but RFC 3986's unreserved characters.
/// A few lines, so no crate for it.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
